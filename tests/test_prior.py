"""The non-learned estimate the residual model starts from (engine.refine.prior), the model that starts at it
(aligncr-res), and the engine computing it per chunk: the streamed run equals one whole-image estimate."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from helpers_prior import engine_colours_and_sar
from helpers_rasters import write_masked_scene, write_optical, write_sar
from scipy import ndimage

from engine.config import RunConfig
from engine.errors import ModelError
from engine.models import build_model, save
from engine.refine import prior
from engine.stream.pipeline import run


def _scene(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A left-to-right gradient (B, G, R, NIR) with a cloud block in the middle."""
    x = np.linspace(0.1, 0.5, w, dtype=np.float32)
    optical = np.stack([np.tile(x * (1 + k / 4), (h, 1)) for k in range(4)])
    cloud = np.zeros((h, w), dtype=bool)
    cloud[20:40, 30:50] = True
    return optical, cloud


def test_the_estimate_keeps_clear_pixels_and_follows_the_border_into_the_cloud():
    optical, cloud = _scene()
    est = prior.estimate(optical, ~cloud, None)
    assert np.array_equal(est[:, ~cloud], optical[:, ~cloud])
    # next to the cloud's left edge the estimate is the border's value, not the scene's median
    left, median = optical[:, 30, 29], np.median(optical[:, ~cloud], axis=1)
    assert np.abs(est[:, 30, 30] - left).max() < np.abs(median - left).max() / 3
    # across the cloud it keeps the gradient's order (left side darker than the right)
    assert (est[:, 30, 31] < est[:, 30, 48]).all()


def test_deep_inside_a_cloud_larger_than_the_reach_the_estimate_is_the_scenes_median():
    optical, _ = _scene(400, 400)
    cloud = np.ones((400, 400), dtype=bool)
    cloud[:, :5] = False
    medians = np.array([0.2, 0.3, 0.4, 0.5], np.float32)
    est = prior.estimate(optical, ~cloud, prior.SceneColours(medians))
    assert np.allclose(est[:, 200, 5 + prior.REACH + 10], medians, atol=1e-6)


def test_a_window_read_with_the_reach_as_halo_gives_the_whole_images_estimate():
    rng = np.random.default_rng(0)
    optical = rng.uniform(0, 1, (4, 460, 480)).astype(np.float32)
    cloud = np.zeros((460, 480), dtype=bool)
    cloud[60:400, 80:420] = True
    sar = rng.normal(0, 1, (2, 460, 480)).astype(np.float32)
    sar[:, :, 240:] += 3.0  # two kinds of ground to the radar
    colours = prior.window_colours(optical, ~cloud, sar)  # the scene's, fitted once
    assert colours is not None and colours.centres is not None
    whole = prior.channels(optical, ~cloud, colours, sar)
    y0, x0, h, w = 180, 200, 50, 60
    ys, xs = slice(y0 - prior.REACH, y0 + h + prior.REACH), slice(x0 - prior.REACH, x0 + w + prior.REACH)
    part = prior.channels(optical[:, ys, xs], ~cloud[ys, xs], colours, sar[:, ys, xs])
    inner = part[:, prior.REACH : prior.REACH + h, prior.REACH : prior.REACH + w]
    assert np.allclose(inner, whole[:, y0 : y0 + h, x0 : x0 + w], atol=1e-5)
    # the chunks' way: the estimate computed only ESTIMATE_REACH around the part kept, the same numbers
    keep = (slice(prior.REACH, prior.REACH + h), slice(prior.REACH, prior.REACH + w))
    within = prior.channels_within(optical[:, ys, xs], ~cloud[ys, xs], colours, sar[:, ys, xs], keep)
    assert np.allclose(within, whole[:, y0 : y0 + h, x0 : x0 + w], atol=1e-5)
    edge = (slice(0, h), slice(0, w))  # at the window's own edge (the scene's): nothing to grow into
    corner = prior.channels(optical[:, :h, :w], ~cloud[:h, :w], colours, sar[:, :h, :w])
    assert np.allclose(prior.channels_within(optical[:, :h, :w], ~cloud[:h, :w], colours, sar[:, :h, :w], edge),
                       corner, atol=1e-6)  # fmt: skip


def test_the_distance_channel_is_zero_on_clear_ground_and_capped():
    optical, cloud = _scene()
    ch = prior.channels(optical, ~cloud, None)
    assert ch.shape == (5, 60, 80)
    assert (ch[4][~cloud] == 0).all() and 0 < ch[4][30, 40] <= 1
    assert prior.distance(np.zeros((5, 5), bool)).max() == prior.REACH


def test_untrained_aligncr_res_is_the_estimate_and_refuses_to_run_without_it():
    model = build_model("aligncr-res").eval()
    optical, sar = torch.rand(2, 4, 40, 48), torch.rand(2, 2, 40, 48)
    given = torch.rand(2, 5, 40, 48)
    with torch.no_grad():
        assert torch.equal(model(optical, sar, prior=given), given[:, :4])
        with pytest.raises(ModelError, match="estimate and distance"):
            model(optical, sar)


