"""Scaling between file units and the [0, 1] network space, exactly as the Align-CR paper (§V-A).

Optical: reflectance × 10⁴ clipped to [0, 10000] then / 10000. SAR sigma0 in dB: VV clipped to [-25, 0],
VH clipped to [-32.5, 0], each rescaled linearly to [0, 1]. Unit detection (linear power vs dB, DN vs
reflectance already in [0, 1]) looks at robust statistics of valid pixels only, so a few outliers or nodata
pixels do not flip the decision; both can be forced by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OPTICAL_SCALE = 10000.0
VV_RANGE = (-25.0, 0.0)
VH_RANGE = (-32.5, 0.0)
SAR_RANGES = (VV_RANGE, VH_RANGE)


@dataclass(frozen=True)
class NormalisationConfig:
    """Normalisation constants; stored in every model card so a model is always fed what it was trained on."""

    optical_scale: float = OPTICAL_SCALE
    vv_range: tuple[float, float] = VV_RANGE
    vh_range: tuple[float, float] = VH_RANGE


def normalise_optical(x: np.ndarray, scale: float = OPTICAL_SCALE) -> np.ndarray:
    """DN (reflectance × scale) → [0, 1] float32. Pass ``scale=1`` for reflectance already in [0, 1].

    ``clip(x, 0, scale) / scale`` done in place on one float32 copy: the same values (NaN stays NaN) in half the
    time of ``np.clip`` — this runs on every chunk in the reader thread, which feeds the GPU.
    """
    out = np.array(x, dtype=np.float32, copy=True)
    s = np.float32(scale)
    np.maximum(out, 0.0, out=out)
    np.minimum(out, s, out=out)
    np.divide(out, s, out=out)
    return out


def denormalise_optical(y: np.ndarray, scale: float = OPTICAL_SCALE, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """[0, 1] → input units and dtype; integer dtypes are rounded and clipped to the dtype's range."""
    out = np.asarray(y, dtype=np.float32) * np.float32(scale)
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype, copy=False)


def normalise_sar(x: np.ndarray, ranges: tuple[tuple[float, float], ...] = SAR_RANGES) -> np.ndarray:
    """(2, H, W) sigma0 in dB (VV, VH) → [0, 1] float32 with the paper's per-polarisation clip ranges."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] != len(ranges):
        raise ValueError(f"SAR must have {len(ranges)} bands (VV, VH), got {x.shape[0]}")
    out = np.empty_like(x)
    for i, (lo, hi) in enumerate(ranges):
        out[i] = (np.clip(x[i], lo, hi) - lo) / (hi - lo)
    return out


def linear_to_db(x: np.ndarray, floor: float = 1e-10) -> np.ndarray:
    """Linear power sigma0 → dB; non-positive values are floored (they clip to the range minimum anyway)."""
    x = np.asarray(x, dtype=np.float32)
    return (10.0 * np.log10(np.maximum(x, floor))).astype(np.float32)


def sar_to_db(x: np.ndarray, units: str) -> np.ndarray:
    """SAR in file ``units`` → dB: ``linear`` power through :func:`linear_to_db`, ``amplitude`` squared first
    (RTC products are also sold as amplitude, √power), ``db`` as it is."""
    if units == "linear":
        return linear_to_db(x)
    if units == "amplitude":
        x = np.asarray(x, dtype=np.float32)
        return linear_to_db(x * x)
    return np.asarray(x, dtype=np.float32)


def detect_sar_units(values: np.ndarray) -> str:
    """Return ``"linear"`` or ``"db"`` from a sample of finite, valid SAR values.

    dB sigma0 over land is overwhelmingly negative (typ. -30…+5); linear power lies mostly in (0, 2]. A sample
    with ≥ 95 % of values in [0, 2] and a non-negative 1st percentile is linear.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "db"
    in_linear = np.mean((v >= 0.0) & (v <= 2.0))
    return "linear" if in_linear >= 0.95 and np.percentile(v, 1) >= 0.0 else "db"


def optical_dtype_problem(dtype: str | np.dtype, scale: float) -> str | None:
    """Why optical values of ``dtype`` cannot be reflectance × ``scale`` — read in and written back — or None.

    Decided per type (issue 25: int8 values 1..69 came out 97.5 % stuck at 127, complex64 became DN in a
    "reflectance" file, both with exit 0): complex values are no reflectance at all; an integer type that cannot
    hold ``scale`` (int8 and uint8 for DN × 10⁴: 127 and 255 are 1.3 % and 2.6 % reflectance) cannot carry the
    model's output; integers are never reflectance in [0, 1] (0 or 1 only). Every other integer and float type
    GDAL holds (u)int16/32/64, float32/64 is converted exactly as its values say."""
    dt = np.dtype(dtype)
    if dt.kind == "c":
        return f"it holds complex numbers ({dt.name}), not reflectance; give the bands' real values (e.g. amplitude)"
    if dt.kind in "ui" and scale <= 1.0:
        return f"integer values ({dt.name}) cannot be reflectance in [0, 1]; use --optical-scale dn (DN × 10⁴)"
    if dt.kind in "ui" and np.iinfo(dt).max < scale:
        return (f"{dt.name} cannot hold reflectance × {scale:g} (its largest value, {np.iinfo(dt).max}, is "
                f"{100 * np.iinfo(dt).max / scale:.1f} % reflectance); convert it to reflectance (float32) or "
                "DN × 10⁴ (uint16)")  # fmt: skip
    return None


def detect_optical_scale(values: np.ndarray) -> float:
    """Return the divisor to reach [0, 1]: 1.0 for reflectance already scaled, else 10000 (DN).

    Float data whose 99th percentile is ≤ 1.5 is treated as reflectance in [0, 1] (bright clouds can exceed 1).
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        return OPTICAL_SCALE
    if np.issubdtype(v.dtype, np.floating):
        v = v[np.isfinite(v)]
        if v.size and np.percentile(v, 99) <= 1.5:
            return 1.0
    return OPTICAL_SCALE
