"""A shadow needs a cloud (issue 29): the detector's shadow far from every detected cloud is dropped, the distance is
in metres whatever the pixel size, and the streamed filter decides as the whole scene. Pure numpy on made-up class
maps: the model (the 'masks' extra) is not needed."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from engine.align import detector
from engine.align.detector import CLEAR, CLOUD, SHADOW, shadows_near_clouds
from engine.sources.product import Materialised


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_far_dark_patch_dropped_shadow_beside_cloud_kept() -> None:
    """10 m pixels, 1 km: a shadow 150 m beside a cloud stays, a dark patch 2 km away goes; without any cloud in the
    scene every shadow goes; clouds are never touched."""
    labels = np.zeros((300, 300), np.uint8)
    labels[_disc(labels.shape, (50, 50), 20)] = CLOUD
    labels[_disc(labels.shape, (50, 85), 10)] = SHADOW  # its nearest edge 15 px = 150 m from the cloud
    labels[_disc(labels.shape, (250, 250), 15)] = SHADOW  # ≈ 2.6 km away
    out = shadows_near_clouds(labels, (10.0, 10.0), 1, 1000.0)
    assert (out[labels == CLOUD] == CLOUD).all()
    assert (out[_disc(labels.shape, (50, 85), 10)] == SHADOW).all()
    assert (out[_disc(labels.shape, (250, 250), 15)] == CLEAR).all()
    no_cloud = np.where(labels == CLOUD, CLEAR, labels).astype(np.uint8)
    assert not (shadows_near_clouds(no_cloud, (10.0, 10.0), 1, 1000.0) == SHADOW).any()
    assert (shadows_near_clouds(labels, (10.0, 10.0), 1, None) == labels).all()


@pytest.mark.parametrize(("pixel_m", "f"), [(10.0, 1), (3.0, 3)])
def test_distance_is_in_metres(pixel_m: float, f: int) -> None:
    """The same ground at 10 m (Sentinel-2) and 3 m (PlanetScope, decided in 3 × 3 blocks): with 500 m, a shadow
    pixel 400 m from the cloud's edge stays and one 600 m away goes."""
    n = int(round(2000 / pixel_m))
    labels = np.zeros((n, n), np.uint8)
    edge = int(round(600 / pixel_m))
    labels[:, :edge] = CLOUD
    for metres in (400, 600):
        labels[:, edge + int(round(metres / pixel_m))] = SHADOW
    out = shadows_near_clouds(labels, (pixel_m, pixel_m), f, 500.0)
    assert (out[:, edge + int(round(400 / pixel_m))] == SHADOW).all()
    assert (out[:, edge + int(round(600 / pixel_m))] == CLEAR).all()


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Clouds and shadows in blobs of 7 px, about a third of each, and clear."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 3, (shape[0] // 7 + 1, shape[1] // 7 + 1)).astype(np.uint8)
    coarse = np.where(rng.random(field.shape) < 0.9, np.where(field == CLOUD, CLEAR, field), field)  # few clouds
    return np.kron(coarse, np.ones((7, 7), np.uint8))[: shape[0], : shape[1]]


@pytest.mark.parametrize(("pixel_m", "f", "near_m"), [(10.0, 1, 150.0), (3.0, 3, 150.0)])
def test_streamed_filter_equals_whole_scene(monkeypatch: pytest.MonkeyPatch, pixel_m: float, f: int,
                                            near_m: float) -> None:  # fmt: skip
    """Windows of the detector's stream, each read with the filter's halo, give exactly the whole scene's filtered
    classes, also where a cloud near a window's edge lies in its neighbour (the distance spans several windows)."""
    labels = _blobs((301, 290), seed=1)
    whole = shadows_near_clouds(labels, (pixel_m, pixel_m), f, near_m)
    assert (whole != labels).any() and ((whole == SHADOW) != (labels == SHADOW)).sum() < (labels == SHADOW).sum()
    monkeypatch.setattr(detector, "CORE", 12)

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return labels[y0:y1, x0:x1]

    streamed = np.zeros_like(labels)
    parts = list(detector.windows(labels.shape, f))
    assert len(parts) > 9 and detector.near_halo((pixel_m, pixel_m), f, near_m) > 12 * f
    for r0, r1, c0, c1 in parts:
        streamed[r0:r1, c0:c1] = detector.filtered_window(read, labels.shape, f, (pixel_m, pixel_m), (r0, r1, c0, c1),
                                                          near_m)  # fmt: skip
    assert (streamed == whole).all()


def test_run_stream_writes_the_filtered_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's second pass (engine.stream.detected) over an in-memory class raster of non-square 10 × 12 m
    pixels gives the whole scene's filtered classes, and its tag says the distance."""
    from engine.stream import detected

    labels = _blobs((260, 240), seed=2)
    pixel_m = (12.0, 10.0)  # rows, columns
    whole = shadows_near_clouds(labels, pixel_m, 1, 200.0)
    assert (whole != labels).any()
    monkeypatch.setattr(detector, "CORE", 50)
    monkeypatch.setattr(detector, "SHADOW_NEAR_M", 200.0)
    profile = {"driver": "GTiff", "width": 240, "height": 260, "count": 1, "dtype": "uint8", "crs": "EPSG:32632",
               "transform": from_origin(500000, 5000000, 10.0, 12.0)}  # fmt: skip
    with MemoryFile() as raw, Materialised() as store:
        with raw.open(**profile) as dst:
            dst.write(labels[None])
        with raw.open() as src:
            name = detected._shadows_near_clouds(src, store, profile, list(detector.windows((260, 240), 1)), 1)
        with rasterio.open(name) as ds:
            assert (ds.read(1) == whole).all()
            assert f"within {detector.SHADOW_NEAR_M:g} m of a cloud" in ds.tags(1)["ALIGNCR_CLOUD_MASK"]
