"""Readers served from a training pack (:mod:`training.pack`) instead of the data's own files.

Why: a machine lent for training (the device tool's GPU) receives a copy of the working tree of at most 64 MiB, no
``../shared/data`` and no rasterio. A pack holds what every reader of a recipe returns and the cloud bank's layers,
so :func:`training.datasets.build_reader` and :func:`training.datasets.cloud_bank.bank` can serve the same samples
from it once :func:`use` has opened it (``python -m training.train --pack FILE``).

The pack is one ``.npz``: ``index.json`` (a JSON string: per reader, its spec's key, kind, synthetic share,
source, sample names and the ids its samples carry; per bank split, its layers' ids, scenes and sources) and the
arrays, ``r{reader}/{sample}/{key}`` and ``bank/{split}/{layer}/{field}``. Reflectance is stored as uint16 DN where
that is exact (the data's own DN / 10⁴; else as float32), SAR and opacities as float32, masks and land cover as
uint8: every sample decodes to exactly what its reader returns (tested). A clear pair's ``optical`` is its
``target`` and is stored once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.refine.samples import Sample
from training.datasets.base import to_tensors

DN = 10000.0  # reflectance × DN = the uint16 the pack stores
REFLECTANCE = ("optical", "target", "radiance")  # uint16 DN where exact
FLOAT = ("sar", "alpha", "darkening", "shadow", "dem")  # float32, as read
CLASSES = ("mask", "landcover")  # uint8 where exact
LAYER_FIELDS = ("alpha", "radiance", "darkening", "shadow")

_ACTIVE: dict[str, Any] | None = None


def spec_key(spec: dict[str, Any]) -> str:
    """The key a recipe's dataset spec is found under: the spec itself, sorted, without the in-memory cache switch."""
    return json.dumps({k: v for k, v in spec.items() if k != "cache"}, sort_keys=True, default=str)


def encode(name: str, value: Any) -> np.ndarray:
    """One sample array as the pack stores it."""
    a = np.asarray(value)
    if name in REFLECTANCE:  # uint16 DN where that is exact (the data's own DN / 10⁴), else as it is
        dn = np.round(np.clip(a, 0.0, 65535 / DN) * DN).astype(np.uint16)
        exact = np.array_equal(dn.astype(np.float32) / np.float32(DN), a) and a.dtype == np.float32
        return dn if exact else a.astype(np.float32)
    if name in FLOAT:
        return a.astype(np.float32)
    if name in CLASSES and a.size and a.min() >= 0 and a.max() <= 255 and np.array_equal(a.astype(np.uint8), a):
        return a.astype(np.uint8)
    return a


def decode(name: str, a: np.ndarray) -> np.ndarray:
    """The array a reader returns (float32, land cover int64) from its stored form."""
    if name in REFLECTANCE and a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(DN)
    if name in FLOAT or (name == "mask" and a.dtype == np.uint8):
        return a.astype(np.float32)
    if name == "landcover" and a.dtype == np.uint8:
        return a.astype(np.int64)
    return a


class PackedReader:
    """A reader's samples as the pack holds them: the interface :class:`training.datasets.TrainView` uses."""

    def __init__(self, entry: dict[str, Any], samples: list[Sample]) -> None:
        self.kind = entry["kind"]
        self.source = entry["source"]
        self.names = list(entry["names"])
        self.samples = samples
        if entry.get("synthetic") is not None:
            self.synthetic = float(entry["synthetic"])

    def __len__(self) -> int:
        return len(self.samples)

    def sample_id(self, index: int) -> str:
        return self.names[index]

    def read(self, index: int) -> Sample:
        return dict(self.samples[index])

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.read(index))


def use(path: Path | str | None) -> None:
    """Serve readers and bank layers from the pack at ``path`` from now on (None: from the data's files again)."""
    global _ACTIVE
    if path is None:
        _ACTIVE = None
        return
    path = Path(path)
    if not path.is_file():
        raise InputError(f"training pack not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    index = json.loads(str(arrays.pop("index.json")))
    _ACTIVE = {"path": path, "index": index, "arrays": arrays, "layers": {}}


def active() -> bool:
    return _ACTIVE is not None


def reader_for(spec: dict[str, Any]) -> PackedReader:
    """The packed reader of a recipe's dataset ``spec``; the pack must hold it (a pack is built for its recipe)."""
    assert _ACTIVE is not None
    key = spec_key(spec)
    for r, entry in enumerate(_ACTIVE["index"]["readers"]):
        if entry["key"] == key:
            return PackedReader(entry, [_sample(f"r{r}/{i}/", sid) for i, sid in enumerate(entry["ids"])])
    raise InputError(f"the training pack {_ACTIVE['path']} has no dataset {key}: rebuild it for this recipe "
                     "(python -m training.pack)")  # fmt: skip


def bank_layers(split: str) -> list[dict[str, Any]]:
    """The cloud bank's ``split`` as the pack holds it: per layer its id, scene, source and decoded fields."""
    assert _ACTIVE is not None
    layers = _ACTIVE["index"]["bank"].get(split)
    if layers is None:
        raise InputError(f"the training pack {_ACTIVE['path']} holds no cloud bank '{split}' split: rebuild it for a "
                         "recipe with real_clouds (python -m training.pack)")  # fmt: skip
    cached = _ACTIVE["layers"]
    if split not in cached:  # decoded once: the training view asks for the bank at every sample
        arrays = _ACTIVE["arrays"]
        cached[split] = [{**meta, **{f: decode(f, arrays[f"bank/{split}/{n}/{f}"]) for f in LAYER_FIELDS}}
                         for n, meta in enumerate(layers)]  # fmt: skip
    return cached[split]


def _sample(prefix: str, sid: str | None) -> Sample:
    assert _ACTIVE is not None
    arrays = _ACTIVE["arrays"]
    sample: Sample = {k[len(prefix) :]: decode(k[len(prefix) :], v) for k, v in arrays.items() if k.startswith(prefix)}
    if "optical" not in sample:  # a clear pair: its optical image is its target
        sample["optical"] = sample["target"]
    if sid is not None:
        sample["id"] = sid
    return sample
