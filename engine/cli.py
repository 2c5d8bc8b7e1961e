"""``python -m engine`` / ``aligncr``: one sub-command per module in :mod:`engine.commands`.

Each module in ``engine/commands/`` defines ``NAME`` (the sub-command), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Discovering them here keeps this file free of edits when a
sub-command is added. User errors (:class:`~engine.errors.EngineError`, and out-of-memory, OS and GDAL errors
through :func:`~engine.errors.as_user_error`) print one line and exit 2; ``--debug`` shows the traceback instead.
``--debug`` adds the traceback, never changes the exit code. Exit codes: 0 success, 1 some batch scene failed, 2 an
error (nothing written), 130 cancelled or Ctrl-C, 143 SIGTERM and 129 SIGHUP (a closed terminal or SSH session;
temporary files removed). ``--allow-network`` lets a local input (a VRT) read remote sources
(:mod:`engine.sources.footprint`); a remote name given on the command line is read without it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

import engine.commands
from engine import __version__
from engine.errors import Cancelled, EngineError, Terminated, as_user_error

_NEGATIVE_VALUE = re.compile(r"^-\.?\d")  # -70.5,-33.2,… : a value, not an option
STOP_SIGNALS = {signal.SIGTERM: 143, **({signal.SIGHUP: 129} if hasattr(signal, "SIGHUP") else {})}


class _Unavailable:
    """Stands in for a sub-command whose dependencies do not import in this interpreter.

    ``python -m engine env`` must work in a bare Python (the QGIS plugin uses it to diagnose the interpreter the
    user picked), so one command failing to import must not take the others down; running it explains what to
    install instead.
    """

    def __init__(self, name: str, missing: str) -> None:
        self.NAME = name
        self.missing = missing
        self.HELP = f"(unavailable here: needs the '{missing}' package)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(_accepts_anything=True)

    def run(self, args: argparse.Namespace) -> int:
        # "No module named 'x'" is the phrase the QGIS plugin's runner looks for to suggest the exact install.
        raise EngineError(
            f"'{self.NAME}' cannot run: No module named '{self.missing}' in this interpreter ({sys.executable}); "
            f"run ./scripts/setup.sh, or '{sys.executable} -m pip install torch==2.13.0 rasterio scikit-image tqdm "
            "safetensors'"
        )


def _command_modules() -> list:
    mods = []
    for info in sorted(pkgutil.iter_modules(engine.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        try:
            mods.append(importlib.import_module(f"engine.commands.{info.name}"))
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if not top or top == "engine":
                raise
            mods.append(_Unavailable(info.name, top))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Align-CR: remove clouds from optical rasters using Sentinel-1 SAR.",
    )
    parser.add_argument("--version", action="version", version=f"aligncr engine {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logging")
    parser.add_argument("--allow-network", action="store_true",
                        help="let local inputs (a VRT) read remote sources (/vsicurl/, http://…); a remote name given "
                             "as an input is read without it")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--allow-network", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def negative_values_joined(argv: Sequence[str]) -> list[str]:
    """``--bounds -70.5,-33.2,…`` as ``--bounds=-70.5,-33.2,…``: argparse takes a value starting with "-" that is not a
    plain number for an option (issue 25: a drawn extent west of Greenwich failed in QGIS)."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_VALUE.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(negative_values_joined(sys.argv[1:] if argv is None else argv))
    if extra and not getattr(args, "_accepts_anything", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if args.allow_network:
        from engine.sources.footprint import ALLOW_NETWORK_ENV

        os.environ[ALLOW_NETWORK_ENV] = "1"  # batch workers, started later, inherit it
    previous = _stop_on_signals()
    try:
        return int(args._run(args) or 0)
    except Cancelled as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted; no output was written", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"terminated ({exc.name}); no output was written", file=sys.stderr)
        return STOP_SIGNALS.get(exc.signum, 143)
    except Exception as exc:
        error = as_user_error(exc)
        if error is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_signals() -> dict[int, object]:
    """SIGTERM and SIGHUP raise :class:`Terminated` in the main thread, so the ``with`` blocks unwind and remove every
    temporary file (Python's default is to die on the spot, leaving them; issues 15, 25). Returns the previous
    handlers (none when not in the main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # an ignored SIGINT is inherited from the parent (a GUI, a shell's background job): the plugin's Cancel is a
        # SIGINT, which must unwind the run like Ctrl-C and remove its temporaries, not wait for the kill after it
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return previous
