"""The DEM input of the Cresson U-Nets (``--dem``, models built with ``dem=True``): aligned bilinearly from another
CRS, scaled ×10⁻⁴ (engine.align.dem), fed as the ``dem`` keyword; missing-DEM error, ignored-DEM warning, partial
coverage, ``models --json``'s ``uses_dem``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_rasters import UTM32N, WGS84, footprint_transform, write_optical, write_raster, write_sar
from rasterio.warp import Resampling, reproject

from engine.cli import main
from engine.config import RunConfig
from engine.errors import InputError
from engine.models import build_model, load, save
from engine.sources import normalise
from engine.stream.pipeline import run

N = 32  # one 32² tile covers the optical image: the output is exactly one forward pass


@pytest.fixture()
def scene(tmp_path: Path) -> dict[str, Path]:
    opt = write_optical(tmp_path / "opt.tif", height=N, width=N, seed=0, nodata=None)
    sar = write_sar(tmp_path / "sar.tif", like=opt, crs=UTM32N, res=3.0, seed=4)
    torch.manual_seed(5)
    model = build_model("ssop-unet", widths=(8, 8, 8, 8, 8, 8), dem=True, dem_width=8, residual=True)
    weights = save(model, tmp_path / "ssop-dem.safetensors")
    return {"optical": opt, "sar": sar, "weights": weights, "dem": write_dem(tmp_path / "dem.tif", like=opt)}


def write_dem(path: Path, like: Path, offset: float = 0.0, nodata_cols: slice | None = None) -> Path:
    """Elevation in metres (a 100–2600 m slope with a hill) in EPSG:4326 at ~20–28 m (the paper's 20 m DEM next to
    3 m optical: nearest and bilinear alignment differ) over the optical footprint."""
    transform, width, height = footprint_transform(like, WGS84, 2.5e-4, margin=5e-4)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    elev = 100.0 + 2000.0 * xx + 500.0 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.02) + offset
    elev = elev.astype(np.float32)[None]
    if nodata_cols is not None:
        elev[:, :, nodata_cols] = -9999.0
    return write_raster(path, elev, crs=WGS84, transform=transform, nodata=-9999.0, dtype="float32")


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def _args(scene: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["run", "--optical", str(scene["optical"]), "--sar", str(scene["sar"]), "--out", str(out),
            "--weights", str(scene["weights"]), "--mode", "raw", "--device", "cpu", "--tile", str(N), "--overlap", "0",
            *extra]  # fmt: skip


def _dem_on_optical_grid(dem: Path, optical: Path) -> np.ndarray:
    """The reference alignment: GDAL bilinear reprojection of the DEM onto the optical grid, in metres."""
    with rasterio.open(optical) as o, rasterio.open(dem) as d:
        out = np.full((1, o.height, o.width), np.nan, dtype=np.float32)
        reproject(rasterio.band(d, 1), out[0], src_nodata=d.nodata, dst_nodata=np.nan, dst_transform=o.transform,
                  dst_crs=o.crs, resampling=Resampling.bilinear)  # fmt: skip
    return out


def test_ssop_unet_with_dem_end_to_end(tmp_path: Path, scene: dict[str, Path]) -> None:
    out = tmp_path / "out.tif"
    assert main(_args(scene, out, "--dem", str(scene["dem"]))) == 0
    with rasterio.open(out) as o, rasterio.open(scene["optical"]) as c:
        assert o.crs == c.crs and o.transform == c.transform and o.shape == c.shape
    got = _read(out).astype(np.float64)

    model, _ = load(scene["weights"])
    metres = _dem_on_optical_grid(scene["dem"], scene["optical"])
    assert np.isfinite(metres).all() and 100 < metres.min() and metres.max() < 3000
    o = torch.from_numpy(normalise.normalise_optical(_read(scene["optical"]), 10000.0))[None]
    s = torch.from_numpy(normalise.normalise_sar(_read(scene["sar"]).astype(np.float32)))[None]

    def dn(dem_input: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(o, s, dem=torch.from_numpy(dem_input)[None])
        return np.rint(y.clamp(0, 1)[0].numpy() * 10000.0)

    assert np.abs(got - dn(metres * 1e-4)).max() <= 1.0  # the DEM in metres × 10⁻⁴, aligned bilinearly
    assert np.abs(got - dn(metres * 1e-3)).max() > 5  # … which the check above tells from another scaling

    # the output depends on the DEM: a DEM 1500 m higher changes it
    higher = write_dem(tmp_path / "higher.tif", like=scene["optical"], offset=1500.0)
    out2 = tmp_path / "out2.tif"
    assert main(_args(scene, out2, "--dem", str(higher))) == 0
    assert np.abs(_read(out2).astype(np.float64) - got).max() > 5
    assert np.abs(_read(out2).astype(np.float64) - dn((metres + 1500.0) * 1e-4)).max() <= 1.0


def test_missing_dem_is_one_line_exit_2(tmp_path: Path, scene: dict[str, Path], capsys) -> None:
    out = tmp_path / "o.tif"
    assert main(_args(scene, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err == ("error: model 'ssop-unet' was built with a DEM input (dem=True): pass --dem FILE (elevation in "
                   "metres)")
    assert not out.exists() and not list(tmp_path.glob(".o.tif*"))


def test_dem_outside_the_scene_is_an_error(tmp_path: Path, scene: dict[str, Path]) -> None:
    far = write_raster(tmp_path / "far.tif", np.full((1, 8, 8), 300.0, dtype=np.float32), crs=WGS84,
                       transform=rasterio.transform.from_origin(20.0, 10.0, 1e-3, 1e-3))  # fmt: skip
    out = tmp_path / "o.tif"
    with pytest.raises(InputError, match=r"DEM \(--dem\) does not overlap"):
        run(RunConfig(optical=scene["optical"], sar=scene["sar"], out=out, weights=scene["weights"], dem=far,
                      device="cpu", tile=N, overlap=0))  # fmt: skip
    assert not out.exists()


def test_pixels_without_elevation_are_left_as_input(tmp_path: Path, scene: dict[str, Path]) -> None:
    with rasterio.open(scene["dem"]) as d:
        half = slice(d.width // 2, None)  # no elevation on the eastern half
    dem = write_dem(tmp_path / "half.tif", like=scene["optical"], nodata_cols=half)
    out = tmp_path / "o.tif"
    result = run(RunConfig(optical=scene["optical"], sar=scene["sar"], out=out, weights=scene["weights"], dem=dem,
                           device="cpu", tile=N, overlap=0))  # fmt: skip
    assert any(w.startswith("DEM (--dem) covers only") for w in result.warnings), result.warnings
    got, cloudy = _read(out), _read(scene["optical"])
    no_dem = ~np.isfinite(_dem_on_optical_grid(dem, scene["optical"])[0])
    assert 0.3 < no_dem.mean() < 0.7
    np.testing.assert_array_equal(got[:, no_dem], cloudy[:, no_dem])
    assert np.abs(got[:, ~no_dem].astype(int) - cloudy[:, ~no_dem].astype(int)).max() > 5  # the network ran


def test_dem_with_a_model_that_takes_none_is_ignored(tmp_path: Path, scene: dict[str, Path]) -> None:
    out = tmp_path / "o.tif"
    result = run(RunConfig(optical=scene["optical"], sar=scene["sar"], out=out, model="identity", dem=scene["dem"],
                           device="cpu", tile=N, overlap=0))  # fmt: skip
    assert result.warnings == ["model 'identity' takes no DEM: --dem ignored"]
    np.testing.assert_array_equal(_read(out), _read(scene["optical"]))


def test_models_json_tells_which_models_take_a_dem(tmp_path: Path, scene: dict[str, Path], capsys) -> None:
    save(build_model("ssop-unet", widths=(4, 4, 4, 4, 4, 4)), tmp_path / "no-dem.safetensors")
    assert main(["models", "--json", "--weights-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    models = {m["name"]: m for m in report["models"]}
    assert all(m["uses_dem"] is False for m in models.values())  # the registry's default configs have dem=False
    weights = {Path(w["file"]).name: w for w in report["weights"]}
    assert weights["ssop-dem.safetensors"]["uses_dem"] is True and weights["no-dem.safetensors"]["uses_dem"] is False


def test_msop_unet_with_dem_gets_every_keyword(tmp_path: Path, scene: dict[str, Path]) -> None:
    """Extra dates and DEM packed together: each must reach its own keyword (swapping prev/next would show)."""
    torch.manual_seed(6)
    weights = save(build_model("msop-unet", widths=(8, 8, 8, 8, 8, 8), dem=True, dem_width=8, residual=True),
                   tmp_path / "msop-dem.safetensors")  # fmt: skip
    opts = {"prev": write_optical(tmp_path / "prev.tif", height=N, width=N, seed=1, nodata=None),
            "next": write_optical(tmp_path / "next.tif", height=N, width=N, seed=2, nodata=None)}  # fmt: skip
    sars = {k: write_sar(tmp_path / f"sar_{k}.tif", like=scene["optical"], crs=UTM32N, res=3.0, seed=s)
            for k, s in (("prev", 7), ("next", 8))}  # fmt: skip
    out = tmp_path / "msop.tif"
    args = [*_args({**scene, "weights": weights}, out), "--dem", str(scene["dem"]),
            "--optical-prev", str(opts["prev"]), "--sar-prev", str(sars["prev"]),
            "--optical-next", str(opts["next"]), "--sar-next", str(sars["next"])]  # fmt: skip
    assert main(args) == 0
    got = _read(out).astype(np.float64)

    def o(path: Path) -> torch.Tensor:
        return torch.from_numpy(normalise.normalise_optical(_read(path), 10000.0))[None]

    def s(path: Path) -> torch.Tensor:
        return torch.from_numpy(normalise.normalise_sar(_read(path).astype(np.float32)))[None]

    model, _ = load(weights)
    dem = torch.from_numpy(_dem_on_optical_grid(scene["dem"], scene["optical"]) * 1e-4)[None]
    with torch.no_grad():
        expected = model(o(scene["optical"]), s(scene["sar"]), optical_prev=o(opts["prev"]), sar_prev=s(sars["prev"]),
                         optical_next=o(opts["next"]), sar_next=s(sars["next"]), dem=dem)  # fmt: skip
        swapped = model(o(scene["optical"]), s(scene["sar"]), optical_prev=o(opts["next"]), sar_prev=s(sars["next"]),
                        optical_next=o(opts["prev"]), sar_next=s(sars["prev"]), dem=dem)  # fmt: skip
    assert np.abs(got - np.rint(expected.clamp(0, 1)[0].numpy() * 10000.0)).max() <= 1.0
    assert np.abs(got - np.rint(swapped.clamp(0, 1)[0].numpy() * 10000.0)).max() > 5
