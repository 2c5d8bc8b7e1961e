"""Metrics against hand-computed values, masked variants, aggregation, and streamed == whole-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from engine.outputs.metrics import (
    GAMUT_MARGIN,
    PSNR_CAP,
    SSIM_RADIUS,
    AccumulatorConfig,
    Gamut,
    MetricAccumulator,
    band_r,
    ceiling_of,
    clear_gamut,
    date_gap_ceiling,
    gamut_of,
    mae,
    mean_iou,
    ndvi_classes,
    ndvi_of,
    ndvi_r,
    off_gamut_share,
    pearson_r,
    psnr,
    sam_degrees,
    ssim,
    ssim_map,
)


def test_mae_hand_computed():
    ref = np.zeros((2, 2, 2))
    pred = np.array([[[0.1, 0.2], [0.3, 0.4]], [[0.0, 0.0], [0.0, 0.8]]])
    assert mae(pred, ref) == pytest.approx((0.1 + 0.2 + 0.3 + 0.4 + 0.8) / 8)
    mask = np.array([[True, False], [False, True]])
    assert mae(pred, ref, mask) == pytest.approx((0.1 + 0.4 + 0.0 + 0.8) / 4)
    assert math.isnan(mae(pred, ref, np.zeros((2, 2), bool)))


def test_psnr_of_known_mse():
    ref = np.full((4, 8, 8), 0.5)
    pred = ref + 0.01  # MSE = 1e-4 → 40 dB at data range 1
    assert psnr(pred, ref) == pytest.approx(40.0)
    assert psnr(pred, ref, data_range=2.0) == pytest.approx(40.0 + 20 * math.log10(2))
    assert psnr(ref, ref) == PSNR_CAP
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    pred2 = ref.copy()
    pred2[:, :4] += 0.1  # MSE 1e-2 inside mask → 20 dB, perfect outside
    assert psnr(pred2, ref, mask=mask) == pytest.approx(20.0)
    assert psnr(pred2, ref, mask=~mask) == PSNR_CAP
    assert psnr(pred2, ref) == pytest.approx(10 * math.log10(1 / 0.005))


def test_sam_of_known_vectors():
    ref = np.zeros((2, 1, 3))
    pred = np.zeros((2, 1, 3))
    ref[:, 0, 0], pred[:, 0, 0] = (1, 0), (0, 1)  # 90°
    ref[:, 0, 1], pred[:, 0, 1] = (1, 0), (1, 1)  # 45°
    ref[:, 0, 2], pred[:, 0, 2] = (0.3, 0.3), (0.6, 0.6)  # 0° (scale-invariant)
    assert sam_degrees(pred, ref) == pytest.approx((90 + 45 + 0) / 3)
    assert sam_degrees(pred, ref, mask=np.array([[False, True, True]])) == pytest.approx(22.5)


def test_ssim_equals_scikit_image_and_is_one_for_identical():
    rng = np.random.default_rng(0)
    ref = rng.random((4, 40, 50))
    pred = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    expected = structural_similarity(
        pred, ref, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(pred, ref) == pytest.approx(expected, abs=1e-12)
    assert ssim(ref, ref) == pytest.approx(1.0)
    r = SSIM_RADIUS
    assert ssim_map(pred, ref)[r:-r, r:-r].mean() == pytest.approx(expected, abs=1e-12)


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError):
        mae(np.zeros((4, 3, 3)), np.zeros((4, 3, 4)))


def test_ndvi_classes_and_miou():
    edges = (-0.1, 0.1, 0.4, 0.8)
    v = np.array([-0.5, -0.1, 0.0, 0.1, 0.39, 0.4, 0.79, 0.8, 1.0])
    assert ndvi_classes(v, edges).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    # reference classes [0, 0, 1, 1], prediction [0, 1, 1, 1]:
    # class 0: TP 1, union 2 → 0.5; class 1: TP 2, union 3 → 2/3; others absent.
    conf = np.zeros((5, 5), int)
    for r, p in zip([0, 0, 1, 1], [0, 1, 1, 1]):
        conf[r, p] += 1
    miou, ious = mean_iou(conf)
    assert miou == pytest.approx((0.5 + 2 / 3) / 2)
    assert ious[2:] == [None, None, None]


def _scene(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    ref = np.stack([0.1 + 0.3 * yy, 0.2 + 0.2 * xx, 0.15 + 0.1 * yy * xx, 0.3 + 0.4 * xx]) + rng.normal(
        0, 0.02, (4, n, n)
    )
    ref = np.clip(ref, 0, 1)
    pred = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    cloud = (xx - 0.5) ** 2 + (yy - 0.4) ** 2 < 0.1
    landcover = ((yy * 3).astype(int) * 2 + (xx * 2).astype(int)) % 7  # classes 0…6 (6 = unknown)
    valid = np.ones((n, n), bool)
    valid[:7, :300] = False  # a nodata strip
    return pred, ref, cloud, landcover, valid


def _tiled(acc: MetricAccumulator, pred, ref, cloud, landcover, valid, tile: int, gamut: Gamut | None = None) -> None:
    n = ref.shape[1]
    halo = SSIM_RADIUS
    for y in range(0, n, tile):
        for x in range(0, n, tile):
            y0, y1 = max(0, y - halo), min(n, y + tile + halo)
            x0, x1 = max(0, x - halo), min(n, x + tile + halo)
            h = (y - y0, y1 - min(n, y + tile), x - x0, x1 - min(n, x + tile))
            win = (slice(y0, y1), slice(x0, x1))
            acc.update(
                pred[(slice(None), *win)],
                ref[(slice(None), *win)],
                valid=valid[win],
                cloud=cloud[win],
                landcover=landcover[win],
                halo=h,
                gamut=gamut,
            )


def test_streaming_equals_whole_image_on_1024():
    pred, ref, cloud, lc, valid = _scene(1024)
    gamut = clear_gamut(np.where(valid, ref, np.nan), cloud)
    whole = MetricAccumulator()
    whole.update(pred, ref, valid=valid, cloud=cloud, landcover=lc, gamut=gamut)
    streamed = MetricAccumulator()
    _tiled(streamed, pred, ref, cloud, lc, valid, tile=300, gamut=gamut)
    w, s = whole.result(), streamed.result()
    for part in ("overall", "inside_cloud", "outside_cloud"):
        for k in ("mae", "psnr", "ssim", "sam", "band_r", "ndvi_r", "off_gamut", "reference_off_gamut"):
            assert s[part][k] == pytest.approx(w[part][k], rel=1e-9, abs=1e-12), (part, k)
        assert s[part]["pixels"] == w[part]["pixels"]
    for name in w["per_class"]:
        assert s["per_class"][name] == pytest.approx(w["per_class"][name], rel=1e-9)
    assert s["ndvi"]["rmse"] == pytest.approx(w["ndvi"]["rmse"], rel=1e-9)
    assert s["ndvi"]["confusion"] == w["ndvi"]["confusion"]
    # With no nodata the whole-image SSIM is exactly scikit-image's.
    full = MetricAccumulator()
    _tiled(full, pred, ref, cloud, lc, np.ones_like(valid), tile=300)
    assert full.result()["overall"]["ssim"] == pytest.approx(ssim(pred, ref), abs=1e-12)
    # And the pooled pixel metrics match the plain functions on the valid pixels.
    assert w["overall"]["mae"] == pytest.approx(mae(pred, ref, valid))
    assert w["inside_cloud"]["psnr"] == pytest.approx(psnr(pred, ref, mask=valid & cloud))
    assert w["outside_cloud"]["sam"] == pytest.approx(sam_degrees(pred, ref, mask=valid & ~cloud))
    # Band r, NDVI r and the off-gamut shares too (the noisy prediction leaves some pixels off-gamut).
    inside = valid & cloud
    assert w["inside_cloud"]["band_r"] == pytest.approx(band_r(pred, ref, inside), rel=1e-12)
    assert w["inside_cloud"]["ndvi_r"] == pytest.approx(ndvi_r(pred, ref, inside), rel=1e-12)
    assert 0 < w["inside_cloud"]["off_gamut"] == pytest.approx(off_gamut_share(pred, gamut, inside), rel=1e-12)
    assert w["inside_cloud"]["reference_off_gamut"] == pytest.approx(off_gamut_share(ref, gamut, inside), rel=1e-12)
    assert s["inside_cloud"]["off_gamut"] > s["inside_cloud"]["reference_off_gamut"]


def test_per_class_aggregation_hand_computed():
    ref = np.full((4, 12, 12), 0.5)
    pred = ref.copy()
    lc = np.zeros((12, 12), int)
    lc[:, 6:] = 5  # water on the right half
    pred[:, :, 6:] += 0.1  # error only on water
    acc = MetricAccumulator()
    acc.update(pred, ref, landcover=lc)
    res = acc.result()["per_class"]
    assert res["forest"] == {"pixels": 72, "mae": pytest.approx(0.0), "sam": pytest.approx(0.0, abs=1e-5)}
    assert res["water"]["mae"] == pytest.approx(0.1)
    assert res["water"]["pixels"] == 72
    assert res["urban"] == {"pixels": 0, "mae": None, "sam": None}


def test_cloud_cover_bins_per_tile():
    ref = np.full((4, 20, 20), 0.5)
    acc = MetricAccumulator(AccumulatorConfig(red_index=None, nir_index=None))
    # tile A: 10 % cloud, error 0.1; tile B: 50 % cloud, error 0.2; tile C: 100 % cloud, error 0.3
    for frac, err in ((0.1, 0.1), (0.5, 0.2), (1.0, 0.3)):
        cloud = np.zeros((20, 20), bool)
        cloud.flat[: int(frac * 400)] = True
        res = acc.update(ref + err, ref, cloud=cloud)
        assert res["cloud_cover"] == pytest.approx(100 * frac)
    bins = acc.result()["cloud_cover_bins"]
    assert [b["tiles"] for b in bins] == [1, 0, 1, 0, 1]
    assert bins[0]["mae"] == pytest.approx(0.1)
    assert bins[2]["mae"] == pytest.approx(0.2)
    assert bins[4]["psnr"] == pytest.approx(20 * math.log10(1 / 0.3))
    assert bins[1]["mae"] is None
    assert "ndvi" not in acc.result()


def test_nodata_never_leaks_into_ssim():
    pred, ref, cloud, lc, _ = _scene(64, seed=3)
    valid = np.ones((64, 64), bool)
    valid[30:34, 30:34] = False
    garbage = pred.copy()
    garbage[:, 30:34, 30:34] = 1e6
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update(pred, ref, valid=valid)
    b.update(garbage, ref, valid=valid)
    assert a.result()["overall"] == pytest.approx(b.result()["overall"])


def test_r_of_a_constant_is_zero_and_of_the_truth_is_one():
    pred, ref, cloud, _, _ = _scene(64, seed=5)
    assert band_r(ref, ref, cloud) == pytest.approx(1.0)
    assert band_r(2 * ref + 0.1, ref, cloud) == pytest.approx(1.0)  # structure, not level
    flat = np.broadcast_to(np.median(ref, axis=(1, 2))[:, None, None], ref.shape)
    assert band_r(flat, ref, cloud) == 0.0  # a flat colour: 0, not NaN
    one_flat = ref.copy()
    one_flat[3] = 0.4
    assert band_r(one_flat, ref) == pytest.approx(0.75)  # three bands at 1, a constant band at 0
    x, y = pred[0].ravel(), ref[0].ravel()
    assert pearson_r(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert pearson_r(-x, y) == pytest.approx(-np.corrcoef(x, y)[0, 1], rel=1e-12)
    # float rounding on a constant (e.g. a fill over a uniform border) is still a constant, not a correlation
    assert pearson_r(0.3 + 1e-9 * np.sin(np.arange(500)), np.arange(500.0)) == 0.0
    assert math.isnan(pearson_r(np.zeros(0), np.zeros(0)))
    assert math.isnan(band_r(pred, ref, np.zeros(cloud.shape, bool)))


def test_pearson_streams_in_chunks_without_cancellation():
    """Large offsets and a tiny spread: the naive Σx² − (Σx)²/n loses every digit here; the merged co-moments do
    not, chunk by chunk or whole."""
    from engine.outputs.metrics import PearsonSums

    rng = np.random.default_rng(3)
    x = 1e4 + rng.normal(0, 1e-3, 10_000)
    y = x + rng.normal(0, 1e-3, x.size)
    expected = np.corrcoef(x - 1e4, y - 1e4)[0, 1]
    sums = PearsonSums(1)
    for i in range(0, x.size, 777):
        sums.add(x[None, i : i + 777], y[None, i : i + 777])
    assert sums.mean_r() == pytest.approx(expected, rel=1e-6)
    assert pearson_r(x, y) == pytest.approx(expected, rel=1e-6)


def test_ndvi_r_with_the_reference():
    _, ref, cloud, _, _ = _scene(64, seed=6)
    assert ndvi_r(ref, ref, cloud) == pytest.approx(1.0)
    swapped = ref[[0, 1, 3, 2]]  # R and NIR swapped: NDVI negated
    assert ndvi_r(swapped, ref, cloud) == pytest.approx(-1.0)
    assert band_r(swapped, ref, cloud) < 0.9  # the band r does not see it as perfect
    assert ndvi_r(np.full_like(ref, 0.2), ref, cloud) == 0.0  # a flat colour has a flat NDVI
    rng = np.random.default_rng(0)
    noisy = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0.01, 1)
    n_p, n_r = ndvi_of(noisy, 2, 3)[cloud], ndvi_of(ref, 2, 3)[cloud]
    assert ndvi_r(noisy, ref, cloud) == pytest.approx(np.corrcoef(n_p, n_r)[0, 1], rel=1e-12)


def test_off_gamut_hand_computed():
    clear = np.arange(101.0)[None] / 100  # one band, 0.00 … 1.00
    g = gamut_of(clear)
    lo, hi = np.percentile(clear[0], (0.5, 99.5))  # 0.005, 0.995
    pad = GAMUT_MARGIN * (hi - lo)
    np.testing.assert_allclose([g.low[0], g.high[0]], [lo - pad, hi + pad])
    img = np.array([[[0.5, hi + 0.9 * pad, hi + 1.1 * pad, lo - 1.1 * pad]]])  # (1, 1, 4)
    assert off_gamut_share(img, g) == pytest.approx(0.5)
    assert off_gamut_share(img, g, np.array([[True, True, False, False]])) == 0.0
    assert gamut_of(np.zeros((4, 0))) is None
    assert clear_gamut(np.ones((4, 3, 3)), np.ones((3, 3), bool)) is None


def _smooth_scene(n: int = 128):
    """A smooth vegetated scene (gradients + a little noise), a bright cloud disc in the cloudy copy."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:n, 0:n] / n
    ref = np.stack([0.04 + 0.03 * yy, 0.06 + 0.03 * xx, 0.05 + 0.04 * xx * yy, 0.30 + 0.15 * np.sin(3 * xx)])
    ref = ref + rng.normal(0, 0.003, ref.shape)
    cloud = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.08
    cloudy = ref.copy()
    cloudy[:, cloud] = 0.8
    return cloudy, ref, cloud


