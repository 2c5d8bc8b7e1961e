"""Metrics against hand-computed values, masked variants, aggregation, and streamed == whole-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from engine.outputs.metrics import (
    PSNR_CAP,
    SSIM_RADIUS,
    AccumulatorConfig,
    MetricAccumulator,
    mae,
    mean_iou,
    ndvi_classes,
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


def _tiled(acc: MetricAccumulator, pred, ref, cloud, landcover, valid, tile: int) -> None:
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
            )


def test_streaming_equals_whole_image_on_1024():
    pred, ref, cloud, lc, valid = _scene(1024)
    whole = MetricAccumulator()
    whole.update(pred, ref, valid=valid, cloud=cloud, landcover=lc)
    streamed = MetricAccumulator()
    _tiled(streamed, pred, ref, cloud, lc, valid, tile=300)
    w, s = whole.result(), streamed.result()
    for part in ("overall", "inside_cloud", "outside_cloud"):
        for k in ("mae", "psnr", "ssim", "sam"):
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
