"""``engine finetune --archive`` on products as they are downloaded (issue 14): Sentinel-2 L2A zips (SCL = the cloud
mask), a Sentinel-1 GRD zip (σ⁰ from radar geometry, linear power) and a HyP3-named split VV/VH pair in another CRS
are indexed, paired and fine-tuned on; a patch's SAR is what ``engine run`` feeds for the same files; a product
engine.sources.resolve refuses stops the run before training, in one line naming the file."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds
from rasterio.windows import from_bounds

from engine.align.reader import AlignedReader, Grid
from engine.align.sar import sar_to_unit
from engine.config import RunConfig
from engine.errors import EngineError, InputError
from engine.progress import Progress
from engine.sources.normalise import NormalisationConfig, normalise_optical
from engine.sources.product import Materialised
from engine.sources.resolve import resolve_run_inputs
from tests.helpers_sentinel import S2_ORIGIN, s2_band_values, write_s1_safe, write_s2_safe
from training.datasets import LayoutSplit
from training.finetune.config import FinetuneConfig
from training.finetune.figure import holdout_figure
from training.finetune.run import finetune
from training.finetune.samples import build_samples, index_archive, write_splits
from training.layout.products import FolderStore, scan_products

SIZE, PATCH = 40, 16  # 40 × 40 10 m pixels per S2 product: 2 × 2 cells of 16 px
CLOUDY, CLEAR = "20240501T101559", "20240511T101559"  # the L2A with SCL cloud columns, the clear one
SPLIT = "S1A_IW_20240510T054512_DVP_RTC30_G_gpuned_ABCD"  # HyP3 name: γ⁰ power ("gp"), a day before CLEAR
FAST = dict(patch_size=PATCH, block_cells=1, batch_size=1, steps=2, minutes=0, val_every=1, threads=1, patience=0)


def _write_split_pair(folder: Path) -> None:
    """VV, VH power (HyP3 RTC naming) in EPSG:4326 over the S2 tile's corner, a little larger."""
    x0, y0 = S2_ORIGIN
    b = transform_bounds("EPSG:32632", "EPSG:4326", x0 - 20, y0 - SIZE * 10 - 20, x0 + SIZE * 10 + 20, y0 + 20)
    n = 60
    rng = np.random.default_rng(0)
    for pol, level in (("VV", 0.05), ("VH", 0.01)):
        with rasterio.open(folder / f"{SPLIT}_{pol}.tif", "w", driver="GTiff", width=n, height=n, count=1,
                           dtype="float32", crs="EPSG:4326", nodata=float("nan"),
                           transform=from_origin(b[0], b[3], (b[2] - b[0]) / n, (b[3] - b[1]) / n)) as ds:
            ds.write((level * (1 + rng.random((1, n, n)))).astype(np.float32))


def product_archive(root: Path) -> Path:
    (root / "optical").mkdir(parents=True)
    (root / "sar").mkdir()
    write_s2_safe(root / "optical", zipped=True, size=SIZE, date=CLOUDY)
    write_s2_safe(root / "optical", zipped=True, size=SIZE, date=CLEAR, clouds=False, seed=1)
    write_s1_safe(root / "sar", zipped=True, lines=100, samples=100)  # covers the S2 tile (tests/test_sources_s1)
    _write_split_pair(root / "sar")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return product_archive(tmp_path_factory.mktemp("products") / "area")


def _real_reader(archive: Path, tmp_path: Path) -> tuple[LayoutSplit, object]:
    cfg = FinetuneConfig(archive=archive, out=tmp_path / "w.safetensors", **FAST)
    idx = index_archive(cfg, Progress())
    samples = build_samples(idx, cfg)
    work = tmp_path / "work"
    work.mkdir()
    paths = write_splits(work, idx, samples, cfg)
    return LayoutSplit(work, csv_file=paths["real"]["train"], archive=archive), idx


