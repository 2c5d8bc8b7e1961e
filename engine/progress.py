"""Progress and cancellation, shared by the CLI (tqdm), ``run --json`` and the QGIS plugin (QgsFeedback).

Long-running engine functions take a :class:`Progress` and call :meth:`Progress.update` with a fraction in
[0, 1]. Cancellation is cooperative: :meth:`Progress.check_cancelled` raises :class:`~engine.errors.Cancelled`
between tiles, so a cancel takes effect within one tile and the atomic writer discards the partial output.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.errors import Cancelled

ProgressCallback = Callable[[float, str], None]
"""``callback(fraction, message)`` with fraction in [0, 1]."""


@dataclass
class Progress:
    """Fan-out of progress to an optional callback, plus a thread-safe cancel flag."""

    callback: ProgressCallback | None = None
    warn_callback: Callable[[str], None] | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def update(self, fraction: float, message: str = "") -> None:
        if self.callback is not None:
            self.callback(min(max(float(fraction), 0.0), 1.0), message)

    def warn(self, message: str) -> None:
        """Report a non-fatal problem the user should know about (e.g. partial SAR overlap)."""
        if self.warn_callback is not None:
            self.warn_callback(message)
        else:
            import logging

            logging.getLogger("engine").warning(message)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user; no output was written")

    def scaled(self, start: float, stop: float) -> Progress:
        """A child progress mapping [0, 1] onto [start, stop] of this one, sharing the cancel flag."""
        parent = self

        def cb(fraction: float, message: str) -> None:
            parent.update(start + (stop - start) * fraction, message)

        return Progress(callback=cb, warn_callback=parent.warn, _cancel=self._cancel)


def record_warning(progress: Progress, warnings: list[str], message: str) -> None:
    """Report ``message`` now (``progress.warn``) and keep it for the run's result and report."""
    warnings.append(message)
    progress.warn(message)
