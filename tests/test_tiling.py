"""Tile grid, blending window, chunked blend == whole-scene blend, and the seam test through the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import write_optical, write_sar

from engine.config import RunConfig
from engine.stream.pipeline import run
from engine.stream.tiling import ChunkBlender, TileGrid, blend_window, chunks, reflect_pad


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


@pytest.mark.parametrize("size", [1, 15, 64, 100, 223, 224, 225, 500])
def test_grid_covers_every_pixel_with_the_fewest_tiles(size):
    grid = TileGrid(size, size + 7, tile=64, overlap=16)
    covered = np.zeros((size, size + 7), dtype=int)
    for t in grid:
        covered[t.y : t.y + 64, t.x : t.x + 64] += 1
        assert t.y < size and t.x < size + 7  # every tile starts inside the image
    assert covered.min() >= 1
    # One tile fewer per axis would leave the last rows/cols uncovered.
    assert (grid.rows - 2) * grid.stride + 64 < size or grid.rows == 1


def test_blend_window_shape():
    w = blend_window(64, 16)
    assert w.shape == (64, 64)
    assert w[16:48, 16:48].min() == pytest.approx(1.0)
    assert 0 < w.min() < 0.01  # positive floor at the corners
    np.testing.assert_allclose(w, w[::-1, ::-1])
    profile = w[32]
    assert np.all(np.diff(profile[:16]) > 0)  # monotone ramp
    # Cross-fade: a tile's ramp-down plus its neighbour's ramp-up stays close to one everywhere in the overlap.
    assert np.all(profile[:16] + profile[48:] > 0.99)


def test_reflect_pad_mirrors_the_edge():
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    p = reflect_pad(a, 2, 3)
    assert p.shape == (1, 5, 7)
    np.testing.assert_array_equal(p[0, 3], [4, 5, 6, 7, 6, 5, 4])  # row 3 mirrors row 1, col 4.. mirror cols 2..0
    np.testing.assert_array_equal(reflect_pad(np.ones((1, 1, 1)), 3, 3), np.ones((1, 4, 4)))


@pytest.mark.parametrize(
    "h,w,tile,overlap,chunk_px",
    [(100, 130, 32, 8, 40), (64, 64, 32, 8, 1), (250, 97, 48, 0, 50), (17, 300, 32, 15, 100), (33, 33, 64, 16, 64),
     (1, 700, 256, 32, 300)],
)
def test_chunked_blend_equals_whole_scene_blend(h, w, tile, overlap, chunk_px):
    rng = np.random.default_rng(0)
    grid = TileGrid(h, w, tile, overlap)
    th, tw = grid.tile_h, grid.tile_w  # a tile never exceeds the scene: 17 × 32 on the 17-row strip
    preds = {(t.row, t.col): rng.random((2, th, tw)).astype(np.float32) for t in grid}
    win = grid.window()
    acc = np.zeros((3, grid.rows * grid.stride_y + th, grid.cols * grid.stride_x + tw))
    for t in grid:
        acc[:2, t.y : t.y + th, t.x : t.x + tw] += preds[(t.row, t.col)] * win
        acc[2, t.y : t.y + th, t.x : t.x + tw] += win
    expected = acc[:2, :h, :w] / acc[2, :h, :w]

    out = np.full((2, h, w), np.nan)
    blender = ChunkBlender(grid, 2)
    for ch in chunks(grid, chunk_px):
        blender.start(ch)
        for t in ch.tiles:
            blender.add(t, preds[(t.row, t.col)])
        y, x, data = blender.finish()
        assert np.isnan(out[:, y : y + data.shape[1], x : x + data.shape[2]]).all()  # each pixel written once
        out[:, y : y + data.shape[1], x : x + data.shape[2]] = data
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def _ramp_scene(tmp_path, width=200, height=96):
    """Optical whose every band ramps 20 DN per pixel in x, so per-tile means differ by stride × 20 DN."""
    x = np.arange(width, dtype=np.float32)
    ramp = np.broadcast_to(1000 + 20 * x, (4, height, width)).astype(np.uint16)
    opt = write_optical(tmp_path / "ramp.tif", ramp)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    return opt, sar


@pytest.mark.parametrize("overlap,blended", [(16, True), (0, False)])
def test_no_seams_with_a_tile_position_dependent_model(tmp_path, overlap, blended):
    opt, sar = _ramp_scene(tmp_path)
    out = tmp_path / f"out{overlap}.tif"
    run(RunConfig(optical=opt, sar=sar, out=out, model="test-tile-mean", tile=64, overlap=overlap, chunk=64))
    with rasterio.open(out) as ds:
        data = ds.read(1).astype(np.float64)
    stride = 64 - overlap
    step = stride * 20.0  # jump between the constant outputs of two neighbouring tiles
    jumps = np.abs(np.diff(data, axis=1)).max()
    if blended:
        assert jumps < 0.25 * step, f"visible seam: {jumps} DN between neighbours (tile step {step})"
    else:  # without overlap the same model shows the full step: the check above can fail
        assert jumps > 0.9 * step


def test_chunk_size_does_not_change_the_result(tmp_path):
    opt, sar = _ramp_scene(tmp_path, width=150, height=130)
    outs = []
    for chunk in (40, 10_000):
        out = tmp_path / f"c{chunk}.tif"
        run(RunConfig(optical=opt, sar=sar, out=out, model="test-tile-mean", tile=48, overlap=12, chunk=chunk))
        with rasterio.open(out) as ds:
            outs.append(ds.read())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_output_block_height_divides_chunk_rows():
    from engine.stream.tiling import output_block_height

    grid = TileGrid(5000, 5000, tile=256, overlap=32)  # stride 224, 4 tiles per 1024-px chunk: rows of 896
    assert output_block_height(grid, 1024) == 448
    assert output_block_height(TileGrid(5000, 5000, tile=512, overlap=0), 1024) == 512
    assert output_block_height(TileGrid(5000, 5000, tile=250, overlap=32), 1024) == 512  # 872: no fit, fallback
