"""Process helpers for tests of ownership and cleanup (temporary files whose writer is gone)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
def slowed_network(seconds: int, indent: str = "") -> str:
    """Python lines making the engine's network calls sleep ``seconds`` in the main thread first: ``predict``, and
    ``submit``, by which the pipeline queues a chunk's tiles."""
    lines = ["import time", "import engine.stream.accel as a", "def slowed(real):", "    def slow(self, *args):",
             f"        time.sleep({seconds})", "        return real(self, *args)", "    return slow",
             "a.InferenceRunner.predict = slowed(a.InferenceRunner.predict)",
             "a.InferenceRunner.submit = slowed(a.InferenceRunner.submit)"]  # fmt: skip
    return "".join(f"{indent}{line}\n" for line in lines)


# `python -m engine` whose network sleeps two minutes: a run that is surely mid-way when signalled
SLOW_RUN = "import sys\n" + slowed_network(120) + "from engine.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def dead_pid() -> int:
    """The PID of a process that has run and been reaped: no live process has it (unless the kernel reuses it in
    the next moments, which Linux avoids by cycling through the PID space)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def start_slow_run(scene: tuple[Path, Path], out: Path, *, sigint_ignored: bool = False) -> subprocess.Popen:
    """A slow ``engine run`` (identity model, small tiles) of ``scene`` (optical, SAR) into ``out``;
    ``sigint_ignored``: started with SIGINT ignored, as a child of a parent that ignores it inherits."""
    import signal

    args = ["run", "--optical", str(scene[0]), "--sar", str(scene[1]), "--out", str(out), "--model", "identity",
            "--tile", "32", "--overlap", "8", "--device", "cpu"]  # fmt: skip
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    return subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ignore)  # noqa: PLW1509 - test only


def wait_for_temporary(folder: Path, child: subprocess.Popen) -> list[Path]:
    """The writer's temporaries in ``folder`` once ``child`` has made one (not the writability probe)."""
    for _ in range(600):
        found = [p for p in folder.iterdir() if p.name.endswith(".tmp.tif") and ".probe." not in p.name]
        if found:
            return found
        assert child.poll() is None, child.communicate()
        time.sleep(0.1)
    raise AssertionError("the run never created its temporary file")
