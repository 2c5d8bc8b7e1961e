"""Readers for the other real S1 + S2 sources in ``../shared/data`` (see its README), each with its quirks handled.

Every reader returns the sample of :mod:`training.datasets.base`: optical (B2, B3, B4, B8 as B, G, R, NIR in [0, 1]),
target, SAR (VV, VH in [0, 1], on the optical grid), mask, land cover (unknown). Two kinds:

* **clear pairs** (``optical`` = ``target`` = the cloud-free image, ``mask`` = 0): the training view adds synthetic
  clouds whose target is exact (:mod:`engine.refine.synthetic_clouds`), so a clear S1 + S2 pair becomes a
  cloudy/clear/SAR triplet without the date difference a real pair carries;
* **real triplets** (SSL4EO-S12's cloudy 2020-08-23 L1C + 2020-09-03 S1 + clear 2020-06-04 L1C).

Quirks (from ``../shared/data/README.md``, checked on the files):
- BigEarthNet-MM: one file per band (10 m bands 120²) and per polarisation; S1 and S2 share the grid; Sentinel-2
  L2A before processing baseline 04.00 (no offset).
- TerraMind/TerraMesh: S2 L1C 13 bands int16; some scenes carry the baseline-04.00 +1000 DN offset — detected from
  the cirrus band B10 (a dark band whose minimum is ~0 without the offset and ≥ 1000 with it); S1 RTC in dB.
- SSL4EO-S12: EPSG:4326, and the S1 grid is NOT the S2 grid (origin ~40 m west, another pixel size): S1 is warped
  onto the S2 grid (bilinear in dB, rasterio) from the geotransforms.
- Sen1Floods11: S2 L1C int16 13 bands, S1 with NaN as nodata (→ image mean, as the M3R-CR loader does).
- SEN12MS-CR "dsp_sea" pairs: ``s1/`` + ``s2_cloudFree/`` (open sea).
The L1C products are used where a source has both (SEN12MS-CR and M3R-CR are top-of-atmosphere too).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path

import numpy as np
import rasterio
from rasterio.warp import Resampling, reproject
from torch.utils.data import Dataset

from engine.errors import InputError
from engine.refine.samples import Sample
from engine.sources.landcover import UNKNOWN
from engine.sources.normalise import normalise_optical, normalise_sar
from training.datasets.base import CachedReader, fill_nan_with_mean, mask_or_detect, read_raster, to_tensors

L1C_BGRN = (1, 2, 3, 7)  # B2, B3, B4, B8 among the 13 L1C bands
L1C_CIRRUS = 10  # B10
OFFSET_DN = 1000.0  # processing baseline 04.00 radiometric offset
SOURCES = ("bigearthnet", "terramind", "ssl4eo", "sen1floods11", "sen12mscr_pairs")


def _sample(sid: str, optical: np.ndarray, target: np.ndarray, sar: np.ndarray, mask: np.ndarray | None) -> Sample:
    return {
        "optical": optical,
        "target": target,
        "sar": sar,
        "mask": np.zeros((1, *optical.shape[-2:]), np.float32) if optical is target else mask_or_detect(mask, optical),
        "landcover": np.full(optical.shape[-2:], UNKNOWN, dtype=np.int64),
        "id": sid,
    }


def _clear(sid: str, optical_dn: np.ndarray, sar_db: np.ndarray) -> Sample:
    img = normalise_optical(fill_nan_with_mean(optical_dn))
    return _sample(sid, img, img, normalise_sar(fill_nan_with_mean(sar_db)), None)


def _l1c_bgrn(stack: np.ndarray) -> np.ndarray:
    """B, G, R, NIR of a 13-band L1C stack, the +1000 DN offset removed where the cirrus band shows it."""
    out = stack[list(L1C_BGRN)].astype(np.float32)
    if float(np.nanmin(stack[L1C_CIRRUS])) >= 0.9 * OFFSET_DN:
        out -= OFFSET_DN
    return out


def _warp_onto(src_path: Path, ref_path: Path) -> np.ndarray:
    """All bands of ``src_path`` warped onto ``ref_path``'s grid (bilinear; NaN where nothing falls)."""
    with rasterio.open(ref_path) as ref, rasterio.open(src_path) as src:
        out = np.full((src.count, ref.height, ref.width), np.nan, dtype=np.float32)
        for b in range(src.count):
            reproject(src.read(b + 1).astype(np.float32), out[b], src_transform=src.transform, src_crs=src.crs,
                      dst_transform=ref.transform, dst_crs=ref.crs, resampling=Resampling.bilinear,
                      src_nodata=np.nan, dst_nodata=np.nan)
    return out


