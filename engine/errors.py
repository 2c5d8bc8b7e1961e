"""User-facing errors.

Anything an analyst can fix (bad file, wrong bands, no overlap, unwritable output) is raised as an
:class:`EngineError` with a one-line message; the CLI prints that line and exits non-zero without a traceback
(unless ``--debug``). So are the failures of the machine rather than the code — out of memory, an operating-system
error (disk, permissions, a vanished network share), a GDAL error that no check caught first — through
:func:`as_user_error`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EngineError(Exception):
    """An error caused by the user's input or environment, explained in one line."""


class InputError(EngineError):
    """An input raster is missing, unreadable or unsuitable."""


class OutputError(EngineError):
    """The output cannot be written where asked."""


class ModelError(EngineError):
    """A model name, config or weights file is unknown, malformed or mismatched."""


class Cancelled(EngineError):
    """The user cancelled the run; nothing was written."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, or SIGHUP: its terminal closed); raised in the main thread so every
    temporary file is removed.

    A ``BaseException`` like ``KeyboardInterrupt``, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        import signal

        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (GDAL's often carry a file name and several sentences). rasterio's "Read
    failed. See previous exception for details." is replaced by that previous exception: GDAL's own words, which
    name the file, the band and the block (issue 25)."""
    while "previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return " ".join(str(exc).split()) or type(exc).__name__


def as_user_error(exc: BaseException) -> EngineError | None:
    """``exc`` as a one-line :class:`EngineError` when it is the machine's (memory, OS, GDAL), else None."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, MemoryError):
        return EngineError("out of memory: lower --tile or --batch, or free memory (no output was written)")
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return EngineError(f"{exc.strerror or one_line(exc)}{where}")
    if type(exc).__module__.startswith("rasterio"):
        return EngineError(f"GDAL: {one_line(exc)}")
    return None
