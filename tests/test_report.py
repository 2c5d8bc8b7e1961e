"""write_report / evaluate CLI on tiny synthetic rasters, and on the shared M3R-CR sample when present."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from engine.cli import main
from engine.errors import Cancelled, InputError
from engine.outputs.metrics import (
    CEILING_LABEL,
    Gamut,
    band_r,
    clear_gamut,
    date_gap_ceiling,
    mae,
    ndvi_r,
    off_gamut_share,
    psnr,
    sam_degrees,
    ssim,
)
from engine.outputs.ndvi import NDVI_NODATA
from engine.progress import Progress
from engine.refine.baselines import DEFAULT_HALO
from engine.report import write_report
from engine.report.schema import SchemaError, load_schema, validate_report

H, W = 60, 72
ORIGIN = (500000.0, 3000000.0)


def _write(path: Path, data: np.ndarray, *, res: float = 3.0, origin=ORIGIN, nodata=None, crs="EPSG:32646") -> Path:
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=str(data.dtype),
        crs=crs, transform=from_origin(origin[0], origin[1], res, res), nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


class Scene:
    """Cloudy DN input, float-reflectance prediction, DN reference, 10 m land cover, binary mask."""

    def __init__(self, root: Path):
        rng = np.random.default_rng(7)
        yy, xx = np.mgrid[0:H, 0:W]
        ref = np.stack([800 + 5 * yy, 900 + 4 * xx, 700 + 3 * (xx + yy), 2500 + 20 * xx]).astype(np.float64)
        ref += rng.normal(0, 40, ref.shape)
        self.cloud = (xx - 30) ** 2 + (yy - 25) ** 2 < 18**2
        cloudy = ref.copy()
        cloudy[:, self.cloud] = 6000 + rng.normal(0, 100, (4, int(self.cloud.sum())))
        self.ref = np.clip(ref, 1, 10000).astype(np.uint16)
        self.cloudy = np.clip(cloudy, 1, 10000).astype(np.uint16)
        self.cloudy[:, :4, :6] = 0  # optical nodata corner
        pred = ref / 10000 + rng.normal(0, 0.01, ref.shape)  # a decent "declouded" result, in reflectance
        self.pred = np.clip(pred, 0, 1).astype(np.float32)
        self.valid = ~((yy < 4) & (xx < 6))
        # land cover on its own 10 m grid covering the scene
        lc = np.full((1, 18, 22), 80, np.uint8)
        lc[:, :, :11] = 10  # forest west of x = 110 m, water east of it
        self.paths = {
            "optical": _write(root / "cloudy.tif", self.cloudy, nodata=0),
            "prediction": _write(root / "pred.tif", self.pred),
            "reference": _write(root / "ref.tif", self.ref, nodata=0),
            "landcover": _write(root / "lc.tif", lc, res=10.0),
            "mask": _write(root / "mask.tif", self.cloud[None].astype(np.uint8)),
        }

    def norm(self, name: str) -> np.ndarray:
        arr = {"optical": self.cloudy / 10000, "reference": self.ref / 10000, "prediction": self.pred}[name]
        return np.clip(arr.astype(np.float64), 0, 1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    return Scene(tmp_path_factory.mktemp("scene"))


@pytest.fixture(scope="module")
def full_report(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    p = scene.paths
    report = write_report(
        p["optical"], p["prediction"], out, reference=p["reference"], landcover=p["landcover"], mask=p["mask"],
        model_card={"name": "test-model", "path": Path("/x/y.safetensors")}, run_settings={"tile": (1, 2)},
        tile_size=32,
    )
    return report, out


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])


def test_metrics_match_direct_computation(scene, full_report):
    report, _ = full_report
    m = report["metrics"]
    v = scene.valid
    pred, ref, cloudy = scene.norm("prediction"), scene.norm("reference"), scene.norm("optical")
    out, cl = m["output"], m["cloudy_input"]
    assert out["overall"]["pixels"] == int(v.sum())
    assert out["overall"]["mae"] == pytest.approx(mae(pred, ref, v), rel=1e-6)
    assert out["overall"]["psnr"] == pytest.approx(psnr(pred, ref, mask=v), rel=1e-6)
    assert out["inside_cloud"]["sam"] == pytest.approx(sam_degrees(pred, ref, v & scene.cloud), rel=1e-5)
    assert cl["outside_cloud"]["mae"] == pytest.approx(mae(cloudy, ref, v & ~scene.cloud), rel=1e-6)
    assert cl["inside_cloud"]["psnr"] == pytest.approx(psnr(cloudy, ref, mask=v & scene.cloud), rel=1e-6)
    # The declouded output must beat the cloudy input inside clouds, by a lot.
    assert out["inside_cloud"]["psnr"] > cl["inside_cloud"]["psnr"] + 10
    assert out["ndvi"]["rmse"] < cl["ndvi"]["rmse"]
    assert sum(b["tiles"] for b in out["cloud_cover_bins"]) == out["tiles"] == 3 * 2  # 60×72 in 32 px tiles
    cover = report["scene"]["cloud_mask"]
    assert cover["source"] == "given"
    assert cover["cloud_cover_percent"] == pytest.approx(100 * (scene.cloud & v).sum() / v.sum())


def test_band_r_ndvi_r_off_gamut_and_ceiling_match_the_whole_image(scene, full_report):
    """The streamed report's new numbers equal the whole-image functions on the same pixels (every clear pixel of
    this small scene is in the first pass's sample, so the gamut is the whole image's)."""
    report, _ = full_report
    m = report["metrics"]
    v = scene.valid
    cloudy = np.where(v, scene.norm("optical"), np.nan)
    ref = scene.norm("reference")
    whole = clear_gamut(cloudy, scene.cloud)
    g = report["settings"]["off_gamut"]
    np.testing.assert_allclose(g["low"], whole.low, rtol=1e-6)
    np.testing.assert_allclose(g["high"], whole.high, rtol=1e-6)
    gamut = Gamut(np.array(g["low"]), np.array(g["high"]))
    images = {"output": scene.norm("prediction"), "cloudy_input": cloudy}
    for name, img in images.items():
        for part, sel in (("inside_cloud", v & scene.cloud), ("outside_cloud", v & ~scene.cloud), ("overall", v)):
            block = m[name][part]
            assert block["band_r"] == pytest.approx(band_r(img, ref, sel), rel=1e-5, abs=1e-6), (name, part)
            assert block["ndvi_r"] == pytest.approx(ndvi_r(img, ref, sel), rel=1e-5, abs=1e-6), (name, part)
            assert block["off_gamut"] == pytest.approx(off_gamut_share(img, gamut, sel)), (name, part)
            assert block["reference_off_gamut"] == pytest.approx(off_gamut_share(ref, gamut, sel)), (name, part)
    inside = m["output"]["inside_cloud"]
    # a decent output (noise 0.01 on the truth): structure kept, a few noisy pixels past the gamut, the truth fewer
    assert inside["band_r"] > 0.5 and inside["reference_off_gamut"] < inside["off_gamut"] < 0.2
    assert m["cloudy_input"]["inside_cloud"]["off_gamut"] == 1.0  # the cloud itself is never in the gamut
    assert m["date_gap_ceiling_db"] == pytest.approx(date_gap_ceiling(cloudy, ref, scene.cloud), rel=1e-6)
    assert m["date_gap_ceiling_db"] == m["baseline_margin"]["clear_pixels_db"]


def test_streaming_report_equals_single_tile(scene, full_report, tmp_path):
    p = scene.paths
    single = write_report(p["optical"], p["prediction"], tmp_path, reference=p["reference"], mask=p["mask"],
                          tile_size=max(H, W))
    tiled = full_report[0]["metrics"]["output"]
    whole = single["metrics"]["output"]
    for part in ("overall", "inside_cloud", "outside_cloud"):
        assert tiled[part] == pytest.approx(whole[part], rel=1e-9)
    assert tiled["ndvi"]["confusion"] == whole["ndvi"]["confusion"]
    # No nodata in the reference's SSIM windows far from the corner: whole-image SSIM ≈ scikit-image's.
    assert whole["overall"]["ssim"] == pytest.approx(
        ssim(scene.norm("prediction"), scene.norm("reference")), abs=0.02
    )


def test_layers_are_georeferenced_and_correct(scene, full_report):
    report, out = full_report
    assert set(report["layers"]) == {"cloud_mask", "change_magnitude", "ndvi_input", "ndvi_output", "ndvi_reference"}
    with rasterio.open(scene.paths["optical"]) as src:
        crs, transform = src.crs, src.transform
    arrays = {}
    for name, fname in report["layers"].items():
        with rasterio.open(out / fname) as ds:
            assert ds.crs == crs and ds.transform == transform and (ds.height, ds.width) == (H, W)
            arrays[name] = ds.read(1)
    v = scene.valid
    assert np.array_equal(arrays["cloud_mask"][v], scene.cloud[v].astype(np.uint8))
    assert np.all(arrays["cloud_mask"][~v] == 255)
    change = np.abs(scene.norm("prediction") - scene.norm("optical")).mean(axis=0)
    np.testing.assert_allclose(arrays["change_magnitude"][v], change[v], rtol=1e-5, atol=1e-6)
    red, nir = scene.pred[2].astype(np.float64), scene.pred[3].astype(np.float64)
    np.testing.assert_allclose(arrays["ndvi_output"][v], ((nir - red) / (nir + red))[v], rtol=1e-5)
    assert np.all(arrays["ndvi_input"][~v] == NDVI_NODATA)
    assert not list(out.glob(".*partial*"))


def test_landcover_is_reprojected_from_its_own_grid(scene, full_report):
    report, _ = full_report
    classes = report["scene"]["landcover"]["classes"]
    v = scene.valid
    # 3 m pixel centres x = 1.5 + 3 i; forest where the centre falls left of 110 m (cells 0…10 are forest).
    forest_cols = np.arange(W)[1.5 + 3 * np.arange(W) < 110]
    expected_forest = int(v[:, forest_cols].sum())
    assert classes["forest"]["pixels"] == expected_forest
    assert classes["water"]["pixels"] == int(v.sum()) - expected_forest
    assert report["metrics"]["output"]["per_class"]["urban"] == {"pixels": 0, "mae": None, "sam": None}
    assert report["metrics"]["output"]["per_class"]["water"]["mae"] is not None


def test_json_validates_and_schema_catches_errors(full_report):
    report, out = full_report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert on_disk["schema_version"] == "1.3"
    assert on_disk["model_card"]["path"] == "/x/y.safetensors" and on_disk["run_settings"]["tile"] == [1, 2]
    validate_report(on_disk)
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(on_disk, load_schema())
    broken = json.loads(json.dumps(on_disk))
    broken["metrics"]["output"]["overall"]["mae"] = -1.0
    del broken["scene"]["pixels"]
    with pytest.raises(SchemaError, match="mae") as err:
        validate_report(broken)
    assert "pixels" in str(err.value)
    del broken["metrics"]["output"]["inside_cloud"]["band_r"]
    broken["metrics"]["cloudy_input"]["outside_cloud"]["off_gamut"] = 1.5
    with pytest.raises(SchemaError, match="band_r") as err:
        validate_report(broken)
    assert "off_gamut" in str(err.value)


def test_html_is_self_contained_and_embeds_every_plot(full_report):
    report, out = full_report
    text = (out / "report.html").read_text(encoding="utf-8")
    parser = _Imgs()
    parser.feed(text)
    parser.close()
    assert set(report["plots"]) == {
        "quicklooks", "mask_and_change", "ndvi_maps", "ndvi_scatter", "per_class", "cloud_cover_bins"
    }
    assert len(parser.srcs) == len(report["plots"])
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.external == []
    assert "test-model" in text and "cloudy input" in text
    assert CEILING_LABEL in text and "off-gamut share of the reference itself" in text and "NDVI r" in text


def test_without_reference_or_mask(scene, tmp_path):
    p = scene.paths
    report = write_report(p["optical"], p["prediction"], tmp_path, landcover=p["landcover"], tile_size=40)
    assert report["metrics"] is None
    assert report["scene"]["landcover"]["classes"]["forest"]["pixels"] > 0
    assert report["scene"]["cloud_mask"]["source"] == "detected"
    # The synthetic cloud is bright and flat: the detector must find most of it and little else.
    with rasterio.open(tmp_path / report["layers"]["cloud_mask"]) as ds:
        det = ds.read(1) == 1
    inter = (det & scene.cloud).sum()
    assert inter / scene.cloud.sum() > 0.8 and inter / det.sum() > 0.8
    assert "ndvi_reference" not in report["layers"]
    change = report["scene"]["change_magnitude"]
    assert change["inside_cloud"] > 5 * change["outside_cloud"]
    validate_report(report)
    assert set(report["plots"]) == {"quicklooks", "ndvi_maps", "ndvi_scatter", "mask_and_change", "per_class"}


def test_grid_mismatch_and_cancel(scene, tmp_path):
    p = scene.paths
    shifted = _write(tmp_path / "shifted.tif", scene.pred, origin=(ORIGIN[0] + 3, ORIGIN[1]))
    with pytest.raises(InputError, match="grid"):
        write_report(p["optical"], shifted, tmp_path / "a")
    with pytest.raises(InputError, match="band 5"):
        write_report(p["optical"], p["prediction"], tmp_path / "b", bands=(1, 2, 3, 5))
    progress = Progress()
    progress.callback = lambda f, m: progress.cancel() if f > 0.2 else None
    out = tmp_path / "c"
    with pytest.raises(Cancelled):
        write_report(p["optical"], p["prediction"], out, reference=p["reference"], tile_size=16, progress=progress)
    assert not out.exists()  # nothing left, not even the folder it made (issue 25)


def test_evaluate_cli(scene, tmp_path, capsys):
    p = scene.paths
    out = tmp_path / "rep"
    args = ["evaluate", "--optical", str(p["optical"]), "--prediction", str(p["prediction"]),
            "--reference", str(p["reference"]), "--mask", str(p["mask"]), "--out", str(out), "--tile-size", "36"]
    assert main([*args, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["settings"]["tile_size"] == 36
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "inside_cloud psnr" in text and "inside_cloud band_r" in text and "inside_cloud off_gamut" in text
    assert f"{CEILING_LABEL}: {printed['metrics']['date_gap_ceiling_db']:.2f} dB" in text
    assert "the reference itself" in text
    bad = ["evaluate", "--optical", str(tmp_path / "missing.tif"), "--prediction", str(p["prediction"]),
           "--reference", str(p["reference"]), "--out", str(out)]
    assert main(bad) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.shared
@pytest.mark.slow
def test_m3rcr_sample_identity_baseline(shared_data, tmp_path, capsys):
    root = shared_data / "m3rcr_sample" / "train"
    cloudy = root / "planet_cloudy_fall/planet_cloudy_fall_1/planet_cloudy_fall_1_p_457.tif"
    free = root / "planet_cloudfree_fall/planet_cloudfree_fall_1/planet_cloudfree_fall_1_p_457.tif"
    lc = root / "landcover_fall/landcover_fall_1/landcover_fall_1_p_457.tif"
    npy = np.load(root / "cloudmask_fall/cloudmask_fall_1/cloudmask_fall_1_p_457.npy")
    with rasterio.open(cloudy) as src:
        profile = src.profile
        opt = src.read()
    with rasterio.open(free) as src:
        ref = src.read()
    profile.update(count=1, dtype="uint8", nodata=None)
    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(npy.astype(np.uint8), 1)
    out = tmp_path / "report"
    rc = main(["evaluate", "--optical", str(cloudy), "--prediction", str(cloudy), "--reference", str(free),
               "--landcover", str(lc), "--mask", str(mask), "--out", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    validate_report(report)
    m = report["metrics"]
    # Identity baseline: the output *is* the cloudy input.
    assert m["output"]["overall"] == m["cloudy_input"]["overall"]
    assert report["scene"]["change_magnitude"]["mean"] == 0
    valid = (opt > 0).all(0) & (ref > 0).all(0)
    assert report["scene"]["cloud_mask"]["cloud_cover_percent"] == pytest.approx(100 * npy[valid].mean())
    a, b = opt / 10000.0, ref / 10000.0
    assert m["cloudy_input"]["overall"]["psnr"] == pytest.approx(psnr(a, b, mask=valid), rel=1e-9)
    assert valid.all()  # this sample has no nodata, so the streamed SSIM is scikit-image's whole-image SSIM
    assert m["cloudy_input"]["overall"]["ssim"] == pytest.approx(ssim(a, b), abs=1e-9)
    classes = report["scene"]["landcover"]["classes"]
    assert classes["agriculture"]["pixels"] > classes["forest"]["pixels"] > 0  # WorldCover 40 ≫ 10 in this AOI
    assert set(report["plots"]) == {
        "quicklooks", "mask_and_change", "ndvi_maps", "ndvi_scatter", "per_class", "cloud_cover_bins"
    }
    assert (out / "report.html").stat().st_size > 50_000


def test_quicklooks_filled_by_tiles_equal_a_nearest_decimated_read():
    from rasterio.windows import Window

    from engine.report.accumulate import Quicklooks

    h, w = 100, 130
    data = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    looks = Quicklooks(h, w, side=40)
    assert looks.shape == (31, 40)
    for y in range(0, h, 32):
        for x in range(0, w, 32):
            win = Window(x, y, min(32, w - x), min(32, h - y))
            looks.add("a", win, data[:, y : y + win.height, x : x + win.width])
    rows = ((np.arange(31) + 0.5) * h / 31).astype(int)
    cols = ((np.arange(40) + 0.5) * w / 40).astype(int)
    np.testing.assert_array_equal(looks.layers["a"], data[:, rows][:, :, cols])
    small = Quicklooks(20, 10, side=40)  # never upsampled
    small.add("b", Window(0, 0, 10, 20), data[0, :20, :10])
    np.testing.assert_array_equal(small.layers["b"], data[0, :20, :10])


def test_block_cache_holds_one_row_of_tiles_during_the_pass(scene, tmp_path, monkeypatch):
    """The streaming pass sets GDAL's block cache to the blocks one row of tiles touches (see engine.report.accumulate):
    sized from the scene's width and the rasters' block shapes, not GDAL's default of 5 % of RAM; restored after."""
    from contextlib import ExitStack

    from engine.report import accumulate
    from engine.report.sources import open_sources

    # worst case of rows of blocks a window can touch: unaligned windows straddle one more block row
    assert accumulate.rows_of_blocks(310, 512) == 1024  # 300 px tile + halo on 512² input blocks
    assert accumulate.rows_of_blocks(300, 256) == 768  # a tile on the layers' 256² blocks
    assert accumulate.rows_of_blocks(256, 256) == 512
    assert accumulate.rows_of_blocks(1, 512) == 512
    assert accumulate.rows_of_blocks(310, 1) == 310  # one row per strip

    p = scene.paths
    monkeypatch.setattr(accumulate, "CACHE_FLOOR_BYTES", 0)  # the test scene is far below the 64 MiB floor
    with ExitStack() as stack:
        src = open_sources(stack, optical=p["optical"], prediction=p["prediction"], reference=p["reference"],
                           landcover=p["landcover"], mask=p["mask"], bands=(1, 2, 3, 4))  # fmt: skip
        plain = accumulate.block_cache_bytes(src, 32, ["uint8"] + ["float32"] * 4)
        # with the baselines (the default), optical and mask are read with the fill baseline's halo too
        expected = accumulate.block_cache_bytes(src, 32, ["uint8"] + ["float32"] * 4, DEFAULT_HALO)
    # 4-band uint16 optical + reference, float32 prediction, 1-byte land cover (reprojected: counted twice) and mask
    assert plain >= W * (2 * 8 + 16) * (32 + 2 * accumulate.HALO) + W * 17 * 32
    assert expected >= plain + W * (8 + 1) * 2 * DEFAULT_HALO

    def cachemax():
        return rasterio.env.getenv().get("GDAL_CACHEMAX") if rasterio.env.hasenv() else None

    seen: list[tuple[str, object]] = []
    progress = Progress(callback=lambda fraction, message: seen.append((message, cachemax())))
    write_report(p["optical"], p["prediction"], tmp_path, reference=p["reference"], landcover=p["landcover"],
                 mask=p["mask"], tile_size=32, progress=progress)  # fmt: skip
    during = {value for message, value in seen if message == "report: metrics and layers"}
    assert during == {expected}
    assert seen[-1] == ("report written", None)
    assert cachemax() is None


