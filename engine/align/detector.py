"""The trained cloud and cloud-shadow detector: ukis-csmask's 4-band U-Net (Wieland et al. 2019, 2022), run by window.

ukis-csmask (Apache-2.0, the optional ``masks`` extra) ships ONNX U-Nets that label each pixel clear, cloud or cloud
shadow, trained on CloudSEN12+ (Sentinel-2, 10 m) and SPARCS (Landsat, 30 m). Its own ``CSmask`` class tiles one
whole in-memory image; the engine streams scenes of any size, so this module runs the same model file with the same
normalisation on a tile grid of its own. Choices, measured in docs/measurements.md ("Cloud masks"):

* **one model, the 4-band (B, G, R, NIR) Level-1C one**, for every input: the engine reads those four bands of
  anything. On twelve cloud-free Sentinel-2 scenes (L1C and L2A) it flags at most 0.2 % of the pixels; the L2A model
  flagged 13 % of one clear L2A scene, and is no better on the cloudy ones — so no product level is carried.
* **reflectance in [0, 1]** (the engine's optical scale, unclipped), normalised with the band means and standard
  deviations of the JSON file beside the model, as ukis-csmask does.
* **at about 10 m** (:data:`GROUND_M`): the model learned 10 m and 30 m pixels. Finer inputs are averaged in blocks of
  :func:`factor_for` pixels (PlanetScope 3 m → 3 × 3 blocks, 9 m) over their valid pixels, and the classes are given
  back to every pixel of the block. On M3R-CR's PlanetScope scene at 3 m the model missed 8 % of the visibly cloudy
  pixels, at 9 m 0.2 %.
* **tiles of 256 px** (the model's input) every :data:`STRIDE` px, their softmax blended with a weight tapering over
  the overlap, the class the argmax. The tile grid is the scene's (on the coarse grid), so the classes of a window
  computed from the tiles that touch it are exactly the whole scene's: :func:`classes` streams windows of
  :data:`CORE` coarse px and never holds more than one window and its tiles.
* **shadow is cloud**: the mask raster it writes says 1 = cloud, 2 = shadow, and every non-zero value is replaced
  (a shadowed pixel has lost its surface signal as a cloudy one has); not grown (:data:`GROW_PX`): growing by 2 px
  caught 0.1 % more of the visible cloud and flagged 3.5 % more unchanged ground; the only-cloudy feather blends
  the edge instead.
* **a shadow needs a cloud** (:func:`shadows_near_clouds`): the model's shadow class also takes dark, unchanged
  ground (water, dark forest) for shadow. A cloud's shadow is the cloud's outline moved by the shadow's
  displacement (cloud height × tan(sun zenith)), so every true shadow pixel lies within that distance of a cloud
  pixel: shadow farther than :data:`SHADOW_NEAR_M` metres from every detected cloud is set clear, and a scene
  without cloud has no shadow. The distance is measured in metres between the centres of the blocks the model
  decides on, so a window read with :func:`near_halo` px around it decides exactly as the whole scene. 1 km was
  chosen on SEN12MS-CR's no-SAR pairs (false alarm 47 % → 26 %, shadow missed 7.7 % → 8.6 %; 600 m: 15 % and 9.9 %)
  and held on the triplets (no shadow lost; 600 m lost 2.4 points). Keeping a whole connected shadow when any of it
  is near a cloud kept nearly all the false ones: dark ground touches the real shadows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from engine.errors import ModelError, one_line

GROUND_M = 10.0  # the ground sampling the detector runs at (m)
TILE = 256  # the model's input size
STRIDE = 192  # tile step: 64 px of overlap, blended
CORE = 6 * STRIDE  # coarse pixels per side of a streamed window: its boundary tiles are computed twice (≈ 1.36×)
GROW_PX = 0  # px the detected cloud and shadow are grown by: growing buys little and flags clear ground (measured)
SHADOW_NEAR_M: float | None = 1000.0  # shadow farther than this from every cloud is dropped (m; None: kept; measured)
CLEAR, CLOUD, SHADOW = 0, 1, 2
LEVEL = "l1c"  # see the module docstring: one model for every input

# reads (row0, row1, col0, col1) of the scene → B, G, R, NIR reflectance (4, h, w) and where it has data (h, w)
Reader = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray]]


def model_files(level: str = LEVEL) -> tuple[Path, Path]:
    """The ONNX model and its statistics inside the installed ukis-csmask package (imported only here)."""
    import ukis_csmask

    folder = Path(ukis_csmask.__file__).parent
    return folder / f"model_4b_{level}.onnx", folder / f"model_4b_{level}.json"


class TrainedDetector:
    """One loaded model: per-tile class probabilities for normalised (4, TILE, TILE) tiles."""

    def __init__(self, files: tuple[Path, Path] | None = None, threads: int = 1) -> None:
        onnx, stats = files or model_files()
        self.path = onnx
        try:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
            mean, std = json.loads(Path(stats).read_text())["data"]["dataset_statistics"]["img"]
        except Exception as exc:  # ORT raises its own types for a truncated or foreign file; all mean "broken"
            raise ModelError(f"the trained cloud detector's model cannot be loaded ({one_line(exc)}): {onnx} — "
                             "reinstall ukis-csmask, or run with --mask rule") from None  # fmt: skip
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.input = self.session.get_inputs()[0].name

    def normalise(self, reflectance: np.ndarray) -> np.ndarray:
        """The model's input scaling: (reflectance − band mean) / band std."""
        return (reflectance - self.mean) / self.std

    def probabilities(self, tile: np.ndarray) -> np.ndarray:
        """Softmax (3, TILE, TILE) of one normalised tile: one tile per call, as the engine's network on the CPU."""
        logits = self.session.run(None, {self.input: tile[None].astype(np.float32)})[0][0]
        e = np.exp(logits - logits.max(axis=0))
        return e / e.sum(axis=0)