class _Reader(CachedReader, Dataset):
    """Include/exclude selection over :class:`CachedReader`; subclasses implement ``_list`` and ``_load``."""

    kind = "clear"  # "clear" (synthetic clouds make the cloudy image) or "real"

    def __init__(self, root: str | Path, include=None, exclude=(), cache: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"dataset folder {self.root} not found")
        items = self._list()
        wanted = None if include is None else {str(i) for i in include}
        if wanted is not None and wanted - {i for i, _ in items}:
            raise InputError(f"IDs not found under {self.root}: {sorted(wanted - {i for i, _ in items})}")
        self.items = [(i, p) for i, p in items if (wanted is None or i in wanted) and i not in set(exclude)]
        if not self.items:
            raise InputError(f"no samples selected under {self.root}")
        self._cache: dict[int, Sample] | None = {} if cache else None

    @abstractmethod
    def _list(self) -> list[tuple[str, object]]:
        """(id, what ``_load`` needs) of every sample under ``root``."""


class BigEarthNet(_Reader):
    """BigEarthNet-MM example pairs; IDs are the S2 patch names' last two fields (e.g. ``87_48``)."""

    def _list(self):
        items = []
        for meta in sorted(self.root.glob("BigEarthNet-S1-Example/*/*_labels_metadata.json")):
            s2 = json.loads(meta.read_text())["corresponding_s2_patch"]
            sid = "_".join(s2.split("_")[-2:])
            items.append((sid, (meta.parent, self.root / "BigEarthNet-S2-Example" / s2)))
        return items

    def _load(self, sid, item):
        s1_dir, s2_dir = item
        bands = [read_raster(next(s2_dir.glob(f"*_{b}.tif")))[0] for b in ("B02", "B03", "B04", "B08")]
        sar = [read_raster(next(s1_dir.glob(f"*_{p}.tif")))[0] for p in ("VV", "VH")]
        return _clear(sid, np.stack(bands).astype(np.float32), np.stack(sar))


class TerraMind(_Reader):
    """TerraMesh examples: ``S2L1C/ID.tif`` + ``S1RTC/ID.tif`` on one grid (IDs e.g. ``38D_378R_2_3``)."""

    def _list(self):
        return [(p.stem, p) for p in sorted((self.root / "S2L1C").glob("*.tif"))]

    def _load(self, sid, item):
        return _clear(sid, _l1c_bgrn(read_raster(item)), read_raster(self.root / "S1RTC" / item.name))


class Sen1Floods11(_Reader):
    """The Sen1Floods11 hand-labelled chip: ``S2/*_S2Hand.tif`` + ``S1/*_S1Hand.tif`` (NaN = nodata)."""

    def _list(self):
        return [(p.name.replace("_S2Hand.tif", ""), p) for p in sorted((self.root / "S2").glob("*_S2Hand.tif"))]

    def _load(self, sid, item):
        return _clear(sid, _l1c_bgrn(read_raster(item)), read_raster(self.root / "S1" / f"{sid}_S1Hand.tif"))


