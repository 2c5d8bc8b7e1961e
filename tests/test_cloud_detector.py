"""Where a run's cloud comes from (issue 29): the fallback order, the trained detector on real Sentinel-2, streaming
equal to the whole scene, a broken model file in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import engine.sources.masks as masks
from engine.config import RunConfig
from engine.errors import ModelError
from engine.sources.masks import RULE, TRAINED
from engine.sources.product import ResolvedSource
from engine.sources.resolve import resolve_mask

OPTICAL = ResolvedSource("optical", "scene.tif", "raster", ("scene.tif",), "GTiff", ("blue",), (1,))
UDM2 = ResolvedSource("cloud mask", "scene_udm2.tif", "Planet UDM2", ("scene_udm2.tif",), "GTiff", ("udm2",), (1,))


def _installed(monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    monkeypatch.setattr(masks, "trained_detector_version", lambda: version)


def test_fallback_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file given wins; auto takes the product's own, else the trained detector where installed, else the rule;
    no --mask and detect skip the product's; rule is the rule even with the trained one installed."""
    given = tmp_path / "mask.tif"
    with rasterio.open(given, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 4, 4), np.uint8))
    with_udm2 = ResolvedSource(**{**OPTICAL.__dict__, "mask": UDM2})
    _installed(monkeypatch, "1.0.0")
    assert resolve_mask(str(given), with_udm2).given == str(given)
    assert resolve_mask("auto", with_udm2) is UDM2
    auto = resolve_mask("auto", OPTICAL)
    assert auto.driver == TRAINED and "comes with no cloud mask" in auto.warnings[0]
    assert resolve_mask(None, with_udm2).driver == TRAINED and resolve_mask("detect", with_udm2).driver == TRAINED
    assert resolve_mask("rule", OPTICAL).driver == RULE
    _installed(monkeypatch, None)
    fallback = resolve_mask(None, OPTICAL)
    assert fallback.driver == RULE and "pip install 'aligncr[masks]'" in masks.describe(fallback)
    assert resolve_mask("auto", OPTICAL).driver == RULE


def _scene(tmp_path: Path, optical: np.ndarray, res: float = 10.0) -> dict[str, Path]:
    """``optical`` (uint16 DN, 4+ bands) and a flat SAR as a small UTM scene."""
    paths = {"optical": tmp_path / "optical.tif", "sar": tmp_path / "sar.tif"}
    for key, data, dtype in (("optical", optical, "uint16"),
                             ("sar", np.full((2, *optical.shape[1:]), -12.0), "float32")):  # fmt: skip
        with rasterio.open(paths[key], "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype=dtype, crs="EPSG:32632",
                           transform=from_origin(500000, 5000000, res, res), nodata=0 if dtype == "uint16" else None,
                           ) as ds:  # fmt: skip
            ds.write(data.astype(dtype))
    return paths


def _run(paths: dict[str, Path], tmp_path: Path, **options: object):  # noqa: ANN202 - a RunResult
    from engine.stream.pipeline import run

    config = RunConfig(optical=paths["optical"], sar=paths["sar"], out=tmp_path / "out.tif", qa=tmp_path / "qa.tif",
                       model="identity", mode="raw", only_cloudy=True, **options)  # fmt: skip
    return run(config)


def test_rule_said_once_and_tagged_without_the_extra(tmp_path: Path) -> None:
    """Without the extra the run works with the rule; its QA layer says so (conftest hides the trained one)."""
    optical = np.full((4, 64, 64), 400, np.uint16)
    optical[:, 20:40, 20:40] = 6000
    result = _run(_scene(tmp_path, optical), tmp_path)
    assert result.cloud_mask.startswith("detected: hand-made brightness rule")
    with rasterio.open(tmp_path / "qa.tif") as ds:
        assert json.loads(ds.tags()["ALIGNCR_SETTINGS"])["cloud_mask"] == result.cloud_mask


@pytest.fixture
def detector_module():
    pytest.importorskip("ukis_csmask", reason="the 'masks' extra (ukis-csmask) is not installed")
    pytest.importorskip("onnxruntime", reason="the 'masks' extra (onnxruntime) is not installed")
    from engine.align import detector

    return detector


def _s2(shared_data: Path, sid: str) -> tuple[np.ndarray, np.ndarray]:
    folder = shared_data / "sen12mscr_triplets"
    if not (folder / "cloudmask" / f"{sid}.tif").is_file():
        pytest.skip(f"SEN12MS-CR triplet {sid} is absent from {folder}")
    with rasterio.open(folder / "s2_cloudy" / f"{sid}.tif") as ds:
        bgrn = ds.read([2, 3, 4, 8]).astype(np.float32) / 10000.0
    with rasterio.open(folder / "cloudmask" / f"{sid}.tif") as ds:
        return bgrn, ds.read(1) > 0