def test_off_gamut_of_the_truth_is_small_and_of_a_painted_cast_is_total():
    cloudy, ref, cloud = _smooth_scene()
    g = clear_gamut(cloudy, cloud)  # from the cloudy input's clear pixels: the bright cloud is not in it
    assert off_gamut_share(ref, g, cloud) < 0.01
    cast = ref.copy()
    cast[2] += 0.3  # a red cast
    assert off_gamut_share(cast, g, cloud) > 0.99
    assert off_gamut_share(cloudy, g, cloud) == 1.0  # the cloud itself
    flat = np.broadcast_to(np.median(cloudy[:, ~cloud], axis=1)[:, None, None], ref.shape)
    assert off_gamut_share(flat, g, cloud) == 0.0


def test_date_gap_ceiling_hand_computed():
    cloudy = np.array([[[0.5, 0.6], [0.9, 0.9]]])  # (1, 2, 2); the bottom row is cloud
    ref = np.array([[[0.4, 0.6], [0.1, 0.2]]])
    cloud = np.array([[False, False], [True, True]])
    expected = 10 * math.log10(1 / ((0.1**2 + 0.0**2) / 2))  # clear pixels only: MSE 0.005 → 23.01 dB
    assert date_gap_ceiling(cloudy, ref, cloud) == pytest.approx(expected)
    acc = MetricAccumulator(AccumulatorConfig(red_index=None, nir_index=None))
    acc.update(cloudy, ref, cloud=cloud)
    assert ceiling_of(acc.result()) == pytest.approx(expected)
    assert math.isnan(date_gap_ceiling(cloudy, ref, np.ones((2, 2), bool)))
