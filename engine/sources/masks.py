"""Interpreting cloud-mask rasters, and the cloud detectors a run may take the cloud from instead.

Accepted rasters: a single band where non-zero = cloud (1 = cloud, as the M3R-CR ``.npy`` masks and Fmask-style
binary masks; the trained detector's masks, 1 = cloud, 2 = shadow); or a Planet UDM2 asset (8 bands: clear, snow,
shadow, light haze, heavy haze, cloud, confidence, udm1), where cloud ∪ shadow ∪ heavy haze counts as "cloud" —
those are the pixels whose surface signal is lost and must be reconstructed from SAR.

Without a mask raster the cloud comes from a detector (:func:`detector_source`): the trained one (``ukis-csmask``,
the optional ``masks`` extra: :mod:`engine.align.detector`) when it is installed, else the hand-made brightness rule
(:mod:`engine.align.cloudmask`). Whether it is installed is decided here, without importing it, because ``engine
info`` and the resolvers must say which detector a run will use before anything heavy is loaded.
"""

from __future__ import annotations

import numpy as np

from engine.config import MASK_RULE, trained_detector_version
from engine.sources.product import ResolvedSource

UDM2_BANDS = ("clear", "snow", "shadow", "light_haze", "heavy_haze", "cloud", "confidence", "udm1")
UDM2_CLOUDY = ("cloud", "shadow", "heavy_haze")


def cloud_mask_from_bands(array: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """(bands, H, W) or (H, W) mask raster → boolean (H, W), True = cloud (or shadow / heavy haze for UDM2)."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.shape[0] == 1:
        band = a[0]
        out = band != 0
        if nodata is not None:
            out &= band != nodata
        return out
    if a.shape[0] == len(UDM2_BANDS):
        out = np.zeros(a.shape[1:], dtype=bool)
        for name in UDM2_CLOUDY:
            out |= a[UDM2_BANDS.index(name)] > 0
        return out
    raise ValueError(
        f"a cloud mask must have 1 band (1 = cloud) or be a Planet UDM2 asset (8 bands); this one has {a.shape[0]}"
    )


# The ``driver`` of a mask source that is a detector rather than a raster (engine.sources.resolve.resolve_mask).
TRAINED, RULE = "ukis-csmask", "rule"
DETECTORS = (TRAINED, RULE)
EXTRA_HINT = "pip install 'aligncr[masks]'"
RULE_KIND = "hand-made brightness rule (no shadows; thin haze and cloud fringes are missed)"


def detector_source(given: str | None) -> ResolvedSource:
    """The detector a run takes the cloud from when no mask raster is used: the trained one where installed (unless
    ``given`` is ``rule``), else the hand-made rule, whose note says how to get the trained one (the run says it
    once, :func:`describe`)."""
    version = None if given == MASK_RULE else trained_detector_version()
    if version is not None:
        return ResolvedSource("cloud mask", given or "", f"trained detector (ukis-csmask {version}: cloud and cloud "
                              "shadow, 4-band B, G, R, NIR model at about 10 m)", (), TRAINED, ("cloud",), (1,))
    notes = ("--mask rule",) if given == MASK_RULE else (f"no trained cloud detector installed ({EXTRA_HINT})",)
    return ResolvedSource("cloud mask", given or "", RULE_KIND, (), RULE, ("cloud",), (1,), notes=notes)


def describe(source: ResolvedSource) -> str:
    """One line on where a run's cloud comes from (the run's log, ``engine info``, the output's tags, the report)."""
    if is_detector(source):
        return f"detected: {source.kind}" + "".join(f"; {note}" for note in source.notes)
    return f"{source.kind}: {source.given}"


def is_detector(source: ResolvedSource | None) -> bool:
    """True for a mask source that is a detector (no raster to open)."""
    return source is not None and source.driver in DETECTORS