@pytest.mark.trained_detector
@pytest.mark.shared
def test_detector_on_real_sentinel2(detector_module, shared_data: Path) -> None:
    """SEN12MS-CR 4065 (Sentinel-2 L1C, 70 % cloud): the trained detector agrees with the shipped mask (IoU ≥ 0.75,
    0.81 measured) and marks cloud shadow besides."""
    bgrn, shipped = _s2(shared_data, "4065")
    labels = detector_module.detect_array(detector_module.TrainedDetector(), bgrn)
    found = labels > 0
    assert (found & shipped).sum() / (found | shipped).sum() >= 0.75
    assert (labels == detector_module.SHADOW).mean() > 0.05


@pytest.mark.trained_detector
@pytest.mark.shared
@pytest.mark.slow
def test_run_takes_the_trained_detector(detector_module, shared_data: Path, tmp_path: Path) -> None:
    """A real Sentinel-2 scene without --mask: the run's cloud is the trained detector's, streamed into the mask it
    reads, and its QA layer and result say so."""
    bgrn, _ = _s2(shared_data, "4065")
    result = _run(_scene(tmp_path, np.rint(bgrn * 10000).clip(1, 65535)), tmp_path)
    assert result.cloud_mask.startswith("detected: trained detector (ukis-csmask")
    assert result.cloud_fraction is not None and 0.5 < result.cloud_fraction < 1.0
    with rasterio.open(tmp_path / "qa.tif") as ds:
        assert "trained detector" in json.loads(ds.tags()["ALIGNCR_SETTINGS"])["cloud_mask"]


@pytest.mark.trained_detector
@pytest.mark.parametrize("factor", [1, 3])
def test_streaming_equals_whole_scene(detector_module, monkeypatch: pytest.MonkeyPatch, factor: int) -> None:
    """Windows of a scene-wide tile grid give the whole scene's classes (a tolerance of 0.1 % of the pixels for
    the floating-point order of a tile's operations; measured: identical), and so does the shadow filter's second
    pass over them (300 m: a halo smaller than the scene)."""
    rng = np.random.default_rng(0)
    field = rng.random((4, 30, 28)).astype(np.float32)
    image = np.kron(field, np.ones((1, 11, 11), np.float32))[:, :310, :300] * 0.5  # blobs of 11 px
    ok = np.ones(image.shape[1:], bool)
    det = detector_module.TrainedDetector()
    pixel_m = 10.0 / factor
    whole = detector_module.detect_array(det, image, ok, f=factor, near_m=None)
    filtered = detector_module.shadows_near_clouds(whole, (pixel_m, pixel_m), factor, 300.0)
    monkeypatch.setattr(detector_module, "CORE", 60 if factor == 1 else 40)

    def read(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        return image[:, y0:y1, x0:x1], ok[y0:y1, x0:x1]

    streamed = np.zeros_like(whole)
    parts = list(detector_module.windows(ok.shape, factor))
    assert len(parts) > 4
    for r0, r1, c0, c1 in parts:
        streamed[r0:r1, c0:c1] = detector_module.fine_classes(det, read, ok.shape, factor, (r0, r1, c0, c1))
    assert (streamed == whole).mean() >= 0.999
    second = np.zeros_like(whole)
    for window in parts:
        r0, r1, c0, c1 = window
        second[r0:r1, c0:c1] = detector_module.filtered_window(
            lambda y0, y1, x0, x1: streamed[y0:y1, x0:x1], ok.shape, factor, (pixel_m, pixel_m), window, 300.0
        )
    assert (second == filtered).mean() >= 0.999


@pytest.mark.trained_detector
def test_broken_model_file_is_one_line(detector_module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A truncated model file: one ModelError line naming it and the way out, from the detector and from a run."""
    bad = tmp_path / "model_4b_l1c.onnx"
    bad.write_bytes(b"\x08\x07 not a model")
    stats = detector_module.model_files()[1]
    with pytest.raises(ModelError) as caught:
        detector_module.TrainedDetector((bad, stats))
    assert "\n" not in str(caught.value) and str(bad) in str(caught.value) and "--mask rule" in str(caught.value)
    monkeypatch.setattr(detector_module, "model_files", lambda level="l1c": (bad, stats))
    optical = np.full((4, 32, 32), 500, np.uint16)
    with pytest.raises(ModelError, match="cloud detector's model cannot be loaded"):
        _run(_scene(tmp_path, optical), tmp_path)


def test_env_says_which_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """``engine env`` (what the plugin's Check environment reads) names the cloud detector runs will use."""
    import importlib.util

    from engine.commands import env

    installed = importlib.util.find_spec("ukis_csmask") is not None and importlib.util.find_spec("onnxruntime")
    report = env.collect()
    assert (report.cloud_detector or "").startswith("ukis-csmask ") == bool(installed)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ukis_csmask" else real(name, *a))
    report = env.collect()
    assert report.cloud_detector is None and "clouds       hand-made brightness rule" in env.format_text(report)
