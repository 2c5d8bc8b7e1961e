"""Normalisation, land-cover mapping, cloud detector and registry basics."""

import numpy as np
import pytest
import torch

from engine.align import cloudmask
from engine.errors import ModelError
from engine.models import build_model, list_models
from engine.sources import landcover, normalise


def test_optical_normalisation_round_trip():
    dn = np.array([[0, 5000, 10000, 12000]], dtype=np.uint16)
    x = normalise.normalise_optical(dn)
    rng = np.random.default_rng(3)  # the in-place form gives exactly clip(x, 0, scale) / scale, NaN included
    for raw, scale in ((rng.integers(0, 65535, (4, 40, 40)).astype(np.uint16), 10000.0),
                       (rng.normal(0.3, 0.6, (4, 40, 40)).astype(np.float32), 1.0)):
        raw = raw.astype(np.float32)
        raw[0, 0, 0] = np.nan
        before = raw.copy()
        expected = np.clip(raw, 0.0, scale) / np.float32(scale)
        np.testing.assert_array_equal(normalise.normalise_optical(raw, scale), expected)
        np.testing.assert_array_equal(raw, before)  # the caller's array is not touched
    np.testing.assert_allclose(x, [[0.0, 0.5, 1.0, 1.0]])
    back = normalise.denormalise_optical(x, dtype=np.uint16)
    np.testing.assert_array_equal(back, [[0, 5000, 10000, 10000]])
    assert back.dtype == np.uint16


def test_sar_normalisation_uses_paper_ranges():
    sar = np.array([[[-25.0, -12.5, 0.0, 3.0]], [[-32.5, -16.25, 0.0, -40.0]]], dtype=np.float32)
    out = normalise.normalise_sar(sar)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(out[1, 0], [0.0, 0.5, 1.0, 0.0])


def test_sar_unit_detection():
    rng = np.random.default_rng(0)
    linear = rng.gamma(1.0, 0.05, size=10000)
    assert normalise.detect_sar_units(linear) == "linear"
    assert normalise.detect_sar_units(normalise.linear_to_db(linear)) == "db"


def test_optical_scale_detection():
    assert normalise.detect_optical_scale(np.array([0.1, 0.3, 0.9], dtype=np.float32)) == 1.0
    assert normalise.detect_optical_scale(np.array([1000, 3000], dtype=np.uint16)) == 10000.0


def test_worldcover_mapping():
    codes = np.array([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100, 0])
    np.testing.assert_array_equal(landcover.worldcover_to_classes(codes), [0, 1, 1, 2, 3, 4, 6, 5, 5, 6, 6, 6])


def test_cloud_detector_finds_a_bright_white_blob():
    img = np.full((4, 64, 64), 0.05, dtype=np.float32)
    img[3] = 0.3  # vegetation-like NIR
    img[:, 16:48, 16:48] = 0.7  # bright, flat cloud
    mask = cloudmask.detect_clouds(img)
    assert mask[20:44, 20:44].all()
    assert not mask[:8].any()


def test_identity_model_and_unknown_name():
    assert "identity" in [s.name for s in list_models()]
    m = build_model("identity")
    x = torch.rand(1, 4, 8, 8)
    assert torch.equal(m(x, torch.rand(1, 2, 4, 4)), x)
    with pytest.raises(ModelError):
        build_model("no-such-model")


def test_cloud_mask_single_band_and_udm2():
    from engine.sources.masks import cloud_mask_from_bands

    single = np.array([[0, 1], [255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(cloud_mask_from_bands(single, nodata=255), [[False, True], [False, False]])
    udm2 = np.zeros((8, 1, 4), dtype=np.uint8)
    udm2[5, 0, 0] = 1  # cloud
    udm2[2, 0, 1] = 1  # shadow
    udm2[3, 0, 2] = 1  # light haze: surface still visible
    udm2[4, 0, 3] = 1  # heavy haze
    np.testing.assert_array_equal(cloud_mask_from_bands(udm2)[0], [True, True, False, True])
    with pytest.raises(ValueError):
        cloud_mask_from_bands(np.zeros((3, 2, 2)))


def test_cli_command_with_missing_dependency_explains_instead_of_crashing(monkeypatch, capsys):
    import importlib

    from engine import cli

    real = importlib.import_module

    def fake_import(name, *a, **k):
        if name == "engine.commands.run":
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return real(name, *a, **k)

    monkeypatch.setattr(cli.importlib, "import_module", fake_import)
    assert cli.main(["run", "--optical", "x.tif", "--sar", "y.tif"]) == 2
    err = capsys.readouterr().err
    assert "No module named 'torch'" in err
    with pytest.raises(SystemExit):
        cli.main(["models", "--no-such-flag"])
