"""Reprojection onto the optical grid: geometry (EPSG:4326 SAR onto UTM 3 m), coverage, NaN handling, resampling."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers_rasters import UTM32N, WGS84, footprint_transform, write_optical, write_sar
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from engine.align.reader import AlignedReader, Grid, bounds_overlap, coverage_fraction


@pytest.fixture()
def optical(tmp_path):
    return write_optical(tmp_path / "opt.tif", height=90, width=110)


def _ids_sar(tmp_path, optical, margin=3e-4):
    """SAR in EPSG:4326 whose pixel values are their own (row * 1000 + col): reading one back says where it came
    from."""
    transform, w, h = footprint_transform(optical, WGS84, 9e-5, margin=margin)
    rows, cols = np.mgrid[0:h, 0:w]
    ids = (rows * 1000 + cols).astype(np.float32)
    path = write_sar(tmp_path / "ids.tif", np.stack([ids, ids]), crs=WGS84, transform=transform)
    return path, transform


def test_sar_in_4326_lands_on_the_right_optical_pixels(tmp_path, optical):
    sar_path, sar_transform = _ids_sar(tmp_path, optical)
    with rasterio.open(optical) as opt, rasterio.open(sar_path) as sar:
        grid = Grid.of(opt)
        with AlignedReader(sar, grid, (1, 2)) as reader:
            aligned = reader.read(Window(0, 0, grid.width, grid.height))[0]
    assert np.isfinite(aligned).all()
    # Independent expectation: optical pixel centre → lon/lat (PROJ) → SAR pixel index.
    rr, cc = np.mgrid[0 : grid.height, 0 : grid.width]
    x, y = grid.transform * (cc.ravel() + 0.5, rr.ravel() + 0.5)
    lon, lat = warp_transform(UTM32N, WGS84, x, y)
    col_f, row_f = ~sar_transform * (np.asarray(lon), np.asarray(lat))
    exp_row, exp_col = np.floor(row_f).astype(int), np.floor(col_f).astype(int)
    got_row, got_col = (aligned.ravel() // 1000).astype(int), (aligned.ravel() % 1000).astype(int)
    # Every optical pixel takes its value from the SAR pixel under it, ±1 SAR pixel on boundaries (GDAL's warper
    # approximates the transform to 1/8 px), and exactly for the vast majority.
    assert np.abs(got_row - exp_row).max() <= 1 and np.abs(got_col - exp_col).max() <= 1
    assert np.mean((got_row == exp_row) & (got_col == exp_col)) > 0.97


def test_known_block_lands_within_one_optical_pixel(tmp_path, optical):
    """A bright SAR block at known lon/lat bounds lights exactly the optical pixels inside those bounds (±1 px)."""
    transform, w, h = footprint_transform(optical, WGS84, 9e-5, margin=3e-4)
    data = np.full((2, h, w), -20.0, dtype=np.float32)
    data[:, 5:9, 6:12] = -2.0
    sar = write_sar(tmp_path / "block.tif", data, crs=WGS84, transform=transform)
    with rasterio.open(optical) as opt, rasterio.open(sar) as src:
        grid = Grid.of(opt)
        with AlignedReader(src, grid, (1, 2)) as reader:
            lit = reader.read_all()[0] > -10
    # Expected footprint: optical pixel centres whose lon/lat fall inside the block's lon/lat rectangle.
    lon0, lat1 = transform * (6, 5)
    lon1, lat0 = transform * (12, 9)
    rr, cc = np.mgrid[0 : grid.height, 0 : grid.width]
    x, y = grid.transform * (cc.ravel() + 0.5, rr.ravel() + 0.5)
    lon, lat = (np.asarray(v) for v in warp_transform(UTM32N, WGS84, x, y))
    expected = ((lon > lon0) & (lon < lon1) & (lat > lat0) & (lat < lat1)).reshape(grid.height, grid.width)
    assert expected.sum() > 100
    from scipy import ndimage

    assert not (lit & ~ndimage.binary_dilation(expected)).any()
    assert not (expected & ~ndimage.binary_dilation(lit)).any()


def test_coverage_and_bounds_overlap(tmp_path, optical):
    # SAR covering the western half of the optical footprint only: same origin, half the columns.
    transform, w, h = footprint_transform(optical, WGS84, 9e-5)
    west = write_sar(tmp_path / "west.tif", crs=WGS84, transform=transform, height=h, width=w // 2)
    far = write_sar(tmp_path / "far.tif", like=optical, crs=WGS84)
    with rasterio.open(far) as f:
        moved = f.profile
    moved["transform"] = rasterio.Affine.translation(5.0, 0) * f.transform  # 5° east: far away
    with rasterio.open(tmp_path / "away.tif", "w", **moved) as dst, rasterio.open(far) as f:
        dst.write(f.read())
    with rasterio.open(optical) as opt:
        grid = Grid.of(opt)
        with rasterio.open(west) as s:
            assert bounds_overlap(s, grid)
            assert coverage_fraction(s, grid, (1, 2)) == pytest.approx(0.5, abs=0.06)
        with rasterio.open(tmp_path / "away.tif") as s:
            assert not bounds_overlap(s, grid)
        with rasterio.open(far) as s:
            assert coverage_fraction(s, grid, (1, 2)) == pytest.approx(1.0)


def test_missing_where_names_the_uncovered_edges():
    """Issue 28: a partial coverage warning says where the gap is (and is only given below 98 %)."""
    from engine.align.reader import missing_where

    covered = np.ones((64, 64), dtype=bool)
    covered[:, 50:] = False
    assert missing_where(covered) == "along the east edge"
    covered[:10, :] = False
    assert missing_where(covered) == "along the north and east edges"
    holes = np.ones((64, 64), dtype=bool)
    holes[30:34, 30:34] = False
    assert missing_where(holes) == "in gaps inside the image"


def test_nan_inf_and_nodata_become_nan(tmp_path, optical):
    transform, w, h = footprint_transform(optical, UTM32N, 10.0)
    data = np.full((2, h, w), -10.0, dtype=np.float32)
    data[:, 0, 0] = np.nan
    data[:, 1, 1] = np.inf
    data[:, 2, 2] = -9999.0
    sar = write_sar(tmp_path / "holes.tif", data, crs=UTM32N, transform=transform, nodata=-9999.0)
    with rasterio.open(optical) as opt, rasterio.open(sar) as src:
        out = AlignedReader(src, Grid.of(opt), (1, 2)).read_all()
    assert np.isnan(out[:, 0, 0]).all()  # SAR pixel (0, 0) covers optical (0..3, 0..3)
    assert np.isnan(out[:, 4, 4]).all()  # inf at SAR (1, 1) → optical (3.3..6.6)
    assert np.isnan(out[:, 8, 8]).all()  # nodata at SAR (2, 2) → optical (6.6..10)
    assert np.isfinite(out[:, 20:, 20:]).all()
    assert np.nanmax(out) == -10.0


def test_bilinear_interpolates_nearest_replicates(tmp_path, optical):
    transform, w, h = footprint_transform(optical, UTM32N, 10.0)
    cols = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    sar = write_sar(tmp_path / "ramp.tif", np.stack([cols, cols]), crs=UTM32N, transform=transform)
    with rasterio.open(optical) as opt, rasterio.open(sar) as src:
        grid = Grid.of(opt)
        near = AlignedReader(src, grid, (1, 2), "nearest").read_all()[0, 10]
        bil = AlignedReader(src, grid, (1, 2), "bilinear").read_all()[0, 10]
    assert set(np.unique(near)) <= set(range(w))  # only original values
    assert len(np.unique(bil[5:-5])) > 2 * len(np.unique(near[5:-5]))  # in-between values
    np.testing.assert_allclose(bil[5:-5], near[5:-5], atol=1.0)
