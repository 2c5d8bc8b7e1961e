"""User-facing errors.

Anything an analyst can fix (bad file, wrong bands, no overlap, unwritable output) is raised as an
:class:`EngineError` with a one-line message; the CLI prints that line and exits non-zero without a traceback
(unless ``--debug``). Anything else is a bug and keeps its traceback.
"""


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
