"""SEN12MS-CR triplets: ``s1/ID.tif``, ``s2_cloudy/ID.tif``, ``s2_cloudfree/ID.tif`` and optional ``cloudmask/ID.tif``.

Sentinel-2 L1C has 13 bands (B1…B12 with B8A, reflectance × 10⁴); the 4-band models use B2, B3, B4, B8 =
0-based indices 1, 2, 3, 7 → B, G, R, NIR (``bands`` option). Sentinel-1 is VV, VH in dB on the same 10 m grid.
The sample IDs come from GLF-CR's ``data.csv`` when present (columns: split 1 = train, 2 = val, 3 = test, s1 folder,
cloud-free folder, cloudy folder, file name; ``splits`` filters on the first), else from the ``s2_cloudy`` listing.
``include`` / ``exclude`` select IDs by name — how a held-out validation set stays out of training.

Scaling via :mod:`engine.sources.normalise` (the paper's clip ranges), NaN → image mean as the M3R-CR loader. Without a
``cloudmask/`` file the mask is :func:`engine.align.cloudmask.detect_clouds` on the cloudy image. There is no land
cover in SEN12MS-CR: every pixel is class 6 (unknown).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from engine.errors import InputError
from engine.refine.samples import Sample
from engine.sources.landcover import UNKNOWN
from engine.sources.masks import cloud_mask_from_bands
from engine.sources.normalise import normalise_optical, normalise_sar
from training.datasets.base import CachedReader, fill_nan_with_mean, mask_or_detect, read_raster

DEFAULT_BANDS = (1, 2, 3, 7)


class SEN12MSCR(CachedReader, Dataset):
    """SEN12MS-CR triplets as tensors (augmentation is applied by :class:`training.datasets.TrainView`)."""

    def __init__(
        self,
        root: str | Path,
        bands: Iterable[int] = DEFAULT_BANDS,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        splits: Iterable[int] | None = None,
        use_given_masks: bool = True,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        self.bands = tuple(int(b) for b in bands)
        if len(self.bands) != 4:
            raise InputError(f"the models take 4 optical bands (B, G, R, NIR); got band selection {self.bands}")
        self.items = self._list(splits)
        wanted = None if include is None else {str(i) for i in include}
        dropped = {str(i) for i in exclude}
        if wanted is not None:
            missing = wanted - {i for i, _ in self.items}
            if missing:
                raise InputError(f"SEN12MS-CR IDs not found under {self.root}: {sorted(missing)}")
        self.items = [(i, f) for i, f in self.items if (wanted is None or i in wanted) and i not in dropped]
        if not self.items:
            raise InputError(f"no SEN12MS-CR triplets selected under {self.root}")
        self.use_given_masks = use_given_masks
        self._cache: dict[int, Sample] | None = {} if cache else None

    def _list(self, splits: Iterable[int] | None) -> list[tuple[str, dict[str, Path]]]:
        csv_path = self.root / "data.csv"
        keep = None if splits is None else {int(s) for s in splits}
        items: list[tuple[str, dict[str, Path]]] = []
        if csv_path.is_file():
            with open(csv_path, newline="") as fh:
                for row in csv.reader(fh):
                    if len(row) < 5 or not row[0].strip().isdigit():
                        continue
                    if keep is not None and int(row[0]) not in keep:
                        continue
                    s1, free, cloudy, name = (c.strip() for c in row[1:5])
                    paths = {"s1": self.root / s1 / name, "free": self.root / free / name,
                             "cloudy": self.root / cloudy / name, "mask": self.root / "cloudmask" / name}
                    items.append((Path(name).stem, paths))
            return items
        cloudy_dir = self.root / "s2_cloudy"
        if not cloudy_dir.is_dir():
            raise InputError(f"{self.root} is not a SEN12MS-CR folder (no data.csv, no s2_cloudy/)")
        for path in sorted(cloudy_dir.glob("*.tif"), key=lambda p: (len(p.stem), p.stem)):
            name = path.name
            paths = {"s1": self.root / "s1" / name, "free": self.root / "s2_cloudfree" / name,
                     "cloudy": path, "mask": self.root / "cloudmask" / name}
            items.append((path.stem, paths))
        return items

    def _load(self, sid: str, paths: dict[str, Path]) -> Sample:
        """One triplet (see :mod:`training.datasets.base`)."""
        optical = normalise_optical(fill_nan_with_mean(read_raster(paths["cloudy"], self.bands)))
        target = normalise_optical(fill_nan_with_mean(read_raster(paths["free"], self.bands)))
        sar = normalise_sar(fill_nan_with_mean(read_raster(paths["s1"])))
        if target.shape != optical.shape:
            raise InputError(f"{sid}: cloudy {optical.shape} and cloud-free {target.shape} differ")
        given = None
        if self.use_given_masks and paths["mask"].is_file():
            given = cloud_mask_from_bands(read_raster(paths["mask"]))
        return {
            "optical": optical,
            "target": target,
            "sar": sar,
            "mask": mask_or_detect(given, optical),
            "landcover": np.full(optical.shape[-2:], UNKNOWN, dtype=np.int64),
            "id": sid,
        }
