"""Sub-commands of ``python -m engine``; see :mod:`engine.cli` for the contract each module follows."""

from __future__ import annotations

import argparse
from datetime import datetime


def datetime_arg(text: str) -> datetime:
    """argparse ``type=`` for an acquisition time (ISO 8601): the engine's parser, its message as the usage error."""
    from engine.dates import parse_datetime
    from engine.errors import EngineError

    try:
        return parse_datetime(text)
    except EngineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
