"""Temporal models (gapfill, msop-unet) through the streaming pipeline and ``engine run``: extra dates aligned from
other CRSs/resolutions, dates from tags or flags, mask handling, the missing-flag error and the exact wiring of
each extra date into the model's keyword arguments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_rasters import (
    ORIGIN,
    UTM32N,
    WGS84,
    footprint_transform,
    optical_transform,
    write_mask,
    write_optical,
    write_raster,
    write_sar,
)
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform

from engine.cli import main
from engine.commands.gapfill import gapfill_rasters
from engine.config import RunConfig
from engine.errors import InputError
from engine.models import build_model, save
from engine.sources import normalise
from engine.stream.pipeline import run

H, W = 40, 48  # optical pixels (3 m); the 6 m "prev" grid is 20 × 24
T_PREV = datetime(2021, 6, 1, 10, 30, tzinfo=UTC)
T = T_PREV + timedelta(days=3, hours=7)  # not the midpoint: weight ≈ 0.195 on the next image
T_NEXT = T_PREV + timedelta(days=17)


def _days(t: datetime) -> float:
    return (t - T_PREV).total_seconds() / 86400


def _tag(path: Path, when: datetime) -> Path:
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME=when.strftime("%Y:%m:%d %H:%M:%S"))
    return path


def _fine_wgs84(path: Path, truth: np.ndarray, like: Path, res: float = 1e-5) -> Path:
    """``truth`` (bands, H, W) given on the optical grid, written in EPSG:4326 at ~1 m: every fine pixel takes the
    value of the optical pixel its centre falls in, so a nearest warp back onto the optical grid is exact."""
    transform, width, height = footprint_transform(like, WGS84, res, margin=5 * res)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    lon, lat = transform * (cols.ravel(), rows.ravel())
    x, y = warp_transform(WGS84, UTM32N, lon, lat)
    inv = ~optical_transform()
    c, r = inv * (np.asarray(x), np.asarray(y))
    c, r = np.floor(c).astype(int), np.floor(r).astype(int)
    inside = (c >= 0) & (c < truth.shape[2]) & (r >= 0) & (r < truth.shape[1])
    data = np.zeros((truth.shape[0], height * width), dtype=truth.dtype)  # 0 = nodata outside the optical extent
    data[:, inside] = truth[:, r[inside], c[inside]]
    return write_raster(path, data.reshape(truth.shape[0], height, width), crs=WGS84, transform=transform, nodata=0)


@pytest.fixture()
def linear_scene(tmp_path: Path) -> dict:
    """x(t) = A + B·t per pixel (DN, t in days). The cloudy image at T is noise; prev (T_PREV) is on a 6 m UTM
    grid, next (T_NEXT) in EPSG:4326 at ~1 m; the SAR covers only the right two thirds. Dates are in the tags."""
    rng = np.random.default_rng(7)
    a6 = rng.uniform(1500, 5000, (4, H // 2, W // 2))
    b6 = rng.uniform(-80, 80, (4, H // 2, W // 2))
    a, b = (np.repeat(np.repeat(v, 2, axis=1), 2, axis=2) for v in (a6, b6))
    truth = a + b * _days(T)
    cloudy = rng.integers(6000, 9000, (4, H, W)).astype(np.uint16)
    opt = _tag(write_optical(tmp_path / "cloudy.tif", cloudy), T)
    prev = np.rint(a6 + b6 * _days(T_PREV)).astype(np.uint16)
    prev_path = _tag(write_optical(tmp_path / "prev.tif", prev, transform=optical_transform(6.0)), T_PREV)
    nxt = np.rint(a + b * _days(T_NEXT)).astype(np.uint16)
    next_path = _tag(_fine_wgs84(tmp_path / "next.tif", nxt, like=opt), T_NEXT)
    sar_data = np.stack([np.full((H, W), -10.0), np.full((H, W), -17.0)]).astype(np.float32)
    sar_data[:, :, : W // 3] = np.nan
    sar = write_sar(tmp_path / "sar.tif", sar_data, crs=UTM32N, transform=optical_transform(3.0))
    return {"optical": opt, "sar": sar, "prev": prev_path, "next": next_path, "truth": truth, "cloudy": cloudy}


def _gapfill_config(scene: dict, out: Path, **kw) -> RunConfig:
    return RunConfig(optical=scene["optical"], sar=scene["sar"], out=out, model="gapfill", mode="raw", device="cpu",
                     tile=32, overlap=8, chunk=32, optical_prev=scene["prev"], optical_next=scene["next"],
                     **kw)  # fmt: skip


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.mark.parametrize("prefetch", [True, False])
def test_gapfill_exact_on_linear_data_across_crs(tmp_path: Path, linear_scene: dict, prefetch: bool) -> None:
    from engine.stream.accel import AccelConfig

    out = tmp_path / "filled.tif"
    result = run(_gapfill_config(linear_scene, out), accel=AccelConfig(prefetch=prefetch))
    got = _read(out).astype(np.float64)
    # rounding the prev/next files and the output: at most 1 DN from the true x(T) — everywhere, SAR or not
    assert np.abs(got - linear_scene["truth"]).max() <= 1.0
    # gapfill takes no SAR: the (partial) one given is ignored, not opened, so it cannot limit the fill
    assert result.model == "gapfill" and result.warnings == ["model 'gapfill' takes no SAR: --sar ignored"]
    assert not result.sar_used and result.sar_coverage == 0.0 and result.sar_units == "none"
    with rasterio.open(out) as o, rasterio.open(linear_scene["optical"]) as c:
        assert o.crs == c.crs and o.transform == c.transform and o.dtypes == c.dtypes
    # the file-level command (float64 maths on DN) agrees
    ref = gapfill_rasters(linear_scene["optical"], linear_scene["prev"], linear_scene["next"], tmp_path / "cmd.tif")
    assert ref["weight"] == pytest.approx((T - T_PREV) / (T_NEXT - T_PREV))
    assert np.abs(_read(tmp_path / "cmd.tif").astype(int) - got.astype(int)).max() <= 1


def test_gapfill_with_mask_changes_only_cloudy_pixels(tmp_path: Path, linear_scene: dict) -> None:
    mask = write_mask(tmp_path / "mask.tif", like=linear_scene["optical"], crs=WGS84, res=1e-5, cloud_fraction=0.4)
    out = tmp_path / "filled.tif"
    result = run(_gapfill_config(linear_scene, out, mask=mask))
    got = _read(out)
    with rasterio.open(linear_scene["optical"]) as ds, rasterio.open(mask) as m:
        with WarpedVRT(m, crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height) as vrt:
            cloud = vrt.read(1).astype(bool)  # the mask on the optical grid, nearest (as the pipeline reads it)
    assert 0.25 < cloud.mean() < 0.55 and result.cloud_fraction == pytest.approx(cloud.mean(), abs=1e-6)
    np.testing.assert_array_equal(got[:, ~cloud], linear_scene["cloudy"][:, ~cloud])  # clear pixels: bit for bit
    assert np.abs(got[:, cloud].astype(float) - linear_scene["truth"][:, cloud]).max() <= 1.0


def test_gapfill_leaves_pixels_the_next_image_misses(tmp_path: Path, linear_scene: dict) -> None:
    with rasterio.open(linear_scene["next"]) as ds:
        data, profile = ds.read(), ds.profile
    data[:, : data.shape[1] // 2] = 0  # nodata on the northern half
    with rasterio.open(linear_scene["next"], "w", **profile) as ds:
        ds.write(data)
    _tag(linear_scene["next"], T_NEXT)
    out = tmp_path / "filled.tif"
    result = run(_gapfill_config(linear_scene, out))
    got = _read(out)
    assert any("optical image at t+1 (--optical-next) covers only" in w for w in result.warnings)
    top, bottom = slice(0, H // 2 - 2), slice(H // 2 + 2, H)
    np.testing.assert_array_equal(got[:, top], linear_scene["cloudy"][:, top])
    assert np.abs(got[:, bottom].astype(float) - linear_scene["truth"][:, bottom]).max() <= 1.0


def test_command_line_dates_override_tags(tmp_path: Path, linear_scene: dict) -> None:
    _tag(linear_scene["optical"], T_NEXT - timedelta(days=1))  # a wrong tag: weight would be ~0.94
    out = tmp_path / "filled.tif"
    args = ["run", "--optical", str(linear_scene["optical"]), "--sar", str(linear_scene["sar"]), "--out", str(out),
            "--model", "gapfill", "--device", "cpu", "--tile", "32", "--overlap", "8",
            "--optical-prev", str(linear_scene["prev"]), "--optical-next", str(linear_scene["next"]),
            "--date", T.isoformat()]  # fmt: skip
    assert main(args) == 0
    assert np.abs(_read(out).astype(float) - linear_scene["truth"]).max() <= 1.0
    # every date overridable; a shifted --date-prev/--date-next pair changes the weight (and the result)
    out2 = tmp_path / "shifted.tif"
    shifted = [*args[:6], str(out2), *args[7:], "--date-prev", (T_PREV - timedelta(days=10)).isoformat(),
               "--date-next", (T_NEXT + timedelta(days=10)).isoformat()]  # fmt: skip
    assert main(shifted) == 0
    assert np.abs(_read(out2).astype(float) - linear_scene["truth"]).max() > 50


def test_a_date_given_on_the_command_line_is_written_into_the_output(tmp_path: Path, linear_scene: dict) -> None:
    from engine.sources.dates import read_acquisition_date

    with rasterio.open(linear_scene["optical"], "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="")  # the cloudy image has no date of its own
    out = tmp_path / "filled.tif"
    run(_gapfill_config(linear_scene, out, date=T.isoformat()))
    assert read_acquisition_date(out) == T  # so the filled image can be the t−1 or t+1 of the next gap-fill
    tagged = tmp_path / "tagged.tif"
    _tag(linear_scene["optical"], T)
    run(_gapfill_config(linear_scene, tagged, date=(T + timedelta(hours=1)).isoformat()))
    with rasterio.open(tagged) as ds:  # the file's own date is kept as it was, not overwritten
        assert "ACQUISITIONDATETIME" not in ds.tags(ns="IMAGERY")
        assert ds.tags()["TIFFTAG_DATETIME"] == T.strftime("%Y:%m:%d %H:%M:%S")


def test_gapfill_without_any_date_names_the_flag(tmp_path: Path, linear_scene: dict) -> None:
    with rasterio.open(linear_scene["prev"], "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="")
    out = tmp_path / "o.tif"
    with pytest.raises(InputError, match="--date-prev"):
        run(_gapfill_config(linear_scene, out))
    assert not out.exists()
    run(_gapfill_config(linear_scene, out, date_prev=T_PREV.isoformat()))
    assert np.abs(_read(out).astype(float) - linear_scene["truth"]).max() <= 1.0


@pytest.mark.parametrize(
    ("model", "given", "missing"),
    [
        ("gapfill", ["--optical-prev"], "--optical-next"),
        ("msop-unet", ["--optical-prev", "--optical-next", "--sar-prev"], "--sar-next"),
        ("msop-unet", [], "--optical-prev, --sar-prev, --optical-next, --sar-next"),
    ],
)
def test_missing_extra_date_is_one_line_exit_2(tmp_path: Path, linear_scene: dict, capsys, model, given, missing):
    out = tmp_path / "o.tif"
    files = {"--optical-prev": linear_scene["prev"], "--optical-next": linear_scene["next"],
             "--sar-prev": linear_scene["sar"], "--sar-next": linear_scene["sar"]}  # fmt: skip
    args = ["run", "--optical", str(linear_scene["optical"]), "--sar", str(linear_scene["sar"]), "--out", str(out),
            "--model", model, "--device", "cpu"]  # fmt: skip
    for flag in given:
        args += [flag, str(files[flag])]
    if model == "msop-unet":
        args += ["--weights", str(_small_msop(tmp_path))]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: model '{model}' needs --optical-prev")
    assert err.endswith(f"missing {missing}")
    assert not out.exists() and not list(tmp_path.glob(".o.tif*"))


def test_non_temporal_model_warns_extras_ignored(tmp_path: Path, linear_scene: dict) -> None:
    out = tmp_path / "o.tif"
    config = RunConfig(optical=linear_scene["optical"], sar=linear_scene["sar"], out=out, model="identity",
                       device="cpu", tile=32, overlap=8, optical_prev=linear_scene["prev"], date=T)  # fmt: skip
    result = run(config)
    assert result.warnings[-1] == "model 'identity' is not temporal: --optical-prev, --date ignored"
    np.testing.assert_array_equal(_read(out), linear_scene["cloudy"])


def _small_msop(tmp_path: Path) -> Path:
    torch.manual_seed(3)
    model = build_model("msop-unet", widths=(8, 8, 8, 8, 8, 8), residual=True)  # tiny; residual: not all zeros
    return save(model, tmp_path / "msop-small.safetensors")


def test_msop_unet_cli_end_to_end_and_wiring(tmp_path: Path) -> None:
    """One 32² tile covering the image: the output must be the model applied to exactly the right input per
    keyword (a swap of prev/next, or of an optical with a SAR, would not match)."""
    n = 32
    opts = {k: write_optical(tmp_path / f"opt_{k}.tif", height=n, width=n, seed=s, nodata=None)
            for k, s in (("t", 0), ("prev", 1), ("next", 2))}  # fmt: skip
    sars = {k: write_sar(tmp_path / f"sar_{k}.tif", like=opts["t"], crs=UTM32N, res=3.0, seed=s)
            for k, s in (("t", 4), ("prev", 5), ("next", 6))}  # fmt: skip
    weights = _small_msop(tmp_path)
    out = tmp_path / "msop.tif"
    args = ["run", "--optical", str(opts["t"]), "--sar", str(sars["t"]), "--out", str(out), "--model", "msop-unet",
            "--weights", str(weights), "--mode", "raw", "--device", "cpu", "--tile", str(n), "--overlap", "0",
            "--optical-prev", str(opts["prev"]), "--sar-prev", str(sars["prev"]),
            "--optical-next", str(opts["next"]), "--sar-next", str(sars["next"])]  # fmt: skip
    assert main(args) == 0
    with rasterio.open(out) as o, rasterio.open(opts["t"]) as c:
        assert o.crs == c.crs and o.transform == c.transform and o.shape == c.shape
        got = o.read().astype(np.float64)

    def tensors(k: str) -> tuple[torch.Tensor, torch.Tensor]:
        o_ = normalise.normalise_optical(_read(opts[k]), 10000.0)
        s_ = normalise.normalise_sar(_read(sars[k]).astype(np.float32))
        return torch.from_numpy(o_)[None], torch.from_numpy(s_)[None]

    from engine.models import load

    model, _ = load(weights)
    (o_t, s_t), (o_p, s_p), (o_n, s_n) = tensors("t"), tensors("prev"), tensors("next")
    with torch.no_grad():
        expected = model(o_t, s_t, optical_prev=o_p, sar_prev=s_p, optical_next=o_n, sar_next=s_n)
        swapped = model(o_t, s_t, optical_prev=o_n, sar_prev=s_n, optical_next=o_p, sar_next=s_p)
    expected_dn = np.rint(expected.clamp(0, 1)[0].numpy() * 10000.0)
    swapped_dn = np.rint(swapped.clamp(0, 1)[0].numpy() * 10000.0)
    assert np.abs(got - expected_dn).max() <= 1.0
    assert np.abs(got - swapped_dn).max() > 20  # the check above can tell the dates apart
    assert np.abs(got - _read(opts["t"])).max() > 20  # the network did something


def test_models_json_lists_temporal_models(capsys) -> None:
    import json

    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    assert models["msop-unet"]["temporal_inputs"] == ["prev", "next"] and models["msop-unet"]["uses_sar"]
    assert models["gapfill"]["temporal_inputs"] == ["prev", "next"] and models["gapfill"]["needs_dates"]
    assert not models["gapfill"]["uses_sar"] and not models["gapfill"]["needs_weights"]
    assert models["aligncr-lite"]["temporal_inputs"] == [] and not models["identity"]["needs_dates"]


# --- models without SAR input (gapfill): --sar is optional -------------------------------------------------------


def test_cli_gapfill_without_sar_end_to_end(tmp_path: Path, linear_scene: dict, capsys) -> None:
    import json

    out = tmp_path / "filled.tif"
    args = ["run", "--optical", str(linear_scene["optical"]), "--out", str(out), "--model", "gapfill",
            "--device", "cpu", "--tile", "32", "--overlap", "8", "--optical-prev", str(linear_scene["prev"]),
            "--optical-next", str(linear_scene["next"]), "--report", str(tmp_path / "report"),
            "--progress-json"]  # fmt: skip
    assert main(args) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not [e for e in events if e["event"] == "warning"]  # nothing about SAR coverage
    (result,) = [e for e in events if e["event"] == "result"]
    assert result["model"] == "gapfill" and result["sar_used"] is False
    assert np.abs(_read(out).astype(float) - linear_scene["truth"]).max() <= 1.0
    settings = json.loads((tmp_path / "report" / "report.json").read_text())["run_settings"]
    assert settings["sar"] is None and settings["sar_used"] is False
    assert settings["model_percent"] == result["model_percent"] == 100.0  # no mask: gapfill fills every pixel
    assert settings["network_tiles"] == settings["total_tiles"] > 0


def test_gapfill_ignores_a_sar_that_does_not_overlap(tmp_path: Path, linear_scene: dict) -> None:
    far = write_sar(tmp_path / "far.tif", np.full((2, 8, 8), -12.0, dtype=np.float32), crs=UTM32N,
                    transform=optical_transform(3.0, (ORIGIN[0] + 400_000.0, ORIGIN[1])))  # fmt: skip
    out = tmp_path / "filled.tif"
    result = run(_gapfill_config({**linear_scene, "sar": far}, out))
    assert result.warnings == ["model 'gapfill' takes no SAR: --sar ignored"] and not result.sar_used
    assert np.abs(_read(out).astype(float) - linear_scene["truth"]).max() <= 1.0


@pytest.mark.parametrize("model", ["aligncr-lite", "identity"])
def test_sar_model_without_sar_is_one_line_exit_2(tmp_path: Path, linear_scene: dict, capsys, model: str) -> None:
    out = tmp_path / "o.tif"
    args = ["run", "--optical", str(linear_scene["optical"]), "--out", str(out), "--model", model, "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: model '{model}' needs --sar"), err
    assert not out.exists() and not list(tmp_path.glob(".o.tif*"))
    with pytest.raises(InputError, match="needs --sar"):  # a weights file's card tells the model too
        run(RunConfig(optical=linear_scene["optical"], out=out, weights=_small_msop(tmp_path),
                      optical_prev=linear_scene["prev"], optical_next=linear_scene["next"],
                      sar_prev=linear_scene["sar"], sar_next=linear_scene["sar"]))  # fmt: skip
    assert not out.exists()
