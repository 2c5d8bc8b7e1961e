"""Samples of the splits written by ``python -m training.build_dataset`` (Cresson et al. 2022, §4), multi-date.

``build_dataset`` writes ``OUT/{train,val,test}.csv``: one row per sample with the patch's grid cell and ground
bounds (``col, row, left, bottom, right, top, crs``) and, for every item of the acquisition layout, the archive
scene it comes from (``<item>_optical``, ``<item>_datetime``, ``<item>_cloud`` and, for items paired with SAR,
``<item>_sar``, ``<item>_sar_datetime``; paths relative to the archive), plus ``OUT/build.json`` naming the archive.
This reader cuts each item's window out of its scene and maps the layout items onto the keys of
:mod:`training.datasets.base` and the registry's temporal contract:

=========  =================================  =============================================================
item       keys                               meaning (paper)
=========  =================================  =============================================================
``t``      ``optical``, ``sar``, ``mask``     the (S1_t, S2_t) pair: the cloudy image to restore, its SAR
``target`` ``target``                         S2_t': the cloud-free image within ±10 days (±5 for msop-cld),
                                              the reference of the loss and of the metrics (§3.1, Figs. 3–6)
``t-1``    ``optical_prev``, ``sar_prev``     the (S1, S2) pair 10–18 days before (MSOP layouts)
``t+1``    ``optical_next``, ``sar_next``     the pair 10–18 days after
=========  =================================  =============================================================

plus the acquisition times in seconds since the epoch ``t``, ``t_prev``, ``t_next``, ``t_target`` (0-d float64,
Python floats once they leave the dataset — what ``gapfill`` takes). So one split feeds ``ssop-unet``
(``model(optical, sar)``), ``msop-unet`` and ``gapfill`` (``model(optical, sar, **temporal)``) alike; the
training loop passes the temporal keys to the models that declare ``temporal_inputs``.

DEM: when the split names the archive's elevation model (column ``dem``, written by ``build_dataset`` for an
archive with ``dem.tif``), every sample also has ``dem`` (1, H, W) float32: the DEM warped **bilinearly** onto the
pixel grid of the ``t`` optical patch (:func:`training.layout.archive.read_dem_patch`, i.e. the
:class:`engine.align.reader.AlignedReader` ``engine run --dem`` uses) and scaled by
:func:`engine.align.dem.normalise_dem` (metres × :data:`engine.align.dem.DEM_SCALE`), so training sees what inference
feeds. Pixels without elevation (only in patches ``build_dataset`` kept below full coverage, i.e. with ``--min-valid`` <
1) take the patch's mean elevation. It is the ``dem`` keyword of the U-Nets built with ``dem=True``, and is cropped,
flipped and rotated with the optical images (:mod:`training.datasets.augment`).

Scaling goes through :mod:`engine.sources.normalise` as for M3R-CR and SEN12MS-CR: optical DN (reflectance × 10⁴) unless
the patch is already reflectance in [0, 1] (``detect_optical_scale``), SAR converted to dB from the units the split
records for its scene (``<item>_sar_units``, written by ``engine finetune``: ``sar_to_db`` as ``engine run``), else
in dB unless detected linear (``detect_sar_units``, then ``linear_to_db``), NaN → patch mean. SAR is resampled
nearest onto the optical patch grid (the paper's S1 and S2 share the 10 m grid; a 10 m S1 next to 3 m optical is
replicated as the official M3R-CR loader does), so every date's arrays are on one grid and crops/flips/rotations
apply identically to all of them (:class:`training.datasets.TrainView`). Cloud mask of ``t``: the scene's ``_mask``
(or ``_scl``) sidecar, else the engine's detector (:func:`engine.align.cloudmask.detect_clouds`). Land cover: unknown
(class 6).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import from_bounds
from torch.utils.data import Dataset

from engine.align.dem import normalise_dem
from engine.config import parse_datetime
from engine.errors import InputError
from engine.refine.samples import Sample
from engine.sources.landcover import UNKNOWN
from engine.sources.masks import cloud_mask_from_bands
from engine.sources.normalise import (
    detect_optical_scale,
    detect_sar_units,
    linear_to_db,
    normalise_optical,
    normalise_sar,
    sar_to_db,
)
from training.datasets.base import fill_nan_with_mean, mask_or_detect, to_tensors
from training.layout.archive import check_dem, is_scl, open_scene, read_dem_patch, scl_cloud, sidecar
from training.layout.split import BUILD_FILE
from training.layout.split import SPLITS as SPLIT_NAMES

# layout item → (optical key, SAR key or None, time key)
ITEM_KEYS = {
    "t": ("optical", "sar", "t"),
    "t-1": ("optical_prev", "sar_prev", "t_prev"),
    "t+1": ("optical_next", "sar_next", "t_next"),
    "target": ("target", None, "t_target"),
}
TIME_KEYS = tuple(v[2] for v in ITEM_KEYS.values())


def _window_read(path: Path, bounds: tuple[float, ...], bands: list[int], shape: tuple[int, int] | None,
                 crs: str | None = None) -> np.ndarray:
    """The ground window ``bounds`` (in ``crs``; default the raster's own) of a raster (1-based ``bands``),
    resampled nearest to ``shape`` if given."""
    return _window_read_grid(path, bounds, bands, shape, crs)[0]


def _window_read_grid(
    path: Path, bounds: tuple[float, ...], bands: list[int], shape: tuple[int, int] | None, crs: str | None = None
) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    """:func:`_window_read` and the pixel grid it read (transform of the window, CRS). A scene in another CRS
    than ``crs`` is read through a warped view (:func:`training.layout.archive.open_scene`)."""
    if not path.is_file():
        raise InputError(f"missing scene {path}")
    with open_scene(path, crs) as ds:
        if max(bands) > ds.count:
            raise InputError(f"{path.name} has {ds.count} bands; asked for band {max(bands)}")
        win = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        out_shape = None if shape is None else (len(bands), *shape)
        data = ds.read(bands, window=win, out_shape=out_shape, resampling=Resampling.nearest, boundless=False)
        return data, ds.window_transform(win), ds.crs


def read_build_info(root: Path) -> dict:
    """``OUT/build.json`` written by ``build_dataset`` ({} for splits written before it existed)."""
    path = root / BUILD_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


class LayoutSplit(Dataset):
    """One split of a ``build_dataset`` output folder, as numpy samples (``read``) or tensors (``[i]``).

    ``root``: the ``--out`` folder of ``build_dataset``; ``split``: train | val | test, or ``csv``: a split file
    (relative to ``root``). ``archive``: the scene archive the CSV paths are relative to (default: the one
    ``build.json`` records; give it when the archive moved). ``bands``: 0-based optical band indices (B, G, R, NIR).
    ``require``: layout items every row must have (e.g. ``["t-1", "t+1"]`` for ``msop-unet``), checked up front.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        archive: str | Path | None = None,
        csv_file: str | Path | None = None,
        bands: Iterable[int] = (0, 1, 2, 3),
        require: Iterable[str] = (),
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        if csv_file is None:
            if split not in SPLIT_NAMES:
                raise InputError(f"split must be one of {', '.join(SPLIT_NAMES)}, not '{split}'")
            path = self.root / f"{split}.csv"
        else:
            path = Path(csv_file)
            path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise InputError(f"split file not found: {path} (write it with python -m training.build_dataset)")
        if archive is None:
            archive = read_build_info(path.parent).get("archive")
            if archive is None:
                raise InputError(f"{path.parent} has no {BUILD_FILE} naming the archive: give 'archive'")
        self.archive = Path(archive)
        if not self.archive.is_dir():
            raise InputError(f"archive folder {self.archive} does not exist")
        self.bands = [int(b) + 1 for b in bands]
        if len(self.bands) != 4 or min(self.bands) < 1:
            raise InputError(f"the models take 4 optical bands (B, G, R, NIR); got 0-based {list(bands)}")
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            self.rows = list(reader)
        if "t_optical" not in fields or "target_optical" not in fields:
            raise InputError(f"{path} is not a build_dataset split (needs items 't' and 'target'); columns: {fields}")
        self.items = [k for k in ITEM_KEYS if f"{k}_optical" in fields]
        missing = [k for k in require if k not in self.items]
        if missing:
            raise InputError(f"{path} has no layout item(s) {', '.join(missing)} (items: {', '.join(self.items)}); "
                             "build the split with a multi-date layout (--layout msop)")
        self.has_dem = "dem" in fields
        self.path = path
        self._cache: dict[int, Sample] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def sample_id(self, index: int) -> str:
        row = self.rows[index]
        return f"{row['t_optical']}@{row['col']},{row['row']}"

    def _optical(self, rel: str, bounds: tuple[float, ...], grid_crs: str | None) -> tuple[np.ndarray, Path, tuple]:
        path = self.archive / rel
        raw, transform, crs = _window_read_grid(path, bounds, self.bands, None, grid_crs)
        optical = normalise_optical(fill_nan_with_mean(raw.astype(np.float32)), detect_optical_scale(raw))
        return optical, path, (crs, transform)

    def _dem(self, rel: str, pixel_grid: tuple, shape: tuple[int, int]) -> np.ndarray:
        """(1, H, W) DEM on the optical patch's pixel grid, bilinear, scaled as engine.align.dem; gaps → patch mean."""
        path = self.archive / rel
        if not path.is_file():
            raise InputError(f"missing DEM {path} (named by {self.path.name})")
        with rasterio.open(path) as ds:
            check_dem(ds, path.name)
            metres = read_dem_patch(ds, *pixel_grid, shape)
        return fill_nan_with_mean(normalise_dem(metres)[None])

    def _sar(self, rel: str, bounds: tuple[float, ...], shape: tuple[int, int], crs: str | None,
             units: str | None = None) -> np.ndarray:
        """VV, VH in [0, 1]: converted to dB from the scene's ``units`` when the split records them (as
        ``engine run`` converts that file), else from the units the patch's values look like."""
        sar = fill_nan_with_mean(_window_read(self.archive / rel, bounds, [1, 2], shape, crs).astype(np.float32))
        if units:
            return normalise_sar(sar_to_db(sar, units))
        if detect_sar_units(sar) == "linear":
            sar = linear_to_db(sar)
        return normalise_sar(sar)

    def _mask(self, scene: Path, bounds: tuple[float, ...], optical01: np.ndarray, crs: str | None) -> np.ndarray:
        side = sidecar(scene)
        if side is None:
            return mask_or_detect(None, optical01)
        with rasterio.open(side) as ms:
            count, nodata = ms.count, ms.nodata
        m = _window_read(side, bounds, list(range(1, count + 1)), optical01.shape[-2:], crs)
        return mask_or_detect(scl_cloud(m) if is_scl(side) else cloud_mask_from_bands(m, nodata), optical01)

    def read(self, index: int) -> Sample:
        """The numpy sample ``index`` (keys: see the module docstring)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        row = self.rows[index]
        try:
            bounds = tuple(float(row[k]) for k in ("left", "bottom", "right", "top"))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{self.path}: row {index + 1} has no valid patch bounds") from None
        crs = row.get("crs") or None  # the grid's CRS: scenes in another one are read reprojected
        sample: Sample = {"id": self.sample_id(index)}
        shape: tuple[int, int] | None = None
        for item in self.items:
            opt_key, sar_key, time_key = ITEM_KEYS[item]
            optical, scene, pixel_grid = self._optical(row[f"{item}_optical"], bounds, crs)
            if shape is None:
                shape = optical.shape[-2:]
            elif optical.shape[-2:] != shape:
                raise InputError(f"{scene.name}: the patch window is {optical.shape[-2:]} pixels, {shape} in "
                                 f"'{row['t_optical']}': every optical scene must share one pixel grid")
            sample[opt_key] = optical
            sample[time_key] = np.float64(parse_datetime(row[f"{item}_datetime"]).timestamp())
            if item == "t":
                sample["mask"] = self._mask(scene, bounds, optical, crs)
                if self.has_dem and row.get("dem"):
                    sample["dem"] = self._dem(row["dem"], pixel_grid, optical.shape[-2:])
            if sar_key is not None and row.get(f"{item}_sar"):
                sample[sar_key] = self._sar(row[f"{item}_sar"], bounds, optical.shape[-2:], crs,
                                            row.get(f"{item}_sar_units") or None)
        if "sar" not in sample:
            raise InputError(f"{self.path}: item 't' has no SAR (the layout must pair 't' with SAR)")
        sample["landcover"] = np.full(sample["optical"].shape[-2:], UNKNOWN, dtype=np.int64)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> Sample:
        return to_tensors(self.read(index))