def test_tables_and_charts_skip_empty_classes_and_bins(scene, tmp_path, monkeypatch):
    """Issue 16: absent land-cover classes and cloud-cover bins without tiles made rows of dashes and empty bar slots;
    key–value tables opened with a blank header row; the reference is named as the cloud-free acquisition."""
    from engine.report import plots
    from engine.sources.landcover import CLASS_NAMES

    charts = {}
    real = plots.grouped_bars
    monkeypatch.setattr(plots, "grouped_bars", lambda title, cats, series, ylabels: (
        charts.__setitem__(title, (list(cats), series)), real(title, cats, series, ylabels))[1])
    p = scene.paths
    report = write_report(p["optical"], p["prediction"], tmp_path, reference=p["reference"],
                          landcover=p["landcover"], mask=p["mask"], tile_size=16)
    m = report["metrics"]
    present = [c for c in CLASS_NAMES if m["output"]["per_class"][c]["pixels"]]
    bins = [b for b in m["output"]["cloud_cover_bins"] if b["tiles"]]
    assert 0 < len(present) < len(CLASS_NAMES)  # the scene has empty classes, or the test proves nothing
    assert 0 < len(bins) < len(m["output"]["cloud_cover_bins"])
    cats, series = charts["per land-cover class (vs cloud-free reference)"]
    assert [c.split("\n")[0] for c in cats] == present and all(len(v) == len(present) for v in series.values())
    cats, series = next(v for k, v in charts.items() if k.startswith("by cloud cover"))
    assert len(cats) == len(bins) and all(len(v) == len(bins) for v in series.values())
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    per_class = text.split("<h3>Per land-cover class</h3>")[1].split("</table>")[0]
    assert [c for c in CLASS_NAMES if f"<td>{c}</td>" in per_class] == present
    by_cover = text.split("<h3>By cloud cover")[1].split("</table>")[0]
    assert by_cover.count("<tr>") == 1 + len(bins)  # the header and one row per bin with tiles
    assert "<tr><th></th><th></th></tr>" not in text
    assert "the cloud-free acquisition of the same place" in text
