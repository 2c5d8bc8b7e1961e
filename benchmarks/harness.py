"""What the scene benchmarks share: their hidden child-process arguments and generating a scene in a child.

Why children: a benchmark that measures peak memory must not count the memory it used to *write* the synthetic
scene, so each script re-runs itself with ``--child generate`` (and, where the measurement runs in-process,
``--child measure``) in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def add_child_arguments(parser: argparse.ArgumentParser, children: list[str], size: bool = True) -> None:
    """The hidden ``--child`` / ``--folder`` (and ``--size``, unless the script has a public one) arguments."""
    parser.add_argument("--child", choices=children, help=argparse.SUPPRESS)
    if size:
        parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)


def generate_in_child(script: str, size: int, folder: Path) -> float:
    """Run ``script --child generate`` for a ``size``² scene in ``folder``; seconds it took."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, script, "--child", "generate", "--size", str(size), "--folder", str(folder)],
                   check=True)  # fmt: skip
    return time.perf_counter() - t0
