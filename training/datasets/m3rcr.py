"""M3R-CR quartets (PlanetScope 3 m + Sentinel-1 10 m + WorldCover 10 m + cloud mask) in the official layout.

The official CSV lists have no header and five columns, relative to ``<root>/<split>/``: cloud-free Planet,
cloudy Planet, S1, land cover, cloud mask ``.npy`` (True = cloud). Following the official loader: NaN → image mean;
optical /10000 clipped, SAR dB clipped to the paper's ranges (both via :mod:`engine.sources.normalise`); WorldCover
codes → 6 classes (:mod:`engine.sources.landcover`) replicated nearest to the optical grid.

SAR resolution is an option: ``sar_mode = "native"`` keeps the 90×90 SAR grid (the model upsamples; crops then
snap to whole SAR pixels, see :mod:`training.datasets.augment`); ``"upsample"`` replicates it nearest to 300×300
before cropping, as the official loader does. The sample CSV repeats its one row; duplicate rows are dropped
(``unique=True``) so a sample is not silently weighted several times.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from engine.errors import InputError
from engine.refine.samples import Sample, nearest_resize
from engine.sources.landcover import worldcover_to_classes
from engine.sources.normalise import normalise_optical, normalise_sar
from training.datasets.base import fill_nan_with_mean, mask_or_detect, read_raster, to_tensors

SAR_MODES = ("native", "upsample")


class M3RCR(Dataset):
    """Whole M3R-CR quartets as tensors (augmentation is applied by :class:`training.datasets.TrainView`)."""

    def __init__(
        self,
        root: str | Path,
        csv_file: str | Path,
        split: str = "train",
        sar_mode: str = "native",
        unique: bool = True,
        use_given_masks: bool = True,
        cache: bool = False,
    ) -> None:
        if sar_mode not in SAR_MODES:
            raise InputError(f"sar_mode must be one of {SAR_MODES}, got '{sar_mode}'")
        self.root = Path(root)
        self.base = self.root / split
        csv_path = Path(csv_file)
        if not csv_path.is_absolute():
            csv_path = self.root / csv_path
        if not csv_path.is_file():
            raise InputError(f"M3R-CR list {csv_path} not found")
        rows: list[tuple[str, ...]] = []
        with open(csv_path, newline="") as fh:
            for row in csv.reader(fh):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < 5:
                    raise InputError(f"{csv_path}: expected 5 columns (cloud-free, cloudy, S1, land cover, mask)")
                entry = tuple(c.strip() for c in row[:5])
                if unique and entry in rows:
                    continue
                rows.append(entry)
        if not rows:
            raise InputError(f"{csv_path} lists no samples")
        self.rows = rows
        self.sar_mode = sar_mode
        self.use_given_masks = use_given_masks
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        stem = Path(self.rows[index][1]).stem
        return stem.removeprefix("planet_cloudy_")

    def read(self, index: int) -> Sample:
        """The numpy sample of row ``index`` (see :mod:`training.datasets.base`)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        free, cloudy, s1, lc, mask_path = (self.base / p for p in self.rows[index])
        target = normalise_optical(fill_nan_with_mean(read_raster(free)))
        optical = normalise_optical(fill_nan_with_mean(read_raster(cloudy)))
        if target.shape != optical.shape or optical.shape[0] != 4:
            raise InputError(f"{cloudy}: cloudy {optical.shape} and cloud-free {target.shape} must be (4, H, W)")
        sar = normalise_sar(fill_nan_with_mean(read_raster(s1)))
        hw = optical.shape[-2:]
        if self.sar_mode == "upsample":
            sar = nearest_resize(sar, hw)
        landcover = nearest_resize(worldcover_to_classes(read_raster(lc)[0]), hw)
        given = np.load(mask_path) if self.use_given_masks and mask_path.is_file() else None
        sample: Sample = {
            "optical": optical,
            "target": target,
            "sar": sar.astype(np.float32),
            "mask": mask_or_detect(given, optical),
            "landcover": landcover.astype(np.int64),
            "id": self.sample_id(index),
        }
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.read(index))
