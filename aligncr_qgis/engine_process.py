"""Run ``python -m engine …`` as a child process and turn its JSON-lines stdout into callbacks.

Why a child process and not an import: QGIS's Python rarely has torch, a CUDA crash must not take QGIS down, and a
hard cancel must be possible (a thread cannot be killed, a process can). This module has no Qt import, so the
QgsTask (dialog), the Processing algorithms and the tests all share it and it blocks the calling thread — call it
from a background thread (QgsTask.run / processAlgorithm), never from the GUI thread.

Protocol (``run --json``): stdout carries only JSON objects, one per line — ``start``, ``progress``
(``fraction`` in [0, 1]), ``warning``, ``result`` and, on a user error, ``error`` with exit code 2. stderr is
free-form logging, forwarded to the log and kept (last lines) to explain a crash that produced no ``error`` event,
e.g. torch missing from the chosen interpreter.

Cancellation: the caller's ``is_cancelled()`` is polled every 100 ms. The child first gets SIGINT (the engine's
CLI turns it into "interrupted; no output was written" and its atomic writer removes the temporary file), and is
killed outright if it has not exited two seconds later — so a cancel lands within one tile whatever the tile does.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligncr_qgis.installer import REQUIREMENTS

INSTALL_REQUIREMENTS = " ".join(shlex.quote(r) for r in REQUIREMENTS)
GRACE_SECONDS = 2.0
POLL_SECONDS = 0.1


class EngineRunError(Exception):
    """The engine failed; ``str(exc)`` is a one-line message fit for the message bar."""

    def __init__(self, message: str, kind: str = "EngineError", details: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.details = details


class EngineCancelled(EngineRunError):
    """The user cancelled; the child was stopped and no output was written."""

    def __init__(self) -> None:
        super().__init__("cancelled by the user; no output was written", kind="Cancelled")


@dataclass
class EngineOutcome:
    """What a finished child said: the ``result`` event (when it sent one), warnings and plain stdout."""

    result: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)  # non-JSON stdout lines (commands run without --json)
    seconds: float = 0.0
    start: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[float, str], None]
MessageFn = Callable[[str], None]


def _noop(*_args: Any) -> None:
    return None


@dataclass
class EngineProcess:
    """One engine invocation. ``python`` is the interpreter, ``engine_root`` the folder holding ``engine/``."""

    python: str
    engine_root: str | Path
    on_progress: ProgressFn = _noop
    on_warning: MessageFn = _noop
    on_log: MessageFn = _noop
    is_cancelled: Callable[[], bool] = lambda: False
    extra_env: dict[str, str] = field(default_factory=dict)
    log_stdout: bool = False  # without --json too, every stdout line goes to on_log as it comes (pip's progress)
    on_tick: Callable[[], None] = _noop  # called about every POLL_SECONDS while the child runs

    def command(self, args: Sequence[str], module: str = "engine") -> list[str]:
        return [self.python, "-m", module, *[str(a) for a in args]]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        root = str(self.engine_root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if os.path.realpath(self.python) != os.path.realpath(sys.executable):
            # QGIS on Windows/macOS sets PYTHONHOME for its own interpreter; another Python must not inherit it.
            env.pop("PYTHONHOME", None)
        env.update(self.extra_env)
        return env

    def run(self, args: Sequence[str], *, progress_json: bool = True, module: str = "engine") -> EngineOutcome:
        """Run ``python -m MODULE ARGS [--json]`` to completion; raise on failure or cancel. ``progress_json``:
        the command streams the JSON-lines events (``run --json``) rather than printing text."""
        args = list(args)
        if progress_json:
            args.append("--json")
        cmd = self.command(args, module)
        self.on_log("$ " + " ".join(shlex.quote(c) for c in cmd))
        popen_kw: dict[str, Any] = {}
        if os.name == "posix":
            popen_kw["start_new_session"] = True  # own process group: a cancel also stops DataLoader workers
        else:  # pragma: no cover - Windows
            popen_kw["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=str(self.engine_root),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                bufsize=1,
                **popen_kw,
            )
        except OSError as exc:
            raise EngineRunError(
                f"cannot start the Python interpreter '{self.python}' ({exc.strerror or exc}); "
                "pick a valid one in the Align-CR settings",
                kind="EnvironmentError",
            ) from None

        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()

        def pump(stream: Any, tag: str) -> None:
            for line in stream:
                lines.put((tag, line.rstrip("\r\n")))
            lines.put((tag, None))

        readers = [
            threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True),
        ]
        for t in readers:
            t.start()

        try:
            outcome, error, stderr_tail, cancelled = self._read(proc, lines, progress_json)
            try:
                rc = proc.wait(timeout=GRACE_SECONDS * 2)
            except subprocess.TimeoutExpired:
                _kill(proc)
                rc = proc.wait()
        finally:
            _release(proc, readers)
        outcome.seconds = time.monotonic() - started
        if cancelled:
            raise EngineCancelled()
        if error is not None:
            raise EngineRunError(str(error.get("message", "engine error")), kind=str(error.get("kind", "EngineError")))
        if rc != 0:
            raise _diagnose(self.python, self.engine_root, rc, list(stderr_tail))
        if progress_json and not outcome.result:
            raise EngineRunError("the engine finished without reporting a result", details="\n".join(stderr_tail))
        self.on_progress(1.0, "done")
        return outcome

    def _read(self, proc: subprocess.Popen, lines: queue.Queue, progress_json: bool
              ) -> tuple[EngineOutcome, dict[str, Any] | None, deque[str], bool]:
        """Dispatch the child's lines until both pipes close, interrupting (then killing) it on cancel; returns the
        outcome, the engine's error event, the tail of stderr and whether the user cancelled."""
        outcome = EngineOutcome()
        error: dict[str, Any] | None = None
        stderr_tail: deque[str] = deque(maxlen=40)
        open_streams = 2
        cancelled = False
        interrupt_at: float | None = None
        while open_streams:
            self.on_tick()
            if not cancelled and self.is_cancelled():
                cancelled = True
                interrupt_at = time.monotonic()
                _interrupt(proc)
            if cancelled and interrupt_at is not None and time.monotonic() - interrupt_at > GRACE_SECONDS:
                _kill(proc)
                interrupt_at = None
            try:
                tag, line = lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            if tag == "err":
                stderr_tail.append(line)
                if line.strip():
                    self.on_log(line)
                continue
            event = _parse_event(line) if progress_json else None
            if event is None:
                outcome.stdout.append(line)
                if (progress_json or self.log_stdout) and line.strip():
                    self.on_log(line)
                continue
            kind = event.get("event")
            if kind == "progress":
                self.on_progress(float(event.get("fraction", 0.0)), str(event.get("message", "")))
            elif kind == "start":
                outcome.start = event
                size = f"{event.get('width')}×{event.get('height')}"
                self.on_progress(0.0, f"{event.get('total_tiles', '?')} tiles, {size} pixels")
            elif kind == "warning":
                outcome.warnings.append(str(event.get("message", "")))
                self.on_warning(str(event.get("message", "")))
            elif kind == "result":
                outcome.result = event
            elif kind == "error":
                error = event
            else:
                self.on_log(line)
        return outcome, error, stderr_tail, cancelled

    def run_json(self, args: Sequence[str], module: str = "engine") -> Any:
        """Run a command that prints one JSON document (``env --json``, ``models --json``) and parse it."""
        outcome = self.run(args, progress_json=False, module=module)
        text = "\n".join(outcome.stdout).strip()
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise EngineRunError(
                f"'{' '.join(args)}' did not print JSON (got: {text[:120]!r})", details=text
            ) from None


