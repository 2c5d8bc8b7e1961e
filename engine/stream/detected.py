"""The run's cloud when the trained detector is its source: streamed once over the scene into a mask raster.

:func:`engine.sources.resolve.resolve_mask` decides where a run's cloud comes from. A mask raster (the user's, the
product's) is read window by window by every consumer — the only-cloudy weight, the estimate's clear pixels, the
colour anchor, scene adaptation, the scene check, the report. The hand-made rule is cheap enough to recompute in each
of those windows. The trained detector is not (≈ 0.15 CPU s per 256 px tile), so it runs once, before them, window by
window (:mod:`engine.align.detector`: its tile grid is the scene's, so the windows give the whole scene's classes), into
an in-memory compressed GeoTIFF (1 = cloud, 2 = shadow) that the run then opens as its mask: from there on it is a
mask like any other, and memory holds one window of the detector at a time. A second pass over that raster keeps a
shadow only near a cloud (:func:`engine.align.detector.shadows_near_clouds`), each window read with a halo as wide as
that distance, so it too decides as on the whole scene.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import ExitStack

import numpy as np
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window

from engine.align import detector
from engine.config import RunConfig
from engine.progress import Progress
from engine.sources.masks import TRAINED, describe
from engine.sources.product import Materialised, ResolvedSource
from engine.sources.raster import input_read_errors, open_raster, valid_mask
from engine.stream.chunks import OpenedInputs

log = logging.getLogger("engine")


def take_cloud_source(config: RunConfig, inp: OpenedInputs, source: ResolvedSource | None, store: Materialised,
                      stack: ExitStack, progress: Progress, threads: int = 1) -> RunConfig:  # fmt: skip
    """Say once where the run's cloud comes from; with the trained detector, detect it into ``store`` and open it as
    ``inp.mask``. Returns ``config`` with ``mask`` naming what was read (the report reads the same)."""
    if source is None:
        return config
    log.info("cloud mask: %s", describe(source))
    if source.driver != TRAINED:
        return config
    det = detector.TrainedDetector(threads=threads)
    with input_read_errors("the optical image"):
        name = _detect_into(det, inp, store, progress)
    inp.mask = stack.enter_context(open_raster(name, "cloud mask"))
    return dataclasses.replace(config, mask=name)


def _detect_into(det: detector.TrainedDetector, inp: OpenedInputs, store: Materialised, progress: Progress) -> str:
    """Stream the detector over the optical image into a new in-memory mask raster, then keep only the shadows near
    a cloud (:func:`engine.align.detector.shadows_near_clouds`: a second pass, since a window's shadows need the
    clouds of its neighbours, which the detector has not yet seen); the mask's name."""
    shape = (inp.grid.height, inp.grid.width)
    f = detector.factor_for(abs(inp.grid.transform.a))
    bands = [b + 1 for b in inp.band_index[:4]]

    def read(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        raw = inp.optical.read(bands, window=Window(x0, y0, x1 - x0, y1 - y0))
        return raw.astype(np.float32) / np.float32(inp.optical_scale), valid_mask(raw, inp.optical.nodata)

    profile = {"driver": "GTiff", "width": shape[1], "height": shape[0], "count": 1, "dtype": "uint8",
               "crs": inp.grid.crs, "transform": inp.grid.transform, "tiled": True, "blockxsize": 256,
               "blockysize": 256, "compress": "deflate"}  # fmt: skip
    parts = list(detector.windows(shape, f))
    with MemoryFile() as unfiltered:
        with unfiltered.open(**profile) as dst:
            for i, (r0, r1, c0, c1) in enumerate(parts):
                progress.update(i / len(parts), f"cloud detector: window {i + 1}/{len(parts)}")
                progress.check_cancelled()
                labels = detector.fine_classes(det, read, shape, f, (r0, r1, c0, c1))
                _, ok = read(r0, r1, c0, c1)
                dst.write((labels * ok)[None], window=Window(c0, r0, c1 - c0, r1 - r0))
        with unfiltered.open() as src:
            return _shadows_near_clouds(src, store, profile, parts, f)


def _shadows_near_clouds(src: DatasetReader, store: Materialised, profile: dict, parts: list[tuple[int, int, int, int]],
                         f: int) -> str:  # fmt: skip
    """The detector's classes in ``src`` with the shadows far from every cloud set clear, window by window into a
    new in-memory mask raster; its name."""
    shape, pixel_m = (src.height, src.width), (abs(src.transform.e), abs(src.transform.a))

    def read(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return src.read(1, window=Window(x0, y0, x1 - x0, y1 - y0))

    memfile = store.memory_file()
    with memfile.open(**profile) as dst:
        near = "" if detector.SHADOW_NEAR_M is None else f" within {detector.SHADOW_NEAR_M:g} m of a cloud"
        dst.update_tags(1, ALIGNCR_CLOUD_MASK=f"0 = clear, 1 = cloud, 2 = cloud shadow{near} (engine.align.detector)")
        for r0, r1, c0, c1 in parts:
            labels = detector.filtered_window(read, shape, f, pixel_m, (r0, r1, c0, c1), detector.SHADOW_NEAR_M)
            dst.write(labels[None], window=Window(c0, r0, c1 - c0, r1 - r0))
    return memfile.name
