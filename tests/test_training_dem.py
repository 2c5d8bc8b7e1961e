"""The Cresson U-Nets' DEM variants train with training/: an archive's dem.tif → build_dataset → LayoutSplit's ``dem``
→ augmentation → the real loop (ssop_unet_dem.toml) → weights the engine runs with ``--dem``.

A 48×48-pixel archive at 5 m (16 cells of 12×12 px), one optical scene every 5 days with a SAR scene a day later,
odd scenes cloudy over the western half, and ``dem.tif``: a tilted plane of elevations (different slopes east and
south) on a 10 m grid offset from the optical grid by a fraction of a pixel (tests/helpers_archive.py). Bilinear
resampling of a plane is exact, so every DEM pixel the reader yields has one known value: its optical pixel
centre's elevation × engine.align.dem.DEM_SCALE. Nearest resampling, another scale, a shifted, flipped or transposed
window all fail that.
"""

from __future__ import annotations

import csv
import json
import shutil
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_archive import (
    DEM_EAST,
    DEM_SOUTH,
    alternating_archive,
    augmented_draws,
    crop_flip_rot,
    d,
    dem_elevation,
    write_dem,
)

from engine.align.dem import DEM_SCALE, open_dem
from engine.errors import EngineError, InputError
from engine.models import build_model
from engine.models import weights as model_weights
from engine.progress import Progress
from training.build_dataset import build
from training.config import load_config
from training.datasets import AugmentConfig, TrainView, build_reader
from training.inputs import check_inputs, input_keys
from training.layout.query import SSOP
from training.layout.split import SplitConfig
from training.train import main as train_main
from training.train import train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training/configs/ssop_unet_dem.toml"
N, PATCH, PX = 48, 12, 5.0
DATES = [d(5, 1) + timedelta(days=5 * k) for k in range(10)]
SPLIT = SplitConfig(block_cells=1, val=0.125, test=0.125, seed=0)
TINY = ["model.overrides.widths=[8, 8, 8]", "model.overrides.dem_width=8"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return alternating_archive(tmp_path_factory.mktemp("dem_archive"), N, DATES, dem=True)


@pytest.fixture(scope="module")
def splits(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dem_splits")
    res = build(archive, out, SSOP, patch_size=PATCH, split=SPLIT)
    assert res.dem is not None and res.dem_dropped == 0
    assert len(res.splits["train"]) >= 40 and res.splits["val"] and res.splits["test"]
    return out


def _copy_without_dem(archive: Path, dest: Path) -> Path:
    return Path(shutil.copytree(archive, dest, ignore=shutil.ignore_patterns("dem.tif")))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _expected_dem(row: dict[str, str]) -> np.ndarray:
    """(1, 12, 12) DEM input expected on a split row's patch: the plane at each optical pixel centre, scaled."""
    left, top = float(row["left"]), float(row["top"])
    yy, xx = np.mgrid[0:PATCH, 0:PATCH]
    return (dem_elevation(left + (xx + 0.5) * PX, top - (yy + 0.5) * PX) * DEM_SCALE)[None].astype(np.float32)


def test_build_dataset_records_the_archive_dem(archive: Path, splits: Path, tmp_path: Path) -> None:
    info = json.loads((splits / "build.json").read_text())
    assert info["dem"] == "dem.tif" and info["dem_dropped"] == 0
    rows = _rows(splits / "train.csv")
    assert rows and all(r["dem"] == "dem.tif" and float(r["dem_valid"]) == 1.0 for r in rows)
    # an archive without dem.tif: no DEM columns, no dem in the samples, build.json says so
    plain = _copy_without_dem(archive, tmp_path / "plain")
    build(plain, tmp_path / "out", SSOP, patch_size=PATCH, split=SPLIT)
    assert "dem" not in _rows(tmp_path / "out" / "train.csv")[0]
    assert json.loads((tmp_path / "out" / "build.json").read_text())["dem"] is None
    assert "dem" not in build_reader({"kind": "layout", "root": str(tmp_path / "out")}).read(0)


def test_layout_split_yields_the_dem_on_the_optical_patch_grid(archive: Path, splits: Path) -> None:
    reader = build_reader({"kind": "layout", "root": str(splits), "split": "train"})
    for i in range(0, len(reader), 7):
        s = reader.read(i)
        dem = s["dem"]
        assert dem.shape == (1, PATCH, PATCH) == (1, *s["optical"].shape[-2:]) and dem.dtype == np.float32
        # every pixel holds its own optical pixel centre's elevation × DEM_SCALE (bilinear, this patch, this scale)
        np.testing.assert_allclose(dem, _expected_dem(reader.rows[i]), rtol=0, atol=2e-7)
    # the gradient points the right way: +0.8 m per metre east, +0.3 m per metre north (5 m pixels)
    np.testing.assert_allclose(np.diff(dem[0], axis=1), DEM_EAST * PX * DEM_SCALE, atol=1e-7)
    np.testing.assert_allclose(np.diff(dem[0], axis=0), DEM_SOUTH * PX * DEM_SCALE, atol=1e-7)
    # and it is exactly what the engine's --dem path feeds the network for that window of the scene
    row = reader.rows[i]
    with ExitStack() as stack, rasterio.open(archive / row["t_optical"]) as ds:
        from engine.align.reader import Grid

        grid = Grid.of(ds)
        dem_input = open_dem(archive / "dem.tif", grid, stack, Progress(), [])
        dem_input.open_reader(stack, grid)
        win = rasterio.windows.from_bounds(*(float(row[k]) for k in ("left", "bottom", "right", "top")),
                                           transform=ds.transform).round_offsets().round_lengths()  # fmt: skip
        engine_dem, ok = dem_input.read(win)
    assert ok.all()
    np.testing.assert_allclose(dem, engine_dem, rtol=0, atol=1e-7)


def test_augmentation_keeps_the_dem_aligned(splits: Path) -> None:
    """Random crops, flips and rot90: the DEM is the same window and transform as the (textured) optical image."""
    reader = build_reader({"kind": "layout", "root": str(splits), "split": "train"})
    c = 8
    view = TrainView([reader], AugmentConfig(crop=c, random_crop=True, flips=True, rot90=True), seed=3)
    seen = set()
    for out, raw, (y, x, k, flip) in augmented_draws(view, reader, c):
        seen.add((y, x, k, flip))
        assert out["dem"].dtype == torch.float32 and out["dem"].shape == (1, c, c)
        np.testing.assert_array_equal(out["dem"].numpy(), crop_flip_rot(raw["dem"], y, x, c, k, flip))
    assert len({(k, f) for *_, k, f in seen}) >= 4 and len({(y, x) for y, x, *_ in seen}) >= 4


def test_partial_and_bad_dems(archive: Path, tmp_path: Path) -> None:
    """Samples the DEM does not fully cover are left out (and counted); a DEM of 2 bands or without any elevation
    over the archive is refused."""
    full = build(archive, tmp_path / "full", SSOP, patch_size=PATCH, split=SPLIT)
    part = _copy_without_dem(archive, tmp_path / "part")
    write_dem(part / "dem.tif", N * PX, nodata_east_of=120.0)  # no elevation in cells col ≥ 2 (x ≥ 120 m)
    res = build(part, tmp_path / "out", SSOP, patch_size=PATCH, split=SPLIT)
    assert {s.col for s in res.samples} == {0, 1}
    assert res.dem_dropped == sum(s.col >= 2 for s in full.samples) > 0
    assert json.loads((tmp_path / "out" / "build.json").read_text())["dem_dropped"] == res.dem_dropped
    cols = {r["col"] for name in ("train", "val", "test") for r in _rows(tmp_path / "out" / f"{name}.csv")}
    assert cols == {"0", "1"}
    write_dem(part / "dem.tif", N * PX, bands=2)
    with pytest.raises(InputError, match="1 band"):
        build(part, tmp_path / "out2", SSOP, patch_size=PATCH, split=SPLIT)
    write_dem(part / "dem.tif", N * PX, nodata_east_of=-1000.0)
    with pytest.raises(InputError, match="no elevation on any patch"):
        build(part, tmp_path / "out3", SSOP, patch_size=PATCH, split=SPLIT)


def test_input_keys_follow_the_dem_flag() -> None:
    assert input_keys(build_model("ssop-unet", widths=(8, 8, 8), dem=True, dem_width=8)) == ["dem"]
    assert input_keys(build_model("ssop-unet", widths=(8, 8, 8))) == []
    msop = build_model("msop-unet", widths=(8, 8, 8), dem=True, dem_width=8)
    assert input_keys(msop) == ["optical_prev", "sar_prev", "optical_next", "sar_next", "dem"]
    check_inputs(msop, "msop-unet", {"optical_prev", "sar_prev", "optical_next", "sar_next", "dem"})
    with pytest.raises(EngineError, match="built with a DEM input"):
        check_inputs(msop, "msop-unet", {"optical_prev", "sar_prev", "optical_next", "sar_next"})


def _overrides(splits: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, f'data.train=[{{kind = "layout", root = "{splits}", split = "train"}}]',
            f'data.val=[{{kind = "layout", root = "{splits}", split = "val"}}]', "data.batch_size=4",
            "data.num_workers=0", "data.cache=true", f'run.out_dir="{out}"', 'run.device="cpu"', "run.threads=1",
            "run.progress=false", "run.ckpt_every_minutes=0", *extra]  # fmt: skip


def test_ssop_unet_dem_trains_and_its_weights_run_in_the_engine(archive: Path, splits: Path, tmp_path: Path) -> None:
    """The shipped recipe with tiny widths: 40 steps lower the L1 loss; the weights run in engine.stream.pipeline with
    the archive's DEM, and in training.evaluate on the split."""
    from engine.config import RunConfig
    from engine.stream.pipeline import run
    from training.evaluate import main as evaluate_main

    out = tmp_path / "run"
    cfg = load_config(RECIPE, _overrides(splits, out, "optim.lr=2e-3", "run.max_steps=40", "run.log_every=1",
                                         "run.val_every=20", "run.ckpt_every_steps=0"))  # fmt: skip
    assert cfg.model.name == "ssop-unet" and cfg.model.overrides["dem"] is True and cfg.loss.kind == "l1"
    summary = train(cfg)  # a model built with dem=True raises without its dem keyword: this run got it
    assert summary["steps"] == 40
    losses = [float(r["loss"]) for r in _rows(out / "train_log.csv")]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert len(_rows(out / "val_log.csv")) == 2

    model, card = model_weights.load(out / "best.safetensors")
    assert card.arch == "ssop-unet" and card.config["dem"] is True and tuple(card.config["widths"]) == (8, 8, 8)
    result = run(RunConfig(optical=archive / "optical/O1.tif", sar=archive / "sar/S1.tif", out=tmp_path / "o.tif",
                           weights=out / "best.safetensors", dem=archive / "dem.tif"))  # fmt: skip
    assert not result.warnings, result.warnings
    with rasterio.open(tmp_path / "o.tif") as ds:
        restored = ds.read().astype(np.float64)
    clear = [rasterio.open(archive / f"optical/O{k}.tif").read().astype(np.float64) for k in (0, 2)]
    assert restored.shape == clear[0].shape
    # O1 is cloudy (+5700 DN) over the west; the trained network brings the whole scene to its clear neighbours'
    # mean (O0, O2: 5 days either side) within 60 DN (measured ~18; an untrained network of this size is ~260 off)
    assert np.abs(restored - (clear[0] + clear[1]) / 2).mean() < 60

    report = tmp_path / "eval.json"
    assert evaluate_main(["--weights", str(out / "last.safetensors"), "--data", str(splits), "--out", str(report)]) == 0
    assert json.loads(report.read_text())["samples"] == len(_rows(splits / "test.csv"))


def test_a_dem_model_without_a_dem_in_the_data_stops_before_the_first_step(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = _copy_without_dem(archive, tmp_path / "plain")
    build(plain, tmp_path / "splits", SSOP, patch_size=PATCH, split=SPLIT)
    out = tmp_path / "run"
    args = ["--config", str(RECIPE)]
    for o in _overrides(tmp_path / "splits", out):
        args += ["--set", o]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: model 'ssop-unet' was built with a DEM input (dem=True) but the data has no DEM: put "
                   "dem.tif (elevation in metres) in the archive and rebuild the splits with python -m "
                   "training.build_dataset, or train without it (model.overrides.dem=false)")
    assert not out.exists()


def test_a_dem_in_another_crs_as_a_vrt_mosaic(archive: Path, tmp_path: Path) -> None:
    """``dem.vrt`` (a GDAL mosaic, here of one file) of a DEM in geographic coordinates: warped onto the UTM patches
    like any other. Within 1 m of the plane (measured 0.16 m: GDAL's approximate reprojection, twice, allows up to
    1/8 pixel of position error); a half-pixel shift would be 2 m off, nearest resampling up to 4 m."""
    from rasterio.crs import CRS
    from rasterio.shutil import copy as gdal_copy
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    utm = write_dem(tmp_path / "utm.tif", N * PX)
    geo = tmp_path / "srtm_4326.tif"
    with rasterio.open(utm) as src:
        dst_crs = CRS.from_epsg(4326)
        transform, w, h = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        profile = {**src.profile, "crs": dst_crs, "transform": transform, "width": w, "height": h}
        with rasterio.open(geo, "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.bilinear)
    part = _copy_without_dem(archive, tmp_path / "geo_archive")
    gdal_copy(geo, part / "dem.vrt", driver="VRT")
    res = build(part, tmp_path / "out", SSOP, patch_size=PATCH, split=SPLIT)
    assert res.dem is not None and res.dem.path == "dem.vrt" and res.samples
    reader = build_reader({"kind": "layout", "root": str(tmp_path / "out"), "split": "train"})
    for i in range(0, len(reader), 9):
        np.testing.assert_allclose(reader.read(i)["dem"], _expected_dem(reader.rows[i]), rtol=0, atol=1.0 * DEM_SCALE)


def test_msop_unet_with_a_dem_trains_on_msop_splits(archive: Path, tmp_path: Path) -> None:
    """msop_unet.toml + model.overrides.dem=true: the loop feeds the extra dates and the DEM together."""
    from training.layout.query import MSOP

    build(archive, tmp_path / "msop", MSOP, patch_size=PATCH, split=SPLIT)
    out = tmp_path / "run"
    require = 'require = ["t-1", "t+1"], split = "'
    overrides = [o.replace('split = "', require) for o in _overrides(tmp_path / "msop", out)]
    cfg = load_config(ROOT / "training/configs/msop_unet.toml",
                      [*overrides, "model.overrides.dem=true", "run.max_steps=3", "run.val_every=3"])  # fmt: skip
    assert train(cfg)["steps"] == 3
    assert np.isfinite(float(_rows(out / "val_log.csv")[0]["psnr"]))
    model, card = model_weights.load(out / "last.safetensors")
    assert card.config["dem"] is True and input_keys(model)[-1] == "dem" and len(input_keys(model)) == 5