def test_deep_inside_a_cloud_each_sar_class_takes_the_colour_of_its_clear_ground():
    """Two kinds of ground — dark where the SAR is bright, bright where it is dark — under a cloud wider than the
    reach: the estimate gives each its own clear colour, not the scene's one median (issue 26)."""
    h, w = 400, 400
    sar = np.zeros((2, h, w), np.float32)
    sar[:, :, : w // 2] = -8.0  # left: one kind of ground to the radar
    sar[:, :, w // 2 :] = -20.0  # right: another
    sar += np.random.default_rng(1).normal(0, 0.5, sar.shape).astype(np.float32)
    optical = np.empty((4, h, w), np.float32)
    optical[:, :, : w // 2] = 0.05
    optical[:, :, w // 2 :] = 0.30
    cloud = np.ones((h, w), bool)
    cloud[:20] = cloud[-20:] = False  # clear strips along the top and bottom, both kinds of ground
    est = prior.estimate(optical, ~cloud, None, sar)
    centre = h // 2  # farther than the reach from any clear pixel
    assert np.allclose(est[:, centre, 60], 0.05, atol=0.01) and np.allclose(est[:, centre, w - 60], 0.30, atol=0.01)
    flat = prior.estimate(optical, ~cloud, None)  # without SAR: the scene's median on both sides
    assert np.allclose(flat[:, centre, 60], flat[:, centre, w - 60])


def test_next_to_the_edge_ground_the_sar_calls_different_keeps_its_own_class_colour():
    """Regression kriging (2026-12-07): the border carries its departure from its class colour into the cloud, not
    its colour — a cloud that starts where the ground changes (dark clear fields, a bright town under the cloud, told
    apart by the SAR) is filled with the town's colour a few pixels in, not the fields' for the windows' width."""
    h, w = 200, 400
    sar = np.zeros((2, h, w), np.float32)
    sar[:, :, :200], sar[:, :, 200:] = -8.0, -20.0
    sar += np.random.default_rng(1).normal(0, 0.5, sar.shape).astype(np.float32)
    optical = np.empty((4, h, w), np.float32)
    optical[:, :, :200], optical[:, :, 200:] = 0.05, 0.30
    cloud = np.zeros((h, w), bool)
    cloud[:, 200:340] = True  # the bright ground is clear only beyond the cloud, 140 px away
    est = prior.estimate(optical, ~cloud, None, sar)
    assert (est[:, 100, 206] > 0.25).all() and (est[:, 100, 215:330] > 0.28).all()
    assert (est[:, 100, 200] > 0.1).all()  # even the first cloud pixel is past halfway


def _hazy_ring_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured fields (blue and red on one clear line) under a cloud whose mask missed a 3-px ring of haze."""
    rng = np.random.default_rng(5)
    red = rng.uniform(0.03, 0.15, (120, 120)).astype(np.float32)
    optical = np.stack([0.02 + 0.5 * red, 0.04 + 0.6 * red, red, 0.3 - red])
    cloud = np.zeros((120, 120), bool)
    cloud[30:90, 30:90] = True
    ring = ~cloud & (ndimage.distance_transform_edt(~cloud) <= 3)
    return optical, cloud, ring


def test_the_haze_a_mask_misses_is_kept_as_acquired_but_not_carried_into_the_cloud():
    optical, cloud, ring = _hazy_ring_scene()
    truth_mean = optical[:, ~cloud & ~ring].mean(axis=1)
    hazy = optical.copy()
    hazy[:3, ring] += np.array([0.25, 0.2, 0.15], np.float32)[:, None]  # haze: blue most
    colours = prior.window_colours(hazy, ~cloud, None)
    assert colours.haze is not None and colours.hazy(hazy)[ring].all() and not colours.hazy(hazy)[~ring].any()
    est = prior.estimate(hazy, ~cloud, colours)
    assert np.array_equal(est[:, ring], hazy[:, ring])
    inside = est[:, 33:87, 33:87].reshape(4, -1).mean(axis=1)
    assert np.abs(inside - truth_mean).max() < 0.01
    # bright ground on the clear line is ground, not haze: it is carried in
    bright = optical.copy()
    bright[:3, ring] += np.array([0.05, 0.06, 0.1], np.float32)[:, None]  # redder and brighter, along the line
    colours = prior.window_colours(bright, ~cloud, None)
    assert not colours.hazy(bright)[ring].any()
    assert prior.estimate(bright, ~cloud, colours)[0, 31, 60] > optical[0, ~cloud].mean() + 0.015


def test_colours_are_seeded_and_fall_back_to_the_median_without_enough_clear_ground():
    rng = np.random.default_rng(2)
    pixels = rng.uniform(0, 1, (4, 5000)).astype(np.float32)
    features = rng.normal(0, 1, (2, 5000)).astype(np.float32)
    clear = np.zeros(5000, bool)
    clear[:200] = True  # some classes get fewer than MIN_CLASS_CLEAR clear pixels
    a, b = prior.fit_colours(pixels, clear, features), prior.fit_colours(pixels, clear, features)
    assert a is not None and b is not None and np.array_equal(a.centres, b.centres)  # seeded
    labels = prior._nearest(a._standard(features.T), a.centres)
    median = np.median(pixels[:, clear], axis=1)
    for k, colour in enumerate(a.class_medians):
        own = clear & (labels == k)
        if own.sum() >= prior.MIN_CLASS_CLEAR:
            assert np.allclose(colour, np.median(pixels[:, own], axis=1))
        else:
            assert np.allclose(colour, median)
    assert any((clear & (labels == k)).sum() < prior.MIN_CLASS_CLEAR for k in range(len(a.centres)))
    features[:, :] = np.nan  # no SAR anywhere: the scene's median, no classes
    assert prior.fit_colours(pixels, clear, features).centres is None
    assert prior.fit_colours(pixels, np.zeros(5000, bool), features) is None


def test_the_streamed_run_writes_the_whole_images_estimate_whatever_the_chunking(tmp_path):
    """An untrained aligncr-res through the engine (its residual is 0): inside the cloud the output is the estimate
    of the whole image with the scene's colours (fitted once, SAR classes included), at a chunk size that cuts the
    cloud and at one that does not."""
    h, w = 150, 170
    cloud = np.zeros((h, w), dtype=bool)
    cloud[30:120, 40:150] = True
    opt, sar, mask = write_masked_scene(tmp_path, cloud)
    weights = save(build_model("aligncr-res"), tmp_path / "res.safetensors")
    outs = []
    for chunk in (64, 1024):
        out = tmp_path / f"out{chunk}.tif"
        run(RunConfig(optical=opt, sar=sar, mask=mask, out=out, weights=weights, mode="raw", only_cloudy=True,
                      cloud_feather=0, tile=64, overlap=8, chunk=chunk))  # fmt: skip
        with rasterio.open(out) as ds:
            outs.append(ds.read().astype(np.float32))
    with rasterio.open(opt) as ds:
        raw = ds.read().astype(np.float32)
    x = raw / 10000.0
    colours, sar_units = engine_colours_and_sar(RunConfig(optical=opt, sar=sar, mask=mask, out=tmp_path / "x.tif",
                                                           weights=weights, mode="raw"))  # fmt: skip
    assert colours is not None and colours.centres is not None  # the SAR classes are in use
    expected = prior.estimate(x, ~cloud, colours, sar_units)
    expected_dn = np.clip(np.rint(expected * 10000.0), 1, 65535)
    for got in outs:
        assert np.abs(got[:, cloud] - expected_dn[:, cloud]).max() <= 1.0
        assert np.array_equal(got[:, ~cloud], raw[:, ~cloud])


def test_the_scenes_colours_do_not_depend_on_the_strips_with_detected_clouds(tmp_path):
    """prior_colours reads the scene in strips; with detected clouds (no --mask) the detector reads each strip with
    a halo, which must be cropped off before the cloud meets the strip's pixels (a 2048² scene failed with
    'operands could not be broadcast together with shapes (512,2048) (515,2048)')."""
    from contextlib import ExitStack

    from engine.progress import Progress
    from engine.stream.scene import open_aligned_readers, open_scene_and_model, prepare_inputs, prior_colours

    rng = np.random.default_rng(3)
    dn = rng.integers(500, 3000, (4, 150, 170)).astype(np.uint16)
    dn[:, 40:100, 50:140] = 9000  # a bright block the detector calls cloud
    opt = write_optical(tmp_path / "opt.tif", dn)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    weights = save(build_model("aligncr-res"), tmp_path / "res.safetensors")
    config = RunConfig(optical=opt, sar=sar, out=tmp_path / "o.tif", weights=weights, mode="raw")
    with ExitStack() as stack:
        inp, model, _ = open_scene_and_model(config, None, stack, Progress(), [])
        prepare_inputs(config, inp, model)
        open_aligned_readers(config, inp, stack)
        whole = prior_colours(inp, strip=1024)
        strips = [prior_colours(inp, strip=s) for s in (32, 50)]
    assert whole is not None and whole.medians.shape == (4,)
    for got in strips:  # the medians exactly; the SAR's smoothing sees each strip's edges, so the classes nearly
        assert got is not None and np.allclose(got.medians, whole.medians, atol=1e-6)


def test_each_pixel_goes_to_its_nearest_class_the_first_on_a_tie():
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 1, (5, 2))
    points = rng.normal(0, 1, (3000, 2)).astype(np.float32)
    points[:10] = ((centres[1] + centres[3]) / 2).astype(np.float32)  # nearer neither, or tied
    brute = np.argmin(((points[:, None, :] - centres[None].astype(np.float32)) ** 2).sum(axis=2), axis=1)
    assert np.array_equal(prior._nearest(points, centres), brute)
