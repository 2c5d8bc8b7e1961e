"""An on-disk cache of the networks exported to ONNX, so a run does not pay the export again (issue 30).

Why: tracing a network into ONNX costs 3–4 s of one core for ``aligncr-res`` (measured: 3.2–3.9 s per export in
a warm process, against 0.3 s for ONNX Runtime to build its session from the exported bytes), during which the
run's CPU workers wait — about a tenth of a 2048² run on two AVX2 cores. Since the default run no longer adapts
the network to each scene, every run of the same weights exports the same graph.

The key must change whenever the exported graph could: it hashes the whole module — its printed structure, every
parameter and buffer (non-persistent ones included), each submodule's plain settings (config dataclasses, the
packed-inputs adapter's channel split and acquisition dates, train/eval mode) — the input shapes, the source of
every module class in it and of :mod:`engine.models`, and the torch, onnx and opset versions. A cached file that
fails to load is exported again and replaced. Writes go to a temporary beside the final name and are renamed into
place, so a killed run never leaves half a file under a real key; the cache keeps the :data:`KEEP` most recently
used graphs (a few MB each; runs with ``--adapt`` add graphs that no later run uses).

``ALIGNCR_ONNX_CACHE``: the directory (default ``~/.cache/aligncr/onnx``), or ``off`` to export every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.names import temporary_stem

log = logging.getLogger("engine")

ENV = "ALIGNCR_ONNX_CACHE"
DEFAULT_DIR = Path.home() / ".cache" / "aligncr" / "onnx"
KEEP = 8  # graphs kept: a model at two tile shapes for a few weights files
_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
_PLAIN = (bool, int, float, str, type(None), tuple, list, dict)


def cache_dir() -> Path | None:
    """Where exported graphs are kept; None when ``ALIGNCR_ONNX_CACHE=off``."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in {"off", "0", "no", "false"}:
        return None
    return Path(value).expanduser() if value else DEFAULT_DIR


def graph_key(module: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int) -> str:
    """A SHA-256 of everything that decides the graph ``module(*inputs)`` exports to (see the module docstring)."""
    import onnx

    h = hashlib.sha256()
    _text(h, f"torch {torch.__version__} onnx {onnx.__version__} opset {opset}")
    _text(h, repr([(tuple(t.shape), str(t.dtype)) for t in inputs]))
    _text(h, repr(module))
    for name, tensor in _tensors(module):
        t = tensor.detach().to("cpu").contiguous()
        _text(h, f"{name} {t.dtype} {tuple(t.shape)}")
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    for name, sub in module.named_modules():
        _text(h, f"{name}: {type(sub).__module__}.{type(sub).__qualname__} {_settings(sub)}")
    for path in _sources(module):
        _text(h, path.name)
        h.update(path.read_bytes())
    return h.hexdigest()


def read(key: str) -> bytes | None:
    """The graph cached under ``key``, or None (not cached, or the cache is off)."""
    path = _path(key)
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used: kept by the pruning in store()
    return data


def store(key: str, data: bytes) -> None:
    """Keep ``data`` under ``key`` for the next run (a temporary renamed into place), then prune the cache."""
    path = _path(key)
    if path is None:
        return
    tmp = path.with_name(f".{temporary_stem(path.name)}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        _prune(path.parent)
    except OSError as exc:  # a read-only or full home: the run goes on, the next one exports again
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.info("could not keep the exported network in %s (%s)", path.parent, exc)


def forget(key: str) -> None:
    """Remove a cached graph that failed to load, so it is exported again."""
    path = _path(key)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _path(key: str) -> Path | None:
    folder = cache_dir()
    return None if folder is None else folder / f"{key}.onnx"


def _prune(folder: Path) -> None:
    graphs = sorted(folder.glob("*.onnx"), key=_used, reverse=True)
    for old in graphs[KEEP:]:
        with contextlib.suppress(OSError):  # another run pruned it first
            old.unlink()


def _used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # pruned by another run meanwhile
        return 0.0


def _text(h: Any, text: str) -> None:
    h.update(text.encode("utf-8"))
    h.update(b"\0")


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer, persistent or not (e.g. attention indices built at construction)."""
    seen = dict(module.named_parameters(remove_duplicate=False))
    seen.update(module.named_buffers(remove_duplicate=False))
    return sorted(seen.items())


def _settings(module: nn.Module) -> str:
    """A module's plain attributes (numbers, strings, containers of them, config dataclasses), sorted by name."""
    out = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.append(f"{name}={value!r}")
        elif isinstance(value, _PLAIN):
            out.append(f"{name}={value!r}")
    return "; ".join(out)


def _sources(module: nn.Module) -> list[Path]:
    """The source files of every module class in ``module`` and of the model code (ops and helpers they call)."""
    files = {p.resolve() for p in _MODELS_DIR.rglob("*.py")}
    for sub in module.modules():
        try:
            files.add(Path(inspect.getsourcefile(type(sub)) or "").resolve())
        except TypeError:  # a built-in class: no source file
            continue
    return sorted(p for p in files if p.is_file())