def test_product_archive_is_indexed_and_paired(archive: Path, tmp_path: Path) -> None:
    reader, idx = _real_reader(archive, tmp_path)
    try:
        optical = [s for s in idx.scenes if s.kind == "optical"]
        assert [s.label for s in optical] == sorted(p.name for p in (archive / "optical").glob("*.zip"))
        assert [s.when.isoformat()[:19] for s in optical] == ["2024-05-01T10:15:59", "2024-05-11T10:15:59"]
        assert all(s.mask is not None and s.mask.name.endswith("_mask.vrt") for s in optical)  # the SCL, found
        sar = {s.label: s for s in idx.scenes if s.kind == "sar"}
        assert set(sar) == {f"{SPLIT}_VV.tif", write_s1_name()}
        assert {s.units for s in sar.values()} == {"linear"}  # HyP3 "gp" and a GRD's σ⁰: power
        assert sar[f"{SPLIT}_VV.tif"].when.isoformat() == "2024-05-10T05:45:12+00:00"  # from the name
        assert idx.grid.crs == "EPSG:32632" and not any("reprojected" in n for n in idx.notices)  # warped already
        assert len(idx.notices) == 1 and "without terrain correction" in idx.notices[0]  # resolve's GRD warning
        cloudy = {(p.col, p.row): p.cloud for p in idx.patches if p.scene == optical[0]}
        assert cloudy[(0, 1)] == pytest.approx(50.0) and cloudy[(1, 1)] == 0.0  # SCL cloud columns: 8 of 16 px
        assert len(reader) == 1  # the real pair: cloudy 05-01 → clear 05-11, with the GRD of 05-01
        row, sample = reader.rows[0], reader.read(0)
        assert (row["col"], row["row"], row["t_sar_units"]) == ("0", "1", "linear")
        assert CLOUDY in row["t_optical"] and CLEAR in row["target_optical"] and "GRDH" in row["t_sar"]
        want = np.zeros((PATCH, PATCH), bool)
        want[:, :8] = True  # SCL classes 3, 8, 9, 10 in the first four 20 m columns
        assert np.array_equal(sample["mask"][0] > 0, want)
        dn = s2_band_values(SIZE, 0)[:, PATCH:2 * PATCH, :PATCH].astype(np.float32)
        np.testing.assert_allclose(sample["optical"], normalise_optical(dn - 1000.0, 10_000.0), atol=1e-6)
    finally:
        idx.close()
    assert not idx.store.names and not any(Path(row["t_optical"]).parent.exists() for row in reader.rows)


def write_s1_name() -> str:
    from tests.helpers_sentinel import S1_NAME

    return S1_NAME.format(kind="GRDH").replace(".SAFE", ".zip")


def test_grd_patch_sar_is_what_engine_run_feeds(archive: Path, tmp_path: Path) -> None:
    """The real pair's SAR (from the GRD zip) equals engine run's: the same zips resolved by resolve_run_inputs,
    read by the run's AlignedReader on the optical grid, converted with the run's units and normalisation."""
    reader, idx = _real_reader(archive, tmp_path)
    try:
        row, sample = reader.rows[0], reader.read(0)
        s2 = next((archive / "optical").glob(f"*{CLOUDY}*.zip"))
        with Materialised() as store:
            run_cfg, _, _ = resolve_run_inputs(RunConfig(optical=s2, sar=archive / "sar" / write_s1_name(),
                                                         out=tmp_path / "o.tif"), store)
            assert run_cfg.sar_units == "linear"
            with rasterio.open(run_cfg.optical) as opt, rasterio.open(run_cfg.sar) as sar_ds:
                bounds = tuple(float(row[k]) for k in ("left", "bottom", "right", "top"))
                win = from_bounds(*bounds, transform=opt.transform).round_offsets().round_lengths()
                with AlignedReader(sar_ds, Grid.of(opt), (1, 2), run_cfg.sar_resampling) as aligned:
                    fed = sar_to_unit(aligned.read(win), run_cfg.sar_units, NormalisationConfig())
    finally:
        idx.close()
    ok = np.isfinite(fed).all(axis=0)
    assert ok.all() and fed.std() > 0
    np.testing.assert_allclose(sample["sar"], fed, atol=1e-6)


def test_few_step_finetune_on_products(archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run's product VRTs go
    out = tmp_path / "area.safetensors"
    result = finetune(FinetuneConfig(archive=archive, out=out, **FAST))
    assert result.steps == 2 and out.is_file()
    assert result.summary["scenes"] == {"optical": 2, "sar": 2}
    assert result.summary["samples"]["real"]["train"] == 1
    assert not list(scratch.glob("aligncr-archive-*"))  # the VRT folder went with the run
    pytest.importorskip("matplotlib")
    assert (tmp_path / "area.safetensors.finetune" / "holdout.png").stat().st_size > 1000
    again = holdout_figure(out, tmp_path / "again.png")  # its splits name deleted VRTs: rebuilt from the archive
    assert again.stat().st_size > 1000 and not list(scratch.glob("aligncr-*"))


def _zip_garbage(folder: Path) -> Path:
    path = folder / "notes.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a product")
    return path


