"""engine.refine.baselines: what the non-learned baselines compute, in memory and streamed, and their report rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.refine.baselines import BASELINES, DEFAULT_HALO, baseline, clear_medians, fill, fill_window, flat


def _ramp(h: int = 40, w: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([0.1 + 0.004 * xx, 0.2 + 0.003 * yy, 0.05 + 0.002 * (xx + yy), 0.3 + 0.001 * xx - 0.002 * yy])


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r**2


def test_fill_reproduces_a_linear_ramp_inside_an_interior_cloud():
    ramp = _ramp()
    cloud = _disc(40, 50, 20, 24, 9)
    cloudy = ramp.copy()
    cloudy[:, cloud] = 0.9  # what the cloud did: replaced, not shifted
    out = fill(cloudy, cloud)
    # a linear function is harmonic (its discrete Laplacian is 0), so the interpolation gives it back exactly
    np.testing.assert_allclose(out[:, cloud], ramp[:, cloud], atol=1e-5)
    assert np.array_equal(out[:, ~cloud], cloudy[:, ~cloud])  # clear pixels unchanged, bit for bit


def test_fill_of_a_cloud_on_the_image_edge_is_bounded_by_its_border():
    ramp = _ramp()
    cloud = np.zeros((40, 50), bool)
    cloud[:12, 10:30] = True  # touches the top edge: zero flux there
    cloudy = np.where(cloud, 1.0, ramp).astype(np.float32)
    out = fill(cloudy, cloud)
    from scipy import ndimage

    border = ramp[:, ndimage.binary_dilation(cloud) & ~cloud]
    assert np.all(out[:, cloud] >= border.min(axis=1)[:, None] - 1e-6)  # maximum principle
    assert np.all(out[:, cloud] <= border.max(axis=1)[:, None] + 1e-6)
    # x-ramp bands stay a ramp in x (the zero-flux edge is parallel to their gradient)
    np.testing.assert_allclose(out[0, cloud], ramp[0, cloud], atol=1e-5)


def test_fully_clouded_window_gets_the_flat_values():
    ramp = _ramp()
    cloud = np.ones((40, 50), bool)
    medians = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    out = fill(ramp, cloud, medians)
    assert np.array_equal(out, flat(ramp, cloud, medians))
    assert np.all(out == medians[:, None, None])
    # with no medians given and nothing clear, there is nothing to fill from: the input stays
    assert np.array_equal(fill(ramp, cloud), ramp)
    assert np.array_equal(flat(ramp, cloud), ramp)


def test_nan_pixels_are_left_alone_and_never_used_as_border():
    ramp = _ramp()
    cloud = _disc(40, 50, 20, 24, 9)
    cloudy = np.where(cloud, 0.9, ramp).astype(np.float32)
    cloudy[:, 20, 10:16] = np.nan  # a nodata scratch at the cloud's west edge, partly inside it
    cloudy[1, 5, 5] = np.nan  # one band missing: the pixel is not clear
    out = fill(cloudy, cloud)
    nan = ~np.isfinite(cloudy).all(axis=0)
    assert np.array_equal(np.isnan(out), np.isnan(cloudy))
    ok = cloud & ~nan
    assert np.isfinite(out[:, ok]).all()
    # nodata is a zero-flux boundary, not a value: the ramp is still close (exact with no missing border)
    np.testing.assert_allclose(out[:, ok], ramp[:, ok], atol=5e-3)
    assert np.array_equal(out[:, ~cloud & ~nan], cloudy[:, ~cloud & ~nan])


def test_flat_is_the_clear_pixels_median():
    rng = np.random.default_rng(1)
    img = rng.random((4, 30, 30)).astype(np.float32)
    cloud = _disc(30, 30, 15, 15, 8)
    img[:, cloud] = 1.0
    img[2, 0, 0] = np.nan
    clear = ~cloud
    clear[0, 0] = False
    expected = np.median(img[:, clear], axis=1)
    np.testing.assert_allclose(clear_medians(img, cloud), expected, rtol=1e-6)
    out = baseline("flat", img, cloud)
    assert out.shape == img.shape and np.allclose(out, expected[:, None, None])
    assert clear_medians(img, np.ones((30, 30), bool)) is None
    with pytest.raises(ValueError, match="unknown baseline 'blur'"):
        baseline("blur", img, cloud)
    assert BASELINES == ("flat", "fill")


def test_fill_matches_a_dense_solve_of_the_discrete_laplace_equation():
    rng = np.random.default_rng(3)
    img = rng.random((2, 12, 14)).astype(np.float32)
    cloud = np.zeros((12, 14), bool)
    cloud[3:8, 2:6] = True
    cloud[0:3, 9:14] = True  # touches two image edges
    out = fill(img, cloud)
    # reference: Gauss–Seidel to convergence on the same stencil (edges excluded from the neighbour count)
    ref = img.astype(np.float64).copy()
    ys, xs = np.nonzero(cloud)
    for _ in range(4000):
        for y, x in zip(ys, xs):
            nb = [(y + dy, x + dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                  if 0 <= y + dy < 12 and 0 <= x + dx < 14]  # fmt: skip
            ref[:, y, x] = np.mean([ref[:, a, b] for a, b in nb], axis=0)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_chunked_fill_with_halo_equals_the_whole_fill():
    rng = np.random.default_rng(5)
    h, w = 90, 110
    img = (0.2 + 0.05 * rng.random((4, h, w))).astype(np.float32)
    cloud = _disc(h, w, 30, 40, 10) | _disc(h, w, 70, 95, 6) | _disc(h, w, 5, 100, 7)  # last one on the edge
    cloud[80:, :8] = True  # a corner cloud
    img[:, cloud] = 0.95
    medians = clear_medians(img, cloud)
    whole = fill(img, cloud, medians)
    halo_px, size = 25, 32  # every cloud is smaller than the halo
    for y in range(0, h, size):
        for x in range(0, w, size):
            y0, x0 = max(0, y - halo_px), max(0, x - halo_px)
            y1, x1 = min(h, y + size + halo_px), min(w, x + size + halo_px)
            ch, cw = min(size, h - y), min(size, w - x)
            halo = (y - y0, y1 - y - ch, x - x0, x1 - x - cw)
            part = fill_window(img[:, y0:y1, x0:x1], cloud[y0:y1, x0:x1], halo, medians)
            assert part.shape == (4, ch, cw)
            np.testing.assert_allclose(part, whole[:, y : y + ch, x : x + cw], atol=2e-6)
    assert DEFAULT_HALO >= 64


# ---- the baselines in the engine's reports -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from test_report import Scene

    return Scene(tmp_path_factory.mktemp("baseline_scene"))


@pytest.fixture(scope="module")
def report(scene, tmp_path_factory):
    from engine.report import write_report

    p = scene.paths
    out = tmp_path_factory.mktemp("baseline_report")
    return write_report(p["optical"], p["prediction"], out, reference=p["reference"], landcover=p["landcover"],
                        mask=p["mask"], tile_size=32), out  # fmt: skip


def _in_memory_baselines(scene) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """flat and fill of the whole cloudy input in memory, as the report must reproduce them tile by tile."""
    cloudy = np.where(scene.valid, scene.norm("optical"), np.nan).astype(np.float32)
    cloud = scene.cloud & scene.valid
    medians = clear_medians(cloudy, cloud)
    return {"flat": flat(cloudy, cloud, medians), "fill": fill(cloudy, cloud, medians)}, medians


def test_baseline_rows_equal_metrics_of_the_in_memory_baselines(scene, report):
    from engine.outputs.metrics import AccumulatorConfig, MetricAccumulator, mae, psnr, sam_degrees
    from engine.sources.landcover import CLASS_NAMES

    rep, _ = report
    m = rep["metrics"]
    assert set(m["baselines"]) == {"flat", "fill"}
    images, medians = _in_memory_baselines(scene)
    np.testing.assert_allclose(rep["settings"]["baselines"]["flat_medians"], medians, rtol=1e-6)
    ref, v, cloud = scene.norm("reference"), scene.valid, scene.cloud
    for name, image in images.items():
        row = m["baselines"][name]
        assert row["overall"]["pixels"] == m["output"]["overall"]["pixels"] == int(v.sum())  # the same pixels
        assert row["inside_cloud"]["pixels"] == m["output"]["inside_cloud"]["pixels"]
        assert row["overall"]["mae"] == pytest.approx(mae(image, ref, v), rel=1e-5)
        assert row["inside_cloud"]["psnr"] == pytest.approx(psnr(image, ref, mask=v & cloud), rel=1e-5)
        assert row["outside_cloud"]["sam"] == pytest.approx(sam_degrees(image, ref, v & ~cloud), rel=1e-4, abs=1e-6)
        # SSIM and NDVI: the metrics' own accumulator on the whole in-memory image (one tile, no halo)
        whole = MetricAccumulator(AccumulatorConfig(class_names=CLASS_NAMES))
        whole.update(image, ref, valid=v, cloud=cloud)
        expected = whole.result()
        for part in ("overall", "inside_cloud", "outside_cloud"):
            assert row[part]["ssim"] == pytest.approx(expected[part]["ssim"], rel=1e-5)
        assert row["ndvi"]["rmse"] == pytest.approx(expected["ndvi"]["rmse"], rel=1e-5)
    # fill keeps the clear pixels: outside the cloud it scores exactly as the cloudy input
    assert m["baselines"]["fill"]["outside_cloud"]["mae"] == pytest.approx(m["cloudy_input"]["outside_cloud"]["mae"])
    # and both beat the cloudy input inside the cloud by far — why the cloudy input is no yardstick
    for name in ("flat", "fill"):
        assert m["baselines"][name]["inside_cloud"]["psnr"] > m["cloudy_input"]["inside_cloud"]["psnr"] + 8


def test_margin_is_output_minus_the_best_baseline_inside_the_cloud(report):
    from engine.report.margin import margin_sentence

    m = report[0]["metrics"]
    best = max(("flat", "fill"), key=lambda n: m["baselines"][n]["inside_cloud"]["psnr"])
    margin = m["baseline_margin"]
    assert margin["best_baseline"] == best
    assert margin["margin_db"] == pytest.approx(
        m["output"]["inside_cloud"]["psnr"] - m["baselines"][best]["inside_cloud"]["psnr"]
    )
    # the smooth synthetic ramp is fill's best case: the noisy "prediction" loses to it, and the page says so
    assert margin["margin_db"] < 0 and margin["beats_baselines"] is False
    assert "does NOT beat the baselines" in margin_sentence(margin)
    html = (report[1] / "report.html").read_text(encoding="utf-8")
    assert margin_sentence(margin) in html
    assert "baseline flat" in html and "baseline fill" in html and "margin vs best baseline" in html


def test_margin_sign_and_wording():
    from engine.report.margin import baseline_margin, margin_sentence

    def block(psnr):
        return {"inside_cloud": {"psnr": psnr}}

    metrics = {"output": block(24.1), "baselines": {"flat": block(20.0), "fill": block(25.3)}}
    margin = baseline_margin(metrics)
    assert margin["best_baseline"] == "fill" and margin["margin_db"] == pytest.approx(-1.2)
    assert not margin["beats_baselines"]
    assert margin_sentence(margin) == ("inside the cloud: output 24.10 dB, best baseline fill 25.30 dB → margin "
                                       "−1.20 dB (the model does NOT beat the baselines)")  # fmt: skip
    metrics["output"] = block(27.0)
    margin = baseline_margin(metrics)
    assert margin["margin_db"] == pytest.approx(1.7) and margin["beats_baselines"]
    assert "margin +1.70 dB (the model beats the baselines)" in margin_sentence(margin)
    metrics["baselines"]["fill"] = block(None)  # no cloud pixel scored for fill: flat is the best left
    assert baseline_margin(metrics)["best_baseline"] == "flat"
    assert baseline_margin({"output": block(None), "baselines": {"flat": block(20.0)}}) is None
    assert baseline_margin({"output": block(24.0), "baselines": None}) is None
    assert "no margin" in margin_sentence(None)


def test_margin_warns_when_the_reference_is_another_date():
    """Outside the cloud the cloudy image is the ground: when it scores under flat there, a perfect cloud removal
    would too, and the headline says the reference (another date, or haze the mask misses) is to blame."""
    from engine.report.margin import baseline_margin, margin_sentence

    def block(inside, outside):
        return {"inside_cloud": {"psnr": inside}, "outside_cloud": {"psnr": outside}}

    metrics = {"output": block(26.8, 27.3), "cloudy_input": block(13.7, 26.2),
               "baselines": {"flat": block(28.4, 28.5), "fill": block(24.4, 26.2)}}  # fmt: skip
    margin = baseline_margin(metrics)
    assert (margin["clear_pixels_db"], margin["flat_outside_db"]) == (26.2, 28.5)
    assert margin_sentence(margin).endswith(
        "; but outside the cloud the image's own clear pixels score 26.20 dB against this reference, under flat's "
        "28.50 dB: the reference is likely another date (or the mask misses haze), so even a perfect cloud removal "
        "would not beat flat on it")
    metrics["cloudy_input"] = block(13.7, 36.9)  # the same date: its clear pixels match the reference
    assert margin_sentence(baseline_margin(metrics)).endswith("(the model does NOT beat the baselines)")


def test_a_perfect_output_beats_the_baselines(scene, tmp_path):
    from engine.report import write_report

    p = scene.paths
    rep = write_report(p["optical"], p["reference"], tmp_path, reference=p["reference"], mask=p["mask"], tile_size=40)
    margin = rep["metrics"]["baseline_margin"]
    assert margin["output_db"] == 100.0 and margin["margin_db"] > 0 and margin["beats_baselines"]


def test_shared_stretch_comes_from_the_reference_clear_pixels_only(tmp_path):
    from engine.report.plots import quicklook_panels, shared_stretch, stretched_panels

    rng = np.random.default_rng(11)
    ref = (0.05 + 0.1 * rng.random((4, 50, 60))).astype(np.float32)
    cloud = _disc(50, 60, 25, 30, 15)
    lims = shared_stretch(ref, ~cloud)
    saturated = ref.copy()
    saturated[:, cloud] = 1.0  # a bright cloud in the reference itself
    np.testing.assert_array_equal(shared_stretch(saturated, ~cloud), lims)
    assert not np.allclose(shared_stretch(saturated, np.ones((50, 60), bool)), lims)  # a whole-image stretch moves
    expected = np.percentile(ref[[2, 1, 0]][:, ~cloud], [2, 98], axis=1).T
    np.testing.assert_allclose(lims, expected)

    cloudy = np.where(cloud, 1.0, ref).astype(np.float32)
    cloudy[:, :3, :3] = np.nan  # no data → transparent
    panels = stretched_panels({"cloudy": cloudy, "reference": saturated}, lims)
    # one stretch: clear pixels, equal in both images, get the same colour in both panels; the cloud saturates
    np.testing.assert_array_equal(panels["cloudy"][3:, 3:][~cloud[3:, 3:]], panels["reference"][3:, 3:][~cloud[3:, 3:]])
    assert np.all(panels["cloudy"][cloud][:, :3] == 1.0)
    assert np.all(panels["cloudy"][:3, :3, 3] == 0) and np.all(panels["reference"][..., 3] == 1)

    path = tmp_path / "ql.png"
    png = quicklook_panels({"cloudy": cloudy, "fill": fill(cloudy, cloud), "reference": ref}, ref, ~cloud, path)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and path.read_bytes() == png


def test_evaluate_cli_with_and_without_baselines(scene, tmp_path, capsys):
    from engine.cli import main

    p = scene.paths
    args = ["evaluate", "--optical", str(p["optical"]), "--prediction", str(p["prediction"]),
            "--reference", str(p["reference"]), "--mask", str(p["mask"]), "--tile-size", "36"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a"), "--baselines"]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if "cloudy input" in line)
    assert header.split() == ["cloudy", "input", "flat", "fill", "output"]
    assert "inside the cloud: output" in text and "best baseline fill" in text
    assert main([*args, "--out", str(tmp_path / "b"), "--no-baselines", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["metrics"]["baselines"] is None and rep["metrics"]["baseline_margin"] is None
    assert rep["settings"]["baselines"] is None
    assert "margin vs best baseline" not in (tmp_path / "b" / "report.html").read_text(encoding="utf-8")
    # the off-gamut shares need the clear pixels' first pass even without the baselines
    assert rep["settings"]["off_gamut"]["low"] is not None
    assert rep["metrics"]["output"]["inside_cloud"]["off_gamut"] is not None


def test_run_report_scores_the_baselines_unless_told_not_to(scene, tmp_path, capsys):
    from helpers_rasters import write_sar

    from engine.cli import main
    from engine.report.schema import validate_report

    p = scene.paths
    sar = write_sar(tmp_path / "s1.tif", like=p["optical"])
    args = ["run", "--optical", str(p["optical"]), "--sar", str(sar), "--model", "identity", "--device", "cpu",
            "--reference", str(p["reference"]), "--mask", str(p["mask"]), "--tile", "32", "--overlap", "8"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "o.tif"), "--report", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    validate_report(rep)
    m = rep["metrics"]
    assert set(m["baselines"]) == {"flat", "fill"}
    # identity: the output is the cloudy input, which every baseline beats inside the cloud
    assert m["output"]["inside_cloud"] == m["cloudy_input"]["inside_cloud"]
    assert m["baseline_margin"]["margin_db"] < -8 and not m["baseline_margin"]["beats_baselines"]
    assert "does NOT beat the baselines" in printed
    assert rep["run_settings"]["baselines"] is True
    assert "baseline: fill" not in rep["plots"]  # panels live inside the one quicklook figure
    assert main([*args, "--out", str(tmp_path / "o2.tif"), "--report", str(tmp_path / "rep2"), "--no-baselines"]) == 0
    assert "best baseline" not in capsys.readouterr().out
    rep2 = json.loads((tmp_path / "rep2" / "report.json").read_text())
    assert rep2["metrics"]["baselines"] is None and rep2["run_settings"]["baselines"] is False
    assert rep2["metrics"]["output"] == m["output"]  # the baselines change nothing else in the report


@pytest.mark.shared
@pytest.mark.slow
def test_m3rcr_sample_baselines(shared_data, tmp_path, capsys):
    """The real 300² M3R-CR sample with its cloud mask: the report's baseline rows equal the in-memory baselines'."""
    import rasterio

    from engine.cli import main
    from engine.outputs.metrics import mae, psnr
    from engine.report.schema import validate_report

    root = shared_data / "m3rcr_sample" / "train"
    cloudy = root / "planet_cloudy_fall/planet_cloudy_fall_1/planet_cloudy_fall_1_p_457.tif"
    free = root / "planet_cloudfree_fall/planet_cloudfree_fall_1/planet_cloudfree_fall_1_p_457.tif"
    npy = np.load(root / "cloudmask_fall/cloudmask_fall_1/cloudmask_fall_1_p_457.npy").astype(bool)
    with rasterio.open(cloudy) as src:
        profile = src.profile
        opt = src.read().astype(np.float64) / 10000.0
    with rasterio.open(free) as src:
        ref = src.read().astype(np.float64) / 10000.0
    profile.update(count=1, dtype="uint8", nodata=None)
    mask = tmp_path / "mask.tif"
    with rasterio.open(mask, "w", **profile) as dst:
        dst.write(npy.astype(np.uint8), 1)
    out = tmp_path / "report"
    assert main(["evaluate", "--optical", str(cloudy), "--prediction", str(cloudy), "--reference", str(free),
                 "--mask", str(mask), "--out", str(out), "--json", "--baselines"]) == 0  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    validate_report(rep)
    m = rep["metrics"]
    assert np.isfinite(opt).all() and (opt > 0).all()  # no nodata in this sample: every pixel is scored
    medians = clear_medians(opt.astype(np.float32), npy)
    for name, image in (("flat", flat(opt, npy, medians)), ("fill", fill(opt, npy, medians))):
        row = m["baselines"][name]
        assert row["inside_cloud"]["psnr"] == pytest.approx(psnr(image, ref, mask=npy), rel=1e-5)
        assert row["overall"]["mae"] == pytest.approx(mae(image, ref), rel=1e-5)
        assert row["inside_cloud"]["psnr"] > m["cloudy_input"]["inside_cloud"]["psnr"]
    margin = m["baseline_margin"]
    assert margin["margin_db"] < 0 and not margin["beats_baselines"]  # the "prediction" is the cloudy input
    assert (out / "report.html").stat().st_size > 50_000


def test_fill_in_blocks_within_a_tile_equals_one_solve_per_tile(scene, report, tmp_path, monkeypatch):
    """A large --tile-size is filled in FILL_BLOCK blocks, each with the halo: same numbers for small clouds."""
    from engine.report import accumulate, write_report

    monkeypatch.setattr(accumulate, "FILL_BLOCK", 16)
    p = scene.paths
    rep = write_report(p["optical"], p["prediction"], tmp_path, reference=p["reference"], mask=p["mask"],
                       tile_size=32, baselines=True)  # fmt: skip
    blocked, single = rep["metrics"]["baselines"]["fill"], report[0]["metrics"]["baselines"]["fill"]
    for part in ("overall", "inside_cloud", "outside_cloud"):
        assert blocked[part] == pytest.approx(single[part], rel=1e-6)


def test_baselines_use_the_detected_mask_when_none_is_given(scene, tmp_path):
    from engine.report import write_report

    p = scene.paths
    rep = write_report(p["optical"], p["prediction"], tmp_path, reference=p["reference"], tile_size=32)
    assert rep["scene"]["cloud_mask"]["source"] == "detected"
    m = rep["metrics"]
    # fill keeps exactly the pixels the evaluation calls clear: there it scores as the cloudy input, bit for bit
    # (SSIM aside: its windows reach into the cloud)
    fill_clear, cloudy_clear = m["baselines"]["fill"]["outside_cloud"], m["cloudy_input"]["outside_cloud"]
    assert {k: fill_clear[k] for k in ("pixels", "mae", "psnr", "sam")} == {
        k: cloudy_clear[k] for k in ("pixels", "mae", "psnr", "sam")
    }
    assert m["baselines"]["fill"]["inside_cloud"]["pixels"] == m["output"]["inside_cloud"]["pixels"] > 0


def test_clear_medians_of_a_large_scene_come_from_a_regular_grid(scene, monkeypatch):
    from contextlib import ExitStack

    from engine.progress import Progress
    from engine.refine import baselines
    from engine.report import accumulate
    from engine.report.sources import open_sources

    p = scene.paths
    cloudy = scene.norm("optical")
    clear = scene.valid & ~scene.cloud
    with ExitStack() as stack:
        src = open_sources(stack, optical=p["optical"], prediction=p["prediction"], reference=None, landcover=None,
                           mask=p["mask"], bands=(1, 2, 3, 4))  # fmt: skip
        every = accumulate.clear_medians_pass(src, 32, Progress())
        monkeypatch.setattr(baselines, "MEDIAN_SAMPLE_PX", 1000)  # 60 × 72 px → every 3rd row and column
        sampled = accumulate.clear_medians_pass(src, 32, Progress())
    np.testing.assert_allclose(every, np.median(cloudy[:, clear], axis=1), rtol=1e-6)
    grid = clear.copy()
    grid[np.arange(grid.shape[0]) % 3 != 0] = False
    grid[:, np.arange(grid.shape[1]) % 3 != 0] = False
    np.testing.assert_allclose(sampled, np.median(cloudy[:, grid], axis=1), rtol=1e-6)
    assert not np.allclose(sampled, every, rtol=1e-6)
