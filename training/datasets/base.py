"""What every training dataset returns, and the small array helpers the readers share.

A *sample* is a dict of numpy arrays while it is read and augmented, and of tensors once it leaves the dataset:

* ``optical`` (4, H, W) float32 cloudy image in [0, 1]; ``target`` (4, H, W) float32 cloud-free image in [0, 1];
* ``sar`` (2, h, w) float32 VV, VH in [0, 1] — either at its own resolution (M3R-CR: 90 px for 300 optical px)
  or already upsampled to (H, W);
* ``mask`` (1, H, W) float32, 1 = cloud (given with the data, else :func:`engine.align.cloudmask.detect_clouds`);
* ``landcover`` (H, W) int64, classes 0…5 and 6 = unknown (:mod:`engine.sources.landcover`); ``id`` a string;
* multi-date samples (:mod:`training.datasets.layout`) add ``optical_prev``/``optical_next`` (4, H, W) and
  ``sar_prev``/``sar_next`` (2, h, w) — the registry's temporal contract — and acquisition times ``t``,
  ``t_prev``, ``t_next``, ``t_target`` (seconds since the epoch; 0-d arrays, Python floats after :func:`to_tensors`);
* ``dem`` (1, H, W) float32, when the layout split has a DEM: elevation on the optical grid, metres ×
  :data:`engine.align.dem.DEM_SCALE` (the optional input of the Cresson U-Nets built with ``dem=True``).

Scaling goes exclusively through :mod:`engine.sources.normalise` so training sees exactly what inference will feed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.align.cloudmask import detect_clouds
from engine.errors import InputError
from engine.refine.samples import Sample


def read_raster(path: Path, bands: tuple[int, ...] | None = None) -> np.ndarray:
    """(bands, H, W) array of a raster; ``bands`` are 0-based indices. Georeferencing is not needed here."""
    import warnings

    import rasterio  # here: training from a pack (training.datasets.packed) runs where GDAL is not installed

    if not path.is_file():
        raise InputError(f"missing file {path}")

    with warnings.catch_warnings():
        # SEN12MS-CR copies without a CRS are fine for training: every modality shares the pixel grid.
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            if bands is not None and max(bands) >= ds.count:
                raise InputError(f"{path} has {ds.count} bands; asked for 0-based band {max(bands)}")
            indexes = None if bands is None else [b + 1 for b in bands]
            return ds.read(indexes)


def fill_nan_with_mean(a: np.ndarray) -> np.ndarray:
    """NaN → mean of the finite values of the whole image, as the official M3R-CR loader does (0 if none)."""
    a = np.asarray(a, dtype=np.float32)
    bad = ~np.isfinite(a)
    if bad.any():
        a = a.copy()
        finite = a[~bad]
        a[bad] = float(finite.mean()) if finite.size else 0.0
    return a



def mask_or_detect(mask: np.ndarray | None, optical01: np.ndarray) -> np.ndarray:
    """(1, H, W) float32 cloud mask: the given one, else the documented detector on the cloudy image."""
    if mask is None:
        mask = detect_clouds(optical01)
    mask = np.asarray(mask).astype(bool)
    if mask.ndim == 3:
        mask = mask[0]
    if mask.shape != optical01.shape[-2:]:
        raise InputError(f"cloud mask {mask.shape} does not match the optical image {optical01.shape[-2:]}")
    return mask[None].astype(np.float32)


def to_tensors(sample: Sample) -> Sample:
    """numpy sample → tensors (float32, landcover int64, scalars as Python floats); contiguous copies."""
    out: Sample = {}
    for key, value in sample.items():
        if key == "id":
            out[key] = value
        elif np.ndim(value) == 0:  # acquisition times (seconds since the epoch): float64 needs no float32 rounding
            out[key] = float(value)
        elif key == "landcover":
            out[key] = torch.from_numpy(np.ascontiguousarray(value).astype(np.int64))
        else:
            out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return out


class CachedReader(ABC):
    """The list / cache / tensor plumbing every whole-sample reader shares: ``items`` is a list of (id, anything),
    ``_load(id, anything)`` reads one sample; with ``cache`` decoded samples stay in memory (small data sets)."""

    items: list[tuple[str, Any]]
    _cache: dict[int, Sample] | None

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, index: int) -> str:
        return self.items[index][0]

    @abstractmethod
    def _load(self, sid: str, item: Any) -> Sample:
        """The numpy sample of one item (each reader's own format)."""

    def read(self, index: int) -> Sample:
        """The numpy sample ``index`` (see the module docstring)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self._load(*self.items[index])
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.read(index))