@pytest.mark.parametrize("case, message", [
    ("slc", "is an SLC"),
    ("l1b", "L1B is in sensor geometry"),
    ("garbage", "holds no Sentinel .SAFE product"),
    ("lone_vv", "without its VH partner"),
])
def test_bad_products_fail_before_training(archive: Path, tmp_path: Path, case: str, message: str) -> None:
    root = tmp_path / "area"
    shutil.copytree(archive, root)
    if case == "slc":
        bad = write_s1_safe(root / "sar", kind="SLC_", lines=20, samples=20, zipped=True)
    elif case == "l1b":
        bad = write_s2_safe(root / "optical", level="L1B", size=20, zipped=True, date="20240506T101559")
    elif case == "garbage":
        bad = _zip_garbage(root / "optical")
    else:
        bad = root / "sar" / f"{SPLIT}_VH.tif"
        bad.unlink()
        bad = bad.with_name(f"{SPLIT}_VV.tif")
    out = tmp_path / "o.safetensors"
    with pytest.raises(EngineError, match=message) as err:
        finetune(FinetuneConfig(archive=root, out=out, **FAST))
    assert "\n" not in str(err.value) and bad.name in str(err.value)
    assert not out.exists() and not out.with_name(out.name + ".finetune").exists()


def test_planetscope_udm2_is_the_cloud_mask(tmp_path: Path) -> None:
    """A PlanetScope AnalyticMS scene brings the UDM2 beside it as its mask; the UDM2 is no scene of its own."""
    root = tmp_path / "area"
    (root / "optical").mkdir(parents=True)
    t = from_origin(600_000, 5_000_000, 3, 3)
    profile = dict(driver="GTiff", width=32, height=32, crs="EPSG:32631", transform=t)
    stem = "20240501_101010_12_24a3"
    with rasterio.open(root / "optical" / f"{stem}_3B_AnalyticMS_SR.tif", "w", count=4, dtype="uint16",
                       **profile) as ds:
        ds.write(np.full((4, 32, 32), 900, np.uint16))
    udm2 = np.zeros((8, 32, 32), np.uint8)
    udm2[5, :, :10] = 1  # cloud band
    with rasterio.open(root / "optical" / f"{stem}_3B_udm2.tif", "w", count=8, dtype="uint8", **profile) as ds:
        ds.write(udm2)
    with FolderStore() as store:
        scenes = scan_products(root, store)
    assert [(s.label, s.mask.name if s.mask else None) for s in scenes] == [
        (f"{stem}_3B_AnalyticMS_SR.tif", f"{stem}_3B_udm2.tif")]
    assert scenes[0].when.isoformat() == "2024-05-01T00:00:00+00:00"  # the date in the Planet name


def test_a_split_pair_alone_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "area"
    (root / "optical").mkdir(parents=True)
    (root / "sar").mkdir()
    with rasterio.open(root / "optical" / "S2_20240501.tif", "w", driver="GTiff", width=8, height=8, count=4,
                       dtype="uint16", crs="EPSG:32631", transform=from_origin(0, 80, 10, 10)) as ds:
        ds.write(np.ones((4, 8, 8), np.uint16))
    (root / "sar" / "S1_20240501_vh.tif").write_bytes(b"")
    with FolderStore() as store, pytest.raises(InputError, match="S1_20240501_vh.tif: a split VH file without its "
                                                                 "VV partner"):
        scan_products(root, store)


def test_superdove_8_band_scene_is_read_by_its_band_descriptions(tmp_path: Path) -> None:
    """An 8-band SuperDove file: blue, green, red, nir picked by description (bands 2, 4, 6, 8), as engine run does."""
    root = tmp_path / "area"
    (root / "optical").mkdir(parents=True)
    names = ("coastal_blue", "blue", "green_i", "green", "yellow", "red", "rededge", "nir")
    data = np.stack([np.full((16, 16), 100 * (k + 1), np.uint16) for k in range(8)])
    path = root / "optical" / "20240501_101010_12_24a3_3B_AnalyticMS_8b.tif"
    with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=8, dtype="uint16", crs="EPSG:32631",
                       transform=from_origin(600_000, 5_000_000, 3, 3)) as ds:
        ds.write(data)
        ds.descriptions = names
    with FolderStore() as store:
        scene = scan_products(root, store)[0]
        assert scene.path.suffix == ".vrt" and scene.label == path.name
        with rasterio.open(scene.path) as ds:
            assert ds.count == 4 and ds.transform == from_origin(600_000, 5_000_000, 3, 3)
            assert [float(ds.read(b)[0, 0]) for b in (1, 2, 3, 4)] == [200.0, 400.0, 600.0, 800.0]
