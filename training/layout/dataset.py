"""Read the samples of a split CSV written by ``python -m training.build_dataset`` as training tensors.

Each row names, per layout item, the archive scenes and the patch's ground bounds; this cuts those windows out of
the scenes. Keys follow :mod:`training.datasets.base` (``optical``, ``sar``, ``target``, ``mask``, ``landcover``,
``id``) plus the temporal model contract of the registry: ``optical_prev``/``sar_prev`` (item ``t-1``),
``optical_next``/``sar_next`` (item ``t+1``), and acquisition times in seconds since the epoch ``t``, ``t_prev``,
``t_next`` (what the ``gapfill`` model needs). So one sample feeds ``ssop-unet`` (``model(optical, sar)``),
``msop-unet`` and ``gapfill`` (``model(optical, sar, **temporal)``) alike — the paper's comparison protocol.

Scaling goes through :mod:`engine.normalise` as everywhere: optical DN (reflectance × 10⁴) unless the values are
already reflectance in [0, 1] (``detect_optical_scale``), SAR in dB unless detected linear. SAR is resampled
nearest onto the optical patch grid (the paper's SAR is on the optical grid; the models would do the same).
Cloud mask: the optical scene's ``_mask`` sidecar, else the engine's detector. Land cover: unknown (class 6).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds
from torch.utils.data import Dataset

from engine.errors import InputError
from engine.gapfill import parse_datetime
from engine.landcover import UNKNOWN
from engine.masks import cloud_mask_from_bands
from engine.normalise import detect_optical_scale, detect_sar_units, linear_to_db, normalise_optical, normalise_sar
from training.datasets.base import Sample, fill_nan_with_mean, mask_or_detect, to_tensors
from training.layout.archive import MASK_SUFFIX, RASTER_EXT

ITEM_KEYS = {"t": ("optical", "sar", "t"), "t-1": ("optical_prev", "sar_prev", "t_prev"),
             "t+1": ("optical_next", "sar_next", "t_next"), "target": ("target", None, "t_target")}


def _window_read(path: Path, bounds: tuple[float, ...], bands: list[int], shape: tuple[int, int] | None) -> np.ndarray:
    with rasterio.open(path) as ds:
        win = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        out_shape = None if shape is None else (len(bands), *shape)
        return ds.read(bands, window=win, out_shape=out_shape, resampling=Resampling.nearest, boundless=False)


class LayoutDataset(Dataset):
    """Samples of one split CSV; ``archive`` is the folder the CSV's relative scene paths start from."""

    def __init__(self, split_csv: str | Path, archive: str | Path, bands: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        self.archive = Path(archive)
        self.bands = [int(b) for b in bands]
        if len(self.bands) != 4:
            raise InputError(f"the models take 4 optical bands (B, G, R, NIR); got {self.bands}")
        path = Path(split_csv)
        if not path.is_file():
            raise InputError(f"split file not found: {path}")
        with path.open(newline="") as fh:
            self.rows = list(csv.DictReader(fh))
        if self.rows and "t_optical" not in self.rows[0]:
            raise InputError(f"{path} has no 't_optical' column: not a build_dataset split (reference item 't')")
        self.items = [k for k in ITEM_KEYS if self.rows and f"{k}_optical" in self.rows[0]]

    def __len__(self) -> int:
        return len(self.rows)

    def _optical(self, rel: str, bounds: tuple[float, ...]) -> tuple[np.ndarray, Path]:
        path = self.archive / rel
        raw = _window_read(path, bounds, self.bands, None).astype(np.float32)
        return normalise_optical(fill_nan_with_mean(raw), detect_optical_scale(raw)), path

    def _mask(self, scene: Path, bounds: tuple[float, ...], optical01: np.ndarray) -> np.ndarray:
        for ext in RASTER_EXT:
            side = scene.with_name(scene.stem + MASK_SUFFIX + ext)
            if side.is_file():
                with rasterio.open(side) as ms:
                    count = ms.count
                m = _window_read(side, bounds, list(range(1, count + 1)), optical01.shape[-2:])
                return mask_or_detect(cloud_mask_from_bands(m), optical01)
        return mask_or_detect(None, optical01)

    def __getitem__(self, i: int) -> Sample:
        row = self.rows[i]
        bounds = tuple(float(row[k]) for k in ("left", "bottom", "right", "top"))
        sample: Sample = {"id": f"{row['t_optical']}@{row['col']},{row['row']}"}
        for item in self.items:
            opt_key, sar_key, time_key = ITEM_KEYS[item]
            optical, scene = self._optical(row[f"{item}_optical"], bounds)
            sample[opt_key] = optical
            sample[time_key] = np.float64(parse_datetime(row[f"{item}_datetime"]).timestamp())
            if item == "t":
                sample["mask"] = self._mask(scene, bounds, optical)
            if sar_key is not None and row.get(f"{item}_sar"):
                sar = _window_read(self.archive / row[f"{item}_sar"], bounds, [1, 2], optical.shape[-2:])
                sar = fill_nan_with_mean(sar.astype(np.float32))
                if detect_sar_units(sar) == "linear":
                    sar = linear_to_db(sar)
                sample[sar_key] = normalise_sar(sar)
        sample["landcover"] = np.full(sample["optical"].shape[-2:], UNKNOWN, dtype=np.int64)
        times = {k: sample.pop(k) for k in ("t", "t_prev", "t_next", "t_target") if k in sample}
        out = to_tensors(sample)
        out.update({k: float(v) for k, v in times.items()})
        return out
