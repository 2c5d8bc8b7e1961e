"""The one reader of a ``.safetensors`` file's header — standard library only, so QGIS's Python (no torch) uses it too.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes of JSON: one entry per
tensor (``dtype``, ``shape``, ``data_offsets``) and, under ``"__metadata__"``, the writer's free-form string map (the
engine's model card lives there, :mod:`engine.models.weights`). Reading it costs no tensor data, which is why both
the engine (model card, tensor index checked against the architecture before anything is allocated) and the plugin
(the dialog's card box, parameter count) read weights files through here.

Anything wrong with the file — unreadable, not safetensors, or a header crafted to break the parser (a shape that is
not a list of integers, metadata that is not a string map) — is one :class:`HeaderError` line (issue 15: raw
ValueError/AttributeError/TypeError escaped the plugin's reader).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit; a bigger number means "not a safetensors file"


class HeaderError(ValueError):
    """The file is not a readable safetensors file (the message says why, in one line)."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # "F32", "BF16", "I64", …
    shape: tuple[int, ...]


@dataclass
class SafetensorsHeader:
    """The metadata string map and the tensor index of a safetensors file."""

    path: Path
    metadata: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    @property
    def parameters(self) -> int:
        """Number of values over all tensors."""
        total = 0
        for info in self.tensors.values():
            n = 1
            for dim in info.shape:
                n *= dim
            total += n
        return total


def read_header(path: str | Path) -> SafetensorsHeader:
    """The header of the safetensors file at ``path``; :class:`HeaderError` when it is not one."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise HeaderError(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", raw_len)
            if length <= 0 or length > MAX_HEADER_BYTES:
                raise HeaderError(f"{path.name}: not a safetensors file (header length {length})")
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        raise HeaderError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise HeaderError(f"{path.name}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise HeaderError(f"{path.name}: not a safetensors file (header is not an object)")
    try:
        return _parse(path, header)
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        raise HeaderError(f"{path.name}: malformed safetensors header ({type(exc).__name__}: {exc})") from None


def _parse(path: Path, header: dict[str, Any]) -> SafetensorsHeader:
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise TypeError("__metadata__ is not an object")
    out = SafetensorsHeader(path=path, metadata={str(k): str(v) for k, v in meta.items()})
    for name, info in header.items():
        if isinstance(info, dict) and "shape" in info:
            shape = info["shape"]
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"tensor shape {str(shape)[:40]} is not a list of non-negative integers")
            out.tensors[str(name)] = TensorInfo(dtype=str(info.get("dtype", "")), shape=tuple(shape))
    return out
