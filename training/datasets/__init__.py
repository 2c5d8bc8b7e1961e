"""Training datasets: readers for M3R-CR, SEN12MS-CR and build_dataset splits, and :class:`TrainView`, the
augmented view the loop uses.

Readers (:class:`M3RCR`, :class:`SEN12MSCR`, :class:`LayoutSplit`) return whole samples. :class:`TrainView`
concatenates readers (of one kind of sample: the same keys), optionally repeats them to a fixed epoch length (a
tiny real data set still gives many random crops per epoch), and applies :mod:`training.datasets.augment`. Its
randomness is a pure function of (seed, epoch, index), not of worker processes or of how many batches ran before,
so a resumed run draws exactly the crops an uninterrupted one would.

Dataset specs in a recipe (``[[data.train]]`` / ``[[data.val]]`` tables) name a ``kind`` (``m3rcr``,
``sen12mscr`` or ``layout``), a ``root`` (relative paths are resolved from the repository root) and the reader's
options. ``layout`` reads a split written by ``python -m training.build_dataset`` (``root`` = its ``--out`` folder,
``split`` = train | val | test, optional ``archive``, ``require``): multi-date samples for the temporal models
(:mod:`training.datasets.layout`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import Dataset

from engine.errors import InputError
from engine.refine.samples import Sample, crop_sample, flip_rotate, nearest_resize
from engine.refine.synthetic_clouds import add_clouds
from training.datasets import cloud_bank, packed
from training.datasets.augment import AugmentConfig, add_synthetic_clouds
from training.datasets.base import to_tensors

if TYPE_CHECKING:
    from training.datasets.layout import LayoutSplit
    from training.datasets.m3rcr import M3RCR
    from training.datasets.packed import PackedReader
    from training.datasets.sen12mscr import SEN12MSCR
    from training.datasets.sources import AsClear

    Reader = M3RCR | SEN12MSCR | LayoutSplit | AsClear | PackedReader

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["M3RCR", "SEN12MSCR", "LayoutSplit", "AugmentConfig", "TrainView", "build_reader", "resolve_path"]

# The readers of the data's own files are imported when first used: they need rasterio (GDAL), which a machine
# training from a pack (training.datasets.packed) may not have.
_FILE_READERS = {"M3RCR": "training.datasets.m3rcr", "SEN12MSCR": "training.datasets.sen12mscr",
                 "LayoutSplit": "training.datasets.layout"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _FILE_READERS:
        return getattr(importlib.import_module(_FILE_READERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_path(path: str | Path) -> Path:
    """Absolute paths stay; relative ones are taken from the repository root (recipes run from anywhere)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def build_reader(spec: dict[str, Any], cache: bool = True) -> Reader:
    """A dataset reader from one ``[[data.*]]`` table of a recipe.

    With a training pack open (:mod:`training.datasets.packed`) the reader is served from it. Two options apply to
    every kind: ``as_clear = true`` serves the cloud-free images (with their SAR) as clear
    pairs, and ``synthetic = p`` is the probability that a sample gets synthetic clouds (default: 1 for clear
    pairs, which have no cloud of their own; else the recipe's ``data.synthetic_clouds``).
    """
    if packed.active():
        return packed.reader_for(spec)
    spec = dict(spec)
    as_clear = bool(spec.pop("as_clear", False))
    synthetic = spec.pop("synthetic", None)
    reader = _build_kind(spec, cache)
    if as_clear:
        from training.datasets.sources import AsClear

        reader = AsClear(reader)
    if synthetic is None and getattr(reader, "kind", "real") == "clear":
        synthetic = 1.0
    if synthetic is not None:
        reader.synthetic = float(synthetic)
    return reader


