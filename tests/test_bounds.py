"""Engine rules on the optical grid: ``run --bounds`` (a window of the optical image, given in any CRS, snapped to
its pixels) and the optical CRS projected in metres (engine.sources.metric_grid), on synthetic rasters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from helpers_rasters import ORIGIN, WGS84, write_optical, write_sar
from rasterio.warp import transform_bounds

from engine.cli import main
from engine.config import Bounds, RunConfig
from engine.errors import InputError
from engine.sources.metric_grid import metric_crs_problem
from engine.stream.pipeline import run

RES = 3.0


@pytest.fixture()
def scene(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=64, width=80, descriptions=("blue", "green", "red", "nir"))
    with rasterio.open(opt, "r+") as ds:
        ds.update_tags(ACQUISITION_DATETIME="2021-06-04T10:00:00Z")
    return opt, write_sar(tmp_path / "s1.tif", like=opt)


def _run(opt, sar, out, **kw):
    return run(RunConfig(optical=opt, sar=sar, out=out, model="identity", device="cpu", tile=32, overlap=8, **kw))


def test_bounds_in_the_optical_crs_snap_outwards_to_its_pixels(scene, tmp_path):
    opt, sar = scene
    x0, y0 = ORIGIN
    # columns 10.5 … 29.2 and rows 5.1 … 20 of the 80 × 64 image: whole pixels 10 … 29 and 5 … 19
    bounds = f"{x0 + 10.5 * RES},{y0 - 20 * RES},{x0 + 29.2 * RES},{y0 - 5.1 * RES}"
    out = tmp_path / "win.tif"
    assert main(["run", "--optical", str(opt), "--sar", str(sar), "--out", str(out), "--model", "identity",
                 "--device", "cpu", "--tile", "32", "--overlap", "8", "--bounds", bounds]) == 0  # fmt: skip
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert (b.width, b.height) == (20, 15) and b.crs == a.crs
        assert (b.transform.c, b.transform.f) == (x0 + 10 * RES, y0 - 5 * RES)
        assert b.transform.a == a.transform.a and b.transform.e == a.transform.e
        np.testing.assert_array_equal(b.read(), a.read(window=((5, 20), (10, 30))))  # identity: the window itself
        assert b.nodata == a.nodata and b.descriptions == a.descriptions
        assert b.tags()["ACQUISITION_DATETIME"] == "2021-06-04T10:00:00Z"


def test_bounds_in_another_crs_are_transformed_then_clipped_to_the_image(scene, tmp_path):
    opt, sar = scene
    x0, y0 = ORIGIN
    # the left half of the image and 300 m beyond its left and top edges, in WGS 84
    west, south, east, north = transform_bounds("EPSG:32632", WGS84, x0 - 300, y0 - 64 * RES, x0 + 40 * RES,
                                                y0 + 300)  # fmt: skip
    result = _run(opt, sar, tmp_path / "geo.tif", bounds=f"{west},{south},{east},{north},EPSG:4326")
    with rasterio.open(opt) as a, rasterio.open(result.output) as b:
        assert b.height == 64 and 40 <= b.width <= 42  # a WGS 84 box is a little wider than its UTM source
        assert (b.transform.c, b.transform.f) == (a.transform.c, a.transform.f)
        np.testing.assert_array_equal(b.read(), a.read(window=((0, 64), (0, b.width))))


def test_bounds_outside_the_image_or_malformed_are_one_line_errors(scene, tmp_path):
    opt, sar = scene
    x0, y0 = ORIGIN
    with pytest.raises(InputError, match="does not cover any pixel of the optical image"):
        _run(opt, sar, tmp_path / "far.tif", bounds=Bounds(x0 + 1e5, y0, x0 + 2e5, y0 + 1e5))
    assert not (tmp_path / "far.tif").exists()
    for text, message in (("1,2,3", "four numbers"), ("5,0,1,1", "xmin < xmax"), ("0,0,1,1,EPSG:99999999", "CRS")):
        with pytest.raises(InputError, match=message):
            _run(opt, sar, tmp_path / "bad.tif", bounds=text)


def test_bounds_reach_the_json_protocol_and_the_report_grid(scene, tmp_path, capsys):
    """--json's start event gives the window's size; a reference on the optical grid is clipped alike (the report
    needs it on the output's grid)."""
    opt, sar = scene
    ref = write_optical(tmp_path / "ref.tif", height=64, width=80, seed=3)
    x0, y0 = ORIGIN
    out = tmp_path / "o.tif"
    code = main(["run", "--optical", str(opt), "--sar", str(sar), "--out", str(out), "--model", "identity",
                 "--tile", "32", "--overlap", "8", "--reference", str(ref), "--report", str(tmp_path / "rep"),
                 "--bounds", f"{x0},{y0 - 32 * RES},{x0 + 48 * RES},{y0}", "--json"])  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert (start["width"], start["height"]) == (48, 32)
    assert events[-1]["event"] == "result"
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["run_settings"]["bounds"] == f"{x0!r},{y0 - 32 * RES!r},{x0 + 48 * RES!r},{y0!r}"


def test_a_geographic_optical_is_refused_in_one_line(tmp_path):
    opt = write_optical(tmp_path / "geo.tif", crs=WGS84, transform=rasterio.transform.from_origin(9.6, 45.1, 3e-5,
                                                                                                  3e-5))  # fmt: skip
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    with pytest.raises(InputError, match="optical CRS EPSG:4326 is not projected in metres"):
        _run(opt, sar, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()


def test_metric_crs_rule_takes_either_library_s_facts():
    """One rule for the engine (rasterio: "metre") and the plugin (QGIS's encodeUnit: "meters")."""
    assert metric_crs_problem("EPSG:32632", geographic=False, units="metre") is None
    assert metric_crs_problem("EPSG:32632", geographic=False, units="meters") is None
    assert "not projected in metres" in metric_crs_problem("EPSG:4326", geographic=True, units="degrees")
    assert "EPSG:2263 is not projected" in metric_crs_problem("EPSG:2263", geographic=False, units="US survey foot")


def test_bounds_on_a_sentinel2_product_with_its_own_mask(tmp_path):
    """A product's optical (a VRT of its JP2 bands, in memory) is windowed like a file; its SCL mask, on the
    product's full grid, is aligned onto the window; the window's pixels are the whole run's."""
    from helpers_sentinel import write_s2_safe

    from engine.sources.product import Materialised
    from engine.sources.resolve import materialise, resolve_optical

    product = write_s2_safe(tmp_path, zipped=True, size=32)
    with Materialised() as store, rasterio.open(materialise(resolve_optical(product), store)) as ds:
        sar = write_sar(tmp_path / "s1.tif", like=ds.name)
        left, top = ds.transform.c, ds.transform.f
    common = {"optical": product, "sar": sar, "mask": "auto", "only_cloudy": True, "cloud_feather": 0, "tile": 16,
              "overlap": 4, "model": "identity", "device": "cpu"}
    whole = run(RunConfig(out=tmp_path / "whole.tif", **common))
    part = run(RunConfig(out=tmp_path / "part.tif", bounds=f"{left + 80},{top - 250},{left + 250},{top - 40}",
                         **common))  # fmt: skip
    with rasterio.open(whole.output) as a, rasterio.open(part.output) as b:
        assert (b.res, b.width, b.height) == ((10.0, 10.0), 17, 21)
        assert (b.transform.c, b.transform.f) == (left + 80, top - 40)
        np.testing.assert_array_equal(b.read(), a.read(window=((4, 25), (8, 25))))