def factor_for(pixel_m: float) -> int:
    """Block size (pixels per side) that brings ``pixel_m`` metre pixels to about :data:`GROUND_M`."""
    return max(1, int(round(GROUND_M / pixel_m))) if pixel_m > 0 else 1


def tile_starts(length: int) -> list[int]:
    """Tile origins along an axis of ``length`` coarse px: every :data:`STRIDE`, the last one flush with the end."""
    if length <= TILE:
        return [0]
    starts = list(range(0, length - TILE, STRIDE))
    return [*starts, length - TILE]


def _taper() -> np.ndarray:
    """A tile's blending weight: rising linearly over the overlap from each edge, never 0."""
    ramp = np.minimum(np.arange(TILE) + 0.5, TILE - np.arange(TILE) - 0.5) / (TILE - STRIDE)
    ramp = np.clip(ramp, 0.05, 1.0).astype(np.float32)
    return ramp[:, None] * ramp[None, :]


WEIGHT = _taper()


@dataclass(frozen=True)
class Span:
    """A coarse window [y0, y1) × [x0, x1) of the scene's coarse grid."""

    y0: int
    y1: int
    x0: int
    x1: int


def _touching(starts: list[int], lo: int, hi: int) -> list[int]:
    return [s for s in starts if s < hi and s + TILE > lo]


def _coarse(x: np.ndarray, ok: np.ndarray, f: int) -> np.ndarray:
    """Block means over the valid pixels of ``f`` × ``f`` blocks (a partial block at the scene's end too); a block
    without any valid pixel is NaN."""
    if f == 1:
        return np.where(ok, x, np.nan)
    h, w = ok.shape
    hc, wc = -(-h // f), -(-w // f)
    pad = ((0, hc * f - h), (0, wc * f - w))
    okp = np.pad(ok, pad).reshape(hc, f, wc, f)
    xp = np.stack([np.pad(np.where(ok, b, 0.0), pad).reshape(hc, f, wc, f) for b in x])
    n = okp.sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, xp.sum(axis=(2, 4)) / n, np.nan).astype(np.float32)