class SEN12MSCRPairs(_Reader):
    """SEN12MS-CR cloud-free pairs without a cloudy image: ``s1/ID.tif`` + ``s2_cloudFree/ID.tif``."""

    def _list(self):
        return [(p.stem, p) for p in sorted((self.root / "s2_cloudFree").glob("*.tif"))]

    def _load(self, sid, item):
        return _clear(sid, _l1c_bgrn(read_raster(item)), read_raster(self.root / "s1" / item.name))


class SSL4EO(_Reader):
    """SSL4EO-S12 location 0000200: the clear L1C (2020-06-04) with its S1 (2020-06-07) as ``clear``, or the real
    triplet cloudy L1C 2020-08-23 + S1 2020-09-03 + clear L1C 2020-06-04 as ``triplet``. S1 is warped onto S2."""

    CLEAR, CLOUDY = "20200604", "20200823"
    S1_FOR = {"20200604": "20200607", "20200823": "20200903"}

    def __init__(self, root, mode: str = "triplet", **kw) -> None:
        if mode not in ("clear", "triplet"):
            raise InputError(f"ssl4eo mode must be 'clear' or 'triplet', got '{mode}'")
        self.mode = mode
        self.kind = "real" if mode == "triplet" else "clear"
        super().__init__(root, **kw)

    def _dir(self, product: str, date: str) -> Path:
        found = sorted((self.root / "SSL4EO-S12" / product).glob(f"*/*{date}T*"))
        if not found:
            raise InputError(f"SSL4EO-S12 {product} of {date} not found under {self.root}")
        return found[0]

    def _list(self):
        return [("0000200_" + (self.CLOUDY if self.mode == "triplet" else self.CLEAR), None)]

    def _l1c(self, date: str) -> tuple[np.ndarray, Path]:
        d = self._dir("s2c", date)
        names = ("B2", "B3", "B4", "B8")
        stack = np.stack([read_raster(d / f"{n}.tif")[0] for n in names]).astype(np.float32)
        return stack, d / "B2.tif"

    def _sar(self, date: str, grid: Path) -> np.ndarray:
        d = self._dir("s1", self.S1_FOR[date])
        vv, vh = (_warp_onto(d / f"{p}.tif", grid)[0] for p in ("VV", "VH"))
        return np.stack([vv, vh])

    def _load(self, sid, item):
        clear_dn, grid = self._l1c(self.CLEAR)
        target = normalise_optical(fill_nan_with_mean(clear_dn))
        if self.mode == "clear":
            return _sample(sid, target, target, normalise_sar(fill_nan_with_mean(self._sar(self.CLEAR, grid))), None)
        cloudy_dn, _ = self._l1c(self.CLOUDY)
        optical = normalise_optical(fill_nan_with_mean(cloudy_dn))
        sar = normalise_sar(fill_nan_with_mean(self._sar(self.CLOUDY, grid)))
        return _sample(sid, optical, target, sar, None)


READERS = {"bigearthnet": BigEarthNet, "terramind": TerraMind, "ssl4eo": SSL4EO, "sen1floods11": Sen1Floods11,
           "sen12mscr_pairs": SEN12MSCRPairs}


class AsClear(Dataset):
    """A real triplet reader's cloud-free images with their SAR, as clear pairs (``as_clear = true`` in a spec).

    The training triplets' targets are more clear landscapes to lay synthetic clouds on; their SAR was acquired
    near the cloudy date, a few days to weeks from the clear one (SEN12MS-CR), which the model tolerates as it
    does in the real triplets.
    """

    kind = "clear"

    def __init__(self, reader: Dataset) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def sample_id(self, index: int) -> str:
        return f"{self.reader.sample_id(index)}:clear"

    def read(self, index: int) -> Sample:
        s = dict(self.reader.read(index))
        s["optical"] = s["target"]
        s["mask"] = np.zeros_like(s["mask"])
        s["id"] = self.sample_id(index)
        return s

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.read(index))
