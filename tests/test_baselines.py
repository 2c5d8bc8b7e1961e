"""engine.baselines: what the non-learned baselines compute, in memory and streamed, and their report rows."""

from __future__ import annotations

import numpy as np
import pytest

from engine.baselines import BASELINES, DEFAULT_HALO, baseline, clear_medians, fill, fill_window, flat


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
