"""Process helpers for tests of ownership and cleanup (temporary files whose writer is gone)."""

from __future__ import annotations

import subprocess
import sys


def dead_pid() -> int:
    """The PID of a process that has run and been reaped: no live process has it (unless the kernel reuses it in
    the next moments, which Linux avoids by cycling through the PID space)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