def _build_kind(spec: dict[str, Any], cache: bool) -> Reader:
    from training.datasets.layout import LayoutSplit
    from training.datasets.m3rcr import M3RCR
    from training.datasets.sen12mscr import SEN12MSCR
    from training.datasets.sources import READERS as SOURCE_READERS

    kind = spec.pop("kind", None)
    if "root" not in spec:
        raise InputError(f"dataset spec {spec} has no 'root'")
    root = resolve_path(spec.pop("root"))
    spec.setdefault("cache", cache)
    try:
        if kind == "m3rcr":
            csv_file = spec.pop("csv", None)
            if csv_file is None:
                raise InputError("an m3rcr dataset needs 'csv' (the official list file)")
            return M3RCR(root, csv_file, **spec)
        if kind == "sen12mscr":
            return SEN12MSCR(root, **spec)
        if kind == "layout":
            if spec.get("archive") is not None:
                spec["archive"] = resolve_path(spec["archive"])
            if "csv" in spec:
                spec["csv_file"] = spec.pop("csv")
            return LayoutSplit(root, **spec)
        if kind in SOURCE_READERS:
            return SOURCE_READERS[kind](root, **spec)
    except TypeError as exc:
        raise InputError(f"bad option in {kind} dataset spec: {exc}") from None
    known = ("m3rcr", "sen12mscr", "layout", *SOURCE_READERS)
    raise InputError(f"unknown dataset kind '{kind}' (known: {', '.join(known)})")


class TrainView(Dataset):
    """Readers concatenated, repeated to ``length`` items, augmented deterministically per (seed, epoch, index)."""

    def __init__(
        self,
        readers: list[Reader],
        augment: AugmentConfig,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if not readers:
            raise InputError("no datasets given")
        self.readers = readers
        self.index: list[tuple[int, int]] = [(r, i) for r, reader in enumerate(readers) for i in range(len(reader))]
        self.augment = augment
        self.seed = seed
        self.length = length or len(self.index)
        self.epoch = 0
        self._bank: list[np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's DataLoader iterator is created (workers receive a fresh copy then)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def read(self, i: int) -> Sample:
        r, j = self.index[i % len(self.index)]
        return self.readers[r].read(j)

    def mask_bank(self) -> list[np.ndarray]:
        """Real cloud masks covering 5–95 % of their image: the shapes synthetic clouds are drawn from."""
        if self._bank is None:
            bank = []
            for k in range(len(self.index)):
                m = self.read(k)["mask"][0]
                if 0.05 <= float(m.mean()) <= 0.95:
                    bank.append(m.astype(np.float32))
            self._bank = bank
        return self._bank

    def _synthetic_mask(self, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray | None:
        bank = self.mask_bank()
        if not bank:
            return None
        m = bank[int(rng.integers(0, len(bank)))]
        if m.shape[0] < hw[0] or m.shape[1] < hw[1]:
            return nearest_resize(m, hw)
        y = int(rng.integers(0, m.shape[0] - hw[0] + 1))
        x = int(rng.integers(0, m.shape[1] - hw[1] + 1))
        return m[y : y + hw[0], x : x + hw[1]]

    def synthetic_probability(self, i: int) -> float:
        """Chance that item ``i`` gets synthetic clouds: its reader's own ``synthetic`` (clear pairs: 1), else the
        view's ``synthetic_clouds``."""
        reader = self.readers[self.index[i % len(self.index)][0]]
        return float(getattr(reader, "synthetic", self.augment.synthetic_clouds))

    def __getitem__(self, i: int) -> Sample:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        sample = self.read(i)
        aug = self.augment
        if aug.crop:
            sample = crop_sample(sample, aug.crop, rng if aug.random_crop else None)
        p = self.synthetic_probability(i)
        if p > 0 and rng.random() < p:
            layers = cloud_bank.bank(aug.cloud_bank) if aug.cloud_bank else ()
            if layers and rng.random() < 0.5:
                sample = cloud_bank.paste(sample, layers[int(rng.integers(0, len(layers)))], rng)
            elif aug.cloud_model == "layers":
                sample = add_clouds(sample, rng, self.mask_bank())
            else:
                mask = self._synthetic_mask(sample["optical"].shape[-2:], rng)
                if mask is not None:
                    sample = add_synthetic_clouds(sample, mask, rng)
        if aug.flips or aug.rot90:
            sample = flip_rotate(sample, rng, aug.flips, aug.rot90)
        return to_tensors(sample)
