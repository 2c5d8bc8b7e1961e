"""NDVI values, classes, the windowed atomic GeoTIFF writer and the ``ndvi`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from engine.cli import main
from engine.errors import InputError, OutputError
from engine.outputs.ndvi import NDVI_CLASS_EDGES, NDVI_CLASS_NODATA, NDVI_NODATA, ndvi, ndvi_class, write_ndvi
from engine.progress import Progress


def test_ndvi_values_and_nodata():
    red = np.array([0.1, 0.2, 0.0, 0.3, np.nan, -0.5])
    nir = np.array([0.3, 0.2, 0.0, 0.1, 0.2, 0.1])
    out = ndvi(red, nir)
    assert out.dtype == np.float32
    assert out[0] == pytest.approx(0.5)
    assert out[1] == pytest.approx(0.0)
    assert out[2] == NDVI_NODATA  # red + nir == 0
    assert out[3] == pytest.approx(-0.5)
    assert out[4] == NDVI_NODATA  # non-finite
    assert out[5] == NDVI_NODATA  # |NDVI| > 1 from a negative reflectance
    masked = ndvi(red, nir, valid=np.array([False, True, True, True, True, True]))
    assert masked[0] == NDVI_NODATA and masked[1] == pytest.approx(0.0)


def test_ndvi_five_classes():
    assert NDVI_CLASS_EDGES == (-0.1, 0.1, 0.4, 0.8)
    v = np.array([-0.2, -0.1, 0.05, 0.1, 0.5, 0.8, 0.95, NDVI_NODATA], dtype=np.float32)
    assert ndvi_class(v).tolist() == [0, 1, 1, 2, 3, 4, 4, NDVI_CLASS_NODATA]


def _write(path, data, nodata=0):
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=str(data.dtype),
        crs="EPSG:32646", transform=from_origin(500000, 3000000, 3, 3), nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _optical(h=70, w=1100):
    rng = np.random.default_rng(0)
    data = rng.integers(100, 5000, size=(4, h, w)).astype(np.uint16)
    data[:, :3, :5] = 0  # nodata corner
    return data


def test_write_ndvi_windowed_georeferenced(tmp_path):
    data = _optical()
    src = tmp_path / "in.tif"
    _write(src, data)
    out = write_ndvi(src, tmp_path / "ndvi.tif", red_band=3, nir_band=4)
    with rasterio.open(out) as ds, rasterio.open(src) as s:
        assert ds.crs == s.crs and ds.transform == s.transform and ds.dtypes[0] == "float32"
        assert ds.nodata == NDVI_NODATA
        got = ds.read(1)
    red, nir = data[2].astype(float), data[3].astype(float)
    with np.errstate(invalid="ignore"):
        expected = (nir - red) / (nir + red)
    assert np.all(got[:3, :5] == NDVI_NODATA)
    np.testing.assert_allclose(got[3:], expected[3:], rtol=1e-6)
    assert not list(tmp_path.glob(".*partial*"))


def test_write_ndvi_cancel_leaves_nothing(tmp_path):
    src = tmp_path / "in.tif"
    _write(src, _optical(h=40, w=2100))  # three windows
    progress = Progress()
    progress.callback = lambda f, m: progress.cancel()
    with pytest.raises(Exception, match="cancelled"):
        write_ndvi(src, tmp_path / "ndvi.tif", 3, 4, progress=progress)
    assert list(tmp_path.iterdir()) == [src]


def test_write_ndvi_user_errors(tmp_path):
    src = tmp_path / "in.tif"
    _write(src, _optical(h=8, w=8))
    with pytest.raises(InputError, match="band 5"):
        write_ndvi(src, tmp_path / "o.tif", 3, 5)
    with pytest.raises(InputError, match="not found"):
        write_ndvi(tmp_path / "missing.tif", tmp_path / "o.tif", 3, 4)
    with pytest.raises(OutputError):
        write_ndvi(src, tmp_path / "no" / "o.tif", 3, 4)


def test_ndvi_cli(tmp_path, capsys):
    src = tmp_path / "in.tif"
    data = _optical(h=10, w=12)
    # bands stored as NIR, R, G, B
    _write(src, data[::-1].copy())
    out = tmp_path / "n.tif"
    assert main(["ndvi", "--optical", str(src), "--out", str(out), "--bands", "4,3,2,1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["red_band"] == 2 and summary["nir_band"] == 1
    with rasterio.open(out) as ds:
        got = ds.read(1)
    red, nir = data[2].astype(float), data[3].astype(float)
    with np.errstate(invalid="ignore"):
        expected = (nir - red) / (nir + red)
    np.testing.assert_allclose(got[3:], expected[3:], rtol=1e-6)
    assert main(["ndvi", "--input", str(tmp_path / "nope.tif"), "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["ndvi", "--input", str(src), "--out", str(out), "--bands", "1,2,3"])
