"""Sub-commands of ``python -m engine``; see :mod:`engine.cli` for the contract each module follows."""

from __future__ import annotations

import argparse
from datetime import datetime


def datetime_arg(text: str) -> datetime:
    """argparse ``type=`` for an acquisition time (ISO 8601): the engine's parser, its message as the usage error."""
    from engine.config import parse_datetime
    from engine.errors import EngineError

    try:
        return parse_datetime(text)
    except EngineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_renamed_argument(parser: argparse.ArgumentParser, new: str, old: str, **kwargs) -> None:
    """``new`` as the option's name, ``old`` still accepted for one release with a deprecation notice on stderr.

    Why: the CLI names one thing one way everywhere (``--optical`` for the optical image, ``--tile`` for the tile
    size), but scripts written against the old names must keep working while their authors move.
    """
    import sys

    flag_only = kwargs.get("action") == "store_true"  # an on/off flag (--progress-json): the old name takes no value

    class _Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001 - argparse's signature
            print(f"warning: {old} is deprecated and will be removed in the next release; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, True if flag_only else values)

    dest = kwargs.pop("dest", new.lstrip("-").replace("-", "_"))
    required = kwargs.pop("required", False)
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(new, dest=dest, **kwargs)
    old_kwargs = {"nargs": 0} if flag_only else {k: v for k, v in kwargs.items() if k in ("type", "metavar")}
    group.add_argument(old, dest=dest, action=_Deprecated, help=argparse.SUPPRESS, **old_kwargs)


def add_clobber_argument(parser: argparse.ArgumentParser) -> None:
    """``--no-clobber`` (dest ``clobber``), the options table's row: every command that writes files takes it."""
    from engine.commands.run import add_option
    from engine.config import OPTIONS

    add_option(parser, OPTIONS["clobber"])


def check_number(flag: str, value: float | int | None, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None) -> None:  # fmt: skip
    """A numeric option's value: finite and within its bounds (``above``: strictly), else one-line
    :class:`~engine.errors.InputError` naming the flag. Why: ``nan`` and ``inf`` parse as floats and slip past
    ``<`` tests (issue 25: ``finetune --lr nan`` trained for 43 s, then gave a traceback)."""
    import math

    from engine.errors import InputError

    if value is None:
        return
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else ""]  # fmt: skip
    ok = math.isfinite(value) and (minimum is None or value >= minimum) and (above is None or value > above)
    if not ok or (maximum is not None and value > maximum):
        raise InputError(f"{flag} must be a finite number {' and '.join(b for b in bounds if b)}, got {value}")