def classes_on(det: TrainedDetector, read: Reader, shape: tuple[int, int], f: int, span: Span) -> np.ndarray:
    """The classes (uint8, coarse px) on ``span``, from every tile of the scene's grid that touches it: exactly the
    whole scene's there. ``shape`` is the scene's (H, W) in its own pixels."""
    hc, wc = -(-shape[0] // f), -(-shape[1] // f)
    ys, xs = _touching(tile_starts(hc), span.y0, span.y1), _touching(tile_starts(wc), span.x0, span.x1)
    ry0, ry1, rx0, rx1 = ys[0], min(ys[-1] + TILE, hc), xs[0], min(xs[-1] + TILE, wc)
    x, ok = read(ry0 * f, min(ry1 * f, shape[0]), rx0 * f, min(rx1 * f, shape[1]))
    z = det.normalise(_coarse(x.astype(np.float32), ok, f))
    z = np.nan_to_num(z, nan=0.0)  # no data: the training mean
    ph, pw = max(0, TILE - z.shape[1]), max(0, TILE - z.shape[2])  # a scene smaller than a tile: mirrored
    z = np.pad(z, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(z.shape[1:]) > 1 else "edge")
    acc = np.zeros((3, *z.shape[1:]), np.float32)
    for ty in ys:
        for tx in xs:
            y, x0 = ty - ry0, tx - rx0
            acc[:, y : y + TILE, x0 : x0 + TILE] += WEIGHT * det.probabilities(z[:, y : y + TILE, x0 : x0 + TILE])
    labels = acc.argmax(axis=0).astype(np.uint8)
    return labels[span.y0 - ry0 : span.y1 - ry0, span.x0 - rx0 : span.x1 - rx0]


def fine_classes(det: TrainedDetector, read: Reader, shape: tuple[int, int], f: int, window: tuple[int, int, int, int],
                 grow: int = GROW_PX) -> np.ndarray:  # fmt: skip
    """Cloud (1), shadow (2) or clear (0) for every pixel of ``window`` = (row0, row1, col0, col1), grown by ``grow``
    px (computed on the window plus ``grow`` px around it, so it too equals the whole scene's)."""
    r0, r1, c0, c1 = window
    g0, g1 = max(0, r0 - grow), min(shape[0], r1 + grow)
    h0, h1 = max(0, c0 - grow), min(shape[1], c1 + grow)
    span = Span(g0 // f, -(-g1 // f), h0 // f, -(-h1 // f))
    coarse = classes_on(det, read, shape, f, span)
    fine = np.repeat(np.repeat(coarse, f, axis=0), f, axis=1)
    fine = fine[g0 - span.y0 * f : g1 - span.y0 * f, h0 - span.x0 * f : h1 - span.x0 * f]
    if grow > 0:
        grown = ndimage.binary_dilation(fine > 0, iterations=grow) & (fine == 0)
        near_cloud = ndimage.grey_dilation(np.where(fine == CLOUD, 1, 0), size=2 * grow + 1) > 0
        fine = np.where(grown, np.where(near_cloud, CLOUD, SHADOW), fine).astype(np.uint8)
    return fine[r0 - g0 : r1 - g0, c0 - h0 : c1 - h0]


def _blocks_any(mask: np.ndarray, f: int) -> np.ndarray:
    """True for each ``f`` × ``f`` block (from the array's origin; a partial block at its end too) holding a True."""
    if f == 1:
        return mask
    h, w = mask.shape
    hc, wc = -(-h // f), -(-w // f)
    return np.pad(mask, ((0, hc * f - h), (0, wc * f - w))).reshape(hc, f, wc, f).any(axis=(1, 3))


def shadows_near_clouds(labels: np.ndarray, pixel_m: tuple[float, float], f: int,
                        near_m: float | None = SHADOW_NEAR_M) -> np.ndarray:  # fmt: skip
    """``labels`` with every shadow pixel farther than ``near_m`` metres from all cloud set clear (the module
    docstring says why). ``labels`` starts on the scene's block grid (a multiple of ``f`` px from its origin);
    ``pixel_m`` is the (row, column) pixel size in metres. Distances run between the centres of ``f`` × ``f``
    blocks: the grid the model decides on, and f² fewer pixels to measure."""
    shadow = labels == SHADOW
    if near_m is None or not shadow.any():
        return labels
    cloud = _blocks_any(labels == CLOUD, f)
    if not cloud.any():
        return np.where(shadow, CLEAR, labels).astype(np.uint8)
    far = ndimage.distance_transform_edt(~cloud, sampling=(f * pixel_m[0], f * pixel_m[1])) > near_m
    far = np.repeat(np.repeat(far, f, axis=0), f, axis=1)[: labels.shape[0], : labels.shape[1]]
    return np.where(shadow & far, CLEAR, labels).astype(np.uint8)


def near_halo(pixel_m: tuple[float, float], f: int, near_m: float | None = SHADOW_NEAR_M) -> int:
    """Pixels of context around a window for :func:`shadows_near_clouds` to decide there as on the whole scene: a
    whole number of blocks spanning ``near_m`` along the finer axis (0 without the filter)."""
    if near_m is None:
        return 0
    return (int(near_m // (f * min(pixel_m))) + 1) * f


# reads (row0, row1, col0, col1) of the detector's classes (uint8: CLEAR, CLOUD, SHADOW) for the whole scene
LabelReader = Callable[[int, int, int, int], np.ndarray]


def filtered_window(read: LabelReader, shape: tuple[int, int], f: int, pixel_m: tuple[float, float],
                    window: tuple[int, int, int, int], near_m: float | None = SHADOW_NEAR_M) -> np.ndarray:  # fmt: skip
    """:func:`shadows_near_clouds` on ``window`` = (row0, row1, col0, col1) of a scene's classes, read with
    :func:`near_halo` px around it (windows start on the block grid): exactly the whole scene's there."""
    r0, r1, c0, c1 = window
    halo = near_halo(pixel_m, f, near_m)
    g0, g1, h0, h1 = max(0, r0 - halo), min(shape[0], r1 + halo), max(0, c0 - halo), min(shape[1], c1 + halo)
    labels = shadows_near_clouds(read(g0, g1, h0, h1), pixel_m, f, near_m)
    return labels[r0 - g0 : r1 - g0, c0 - h0 : c1 - h0]


def windows(shape: tuple[int, int], f: int) -> Iterator[tuple[int, int, int, int]]:
    """The streamed windows (row0, row1, col0, col1): :data:`CORE` coarse px a side, in scene pixels."""
    step = CORE * f
    for r0 in range(0, shape[0], step):
        for c0 in range(0, shape[1], step):
            yield r0, min(r0 + step, shape[0]), c0, min(c0 + step, shape[1])


def detect_array(det: TrainedDetector, reflectance: np.ndarray, ok: np.ndarray | None = None, f: int = 1,
                 grow: int = GROW_PX, pixel_m: float = GROUND_M,
                 near_m: float | None = SHADOW_NEAR_M) -> np.ndarray:  # fmt: skip
    """The classes of a whole in-memory (4, H, W) reflectance image of square ``pixel_m`` metre pixels, shadows
    filtered as a run's (benchmarks, tests, the measurement script)."""
    ok = np.isfinite(reflectance).all(axis=0) if ok is None else ok

    def read(y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        return reflectance[:, y0:y1, x0:x1], ok[y0:y1, x0:x1]

    shape = ok.shape
    labels = fine_classes(det, read, shape, f, (0, shape[0], 0, shape[1]), grow) * ok
    return shadows_near_clouds(labels.astype(np.uint8), (pixel_m, pixel_m), f, near_m)