def _parse_event(line: str) -> dict[str, Any] | None:
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and "event" in obj else None


def _interrupt(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGINT)
        else:  # pragma: no cover - Windows
            proc.send_signal(getattr(signal, "CTRL_BREAK_EVENT", signal.SIGTERM))
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _release(proc: subprocess.Popen, readers: list[threading.Thread]) -> None:
    """Stop a child the loop left running (a callback raised), let the readers drain, close both pipes: a pipe left
    to the garbage collector is a ``ResourceWarning: unclosed file`` in QGIS's log on every run (issue 16)."""
    if proc.poll() is None:
        _kill(proc)
        proc.wait()
    for reader in readers:
        reader.join(timeout=GRACE_SECONDS)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass


def install_hint(python: str) -> str:
    """The exact command that gives ``python`` the engine's packages (a venv for a PEP 668 system Python)."""
    in_venv = (Path(python).parent.parent / "pyvenv.cfg").is_file()  # a venv's python symlinks to /usr/bin
    if os.name == "posix" and not in_venv and os.path.dirname(os.path.realpath(python)) in ("/usr/bin", "/bin"):
        return (
            "Debian's system Python refuses pip; create a virtual environment that still sees QGIS's packages: "
            f"{shlex.quote(python)} -m venv --system-site-packages ~/aligncr-venv && ~/aligncr-venv/bin/python -m "
            f"pip install {INSTALL_REQUIREMENTS} — then pick ~/aligncr-venv/bin/python in the Align-CR dialog"
        )
    return (
        f"Install the engine's packages with: {shlex.quote(python)} -m pip install {INSTALL_REQUIREMENTS} — or pick "
        "another interpreter in the Align-CR dialog"
    )


_MISSING_MODULE = re.compile(r"No module named '?([A-Za-z_][A-Za-z0-9_]*)")


def _diagnose(python: str, engine_root: str | Path, rc: int, stderr: list[str]) -> EngineRunError:
    """Turn a crash without an ``error`` event into one clear line (the traceback goes to ``details``)."""
    details = "\n".join(stderr)
    for line in reversed(stderr):
        m = _MISSING_MODULE.search(line)
        if m:
            module = m.group(1)
            if module == "engine":
                return EngineRunError(
                    f"the engine package was not found in {engine_root}; reinstall the plugin",
                    kind="EnvironmentError",
                    details=details,
                )
            return EngineRunError(
                f"the Python interpreter {python} cannot import '{module}'. {install_hint(python)}",
                kind="EnvironmentError",
                details=details,
            )
    last = next((ln.strip() for ln in reversed(stderr) if ln.strip()), "")
    if last.startswith("error: "):
        last = last[len("error: ") :]
    if rc in (130, -signal.SIGINT) and not last:
        return EngineCancelled()
    return EngineRunError(last or f"the engine exited with code {rc} and no message", details=details)
