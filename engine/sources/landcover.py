"""ESA WorldCover codes → the six DeepGlobe classes the Align-CR paper reports metrics on.

Mapping as used by the official M3R-CR loader: 10→forest; 20, 30→rangeland; 40→agriculture; 50→urban;
60→barren; 80, 90→water; 70 (snow), 95 (mangroves), 100 (moss) and anything else → unknown (ignored in metrics).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("forest", "rangeland", "agriculture", "urban", "barren", "water")
UNKNOWN = 6
WORLDCOVER_TO_CLASS: dict[int, int] = {10: 0, 20: 1, 30: 1, 40: 2, 50: 3, 60: 4, 80: 5, 90: 5}

_LUT = np.full(256, UNKNOWN, dtype=np.uint8)
for _code, _cls in WORLDCOVER_TO_CLASS.items():
    _LUT[_code] = _cls


def worldcover_to_classes(codes: np.ndarray) -> np.ndarray:
    """Map WorldCover codes (any integer array) to class indices 0…5, 6 = unknown."""
    codes = np.asarray(codes)
    out = np.full(codes.shape, UNKNOWN, dtype=np.uint8)
    ok = (codes >= 0) & (codes < 256)
    out[ok] = _LUT[codes[ok].astype(np.int64)]
    return out
