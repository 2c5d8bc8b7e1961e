"""How well each cloud-mask source marks the cloud on real data: the trained detector, the hand-made rule, and the
mask that comes with the data, against each other and against what is *visibly* cloudy.

Why a "visibly cloudy" reference: the masks shipped with SEN12MS-CR and M3R-CR were themselves made by a detector (the
triplets' by s2cloudless, M3R-CR's by Planet's UDM; not hand drawn), so agreement with them (IoU) cannot say which
source is right where they differ.
Every sample here is a pair — the cloudy image and a cloud-free one of the same place — so the pixels the cloud
changed can be seen: with d = mean over B, G, R of (cloudy − cloud-free) reflectance,

* **visibly cloudy**: d > +0.04 (cloud, haze, bright fringes); **missed** = the share of them a source leaves clear;
* **visibly shadowed**: not visibly cloudy, and NIR below 0.75 × the cloud-free NIR (a shadow dims NIR by a ratio,
  while haze over it can lift the blue: on dark ground an absolute threshold on the visible bands would miss it);
  **shadow missed** likewise;
* **visibly unchanged**: every band of B, G, R, NIR within 0.02 or 15 % of the cloud-free one; **false alarm** =
  the share of them a source flags.

The cloud-free image is another date (days to months), so land change counts too: read the shares as comparisons
between sources on the same pixels, not as absolute truth. Scores are pooled over the pixels of each data set.

The trained detector is scored with every shadow, with its cloud class alone, and with the shadows kept only within
:data:`NEAR_M` of a cloud (the engine's filter, ``detector.SHADOW_NEAR_M``: chosen on the no-SAR pairs, reported on
the triplets). ``--external NAME=DIR`` adds masks made elsewhere (``benchmarks/s2cloudless_masks.py``), alone and
under the trained shadows near them.

``.venv/bin/python benchmarks/measure_masks.py --data ../shared/data --json runs/masks.json \
--figure docs/cloud_masks.png`` (CPU, one thread: about 10 s). M3R-CR's PlanetScope scene is scored, never drawn
(academic-only imagery); the figure shows SEN12MS-CR scenes (CC-BY 4.0, contains modified Copernicus Sentinel data).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from engine.align import detector
from engine.align.cloudmask import detect_clouds

S2_BGRN = [1, 2, 3, 7]  # B2, B3, B4, B8 of the 13 Sentinel-2 bands
VISIBLE, UNCHANGED = 0.04, 0.02
SHADOW_RATIO, SAME_RATIO = 0.75, 0.15
GROWS = (1, 2, 4)
NEAR_M = (300.0, 600.0, 1000.0, 2000.0)  # the shadow filter's distances tried (m; the default: detector.SHADOW_NEAR_M)
SSL4EO = "ssl4eo_s12_sample/SSL4EO-S12/s2c/0000200"
SSL4EO_DATES = ("20200823T054639_20200823T055618_T43RCP", "20200604T054639_20200604T054831_T43RCP")  # cloudy, clear
FIGURE_IDS = ("4438", "5349", "6553", "746")


def _read(path: Path, bands: list[int] | None = None) -> np.ndarray:
    with rasterio.open(path) as ds:
        data = ds.read().astype(np.float32)
    return (data[bands] if bands is not None else data) / 10000.0


def _ssl4eo(folder: Path) -> np.ndarray:
    """B2, B3, B4, B8 (10 m, one file each) of one SSL4EO-S12 L1C date as reflectance."""
    bands = []
    for name in ("B2", "B3", "B4", "B8"):
        with rasterio.open(folder / f"{name}.tif") as ds:
            bands.append(ds.read(1).astype(np.float32))
    return np.stack(bands) / 10000.0


def samples(root: Path) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray | None, float]]:
    """(set, id, cloudy, cloud-free, shipped mask or None, pixel size in metres) of every pair found."""
    trip = root / "sen12mscr_triplets"
    for path in sorted((trip / "cloudmask").glob("*.tif")):
        with rasterio.open(path) as ds:
            mask = ds.read(1) > 0
        yield ("SEN12MS-CR triplets", path.stem, _read(trip / "s2_cloudy" / path.name, S2_BGRN),
               _read(trip / "s2_cloudfree" / path.name, S2_BGRN), mask, 10.0)  # fmt: skip
    m3 = root / "m3rcr_sample" / "train"
    for path in sorted(m3.glob("planet_cloudy_fall/*/*.tif")):
        clear = next(m3.glob("planet_cloudfree_fall/*/*" + path.name.split("cloudy")[-1]))
        mask = np.load(next(m3.glob("cloudmask_fall/*/*" + path.stem.split("cloudy")[-1] + ".npy"))).astype(bool)
        yield "M3R-CR PlanetScope", path.stem, _read(path), _read(clear), mask, 3.0
    pairs = root / "sen12mscr_s2pairs_nosar"
    for path in sorted((pairs / "s2_cloudy").glob("*.tif")):
        clear = pairs / "s2_cloudfree" / path.name.replace("_cloudy", "")
        yield "SEN12MS-CR pairs", path.stem, _read(path, S2_BGRN), _read(clear, S2_BGRN), None, 10.0
    glf = root / "sen12mscr_glfcr"
    for path in sorted((glf / "s2_cloudy").glob("*.tif")):
        yield ("SEN12MS-CR GLF-CR", path.stem, _read(path, S2_BGRN), _read(glf / "s2_cloudfree" / path.name, S2_BGRN),
               None, 10.0)  # fmt: skip
    ssl = root / SSL4EO
    if (ssl / SSL4EO_DATES[0]).is_dir():  # EPSG:4326, about 10 m; the clear date 2.5 months earlier
        cloudy, clear = (_ssl4eo(ssl / date) for date in SSL4EO_DATES)
        yield "SSL4EO-S12 L1C", SSL4EO_DATES[0], cloudy, clear, None, 10.0


def masks_of(det: detector.TrainedDetector, cloudy: np.ndarray, shipped: np.ndarray | None, pixel_m: float,
             others: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Every source's mask (True = replaced) for one cloudy image; ``others`` (cloud masks made elsewhere) alone and
    with the trained detector's shadow near their cloud."""
    f = detector.factor_for(pixel_m)
    labels = detector.detect_array(det, cloudy, f=f, grow=0, pixel_m=pixel_m, near_m=None)
    out = {"rule": detect_clouds(cloudy), "trained: cloud + shadow": labels > 0,
           "trained: its cloud class alone": labels == detector.CLOUD}  # fmt: skip
    for near in NEAR_M:
        kept = detector.shadows_near_clouds(labels, (pixel_m, pixel_m), f, near)
        out[f"trained: cloud + shadow within {near:g} m of a cloud"] = kept > 0
    for g in GROWS:
        out[f"trained, grown {g} px"] = ndimage.binary_dilation(labels > 0, iterations=g)
    if f > 1:
        out["trained at its native 3 m (no blocks)"] = detector.detect_array(det, cloudy, f=1, grow=0, near_m=None) > 0
    if shipped is not None:
        out["mask shipped with the data"] = shipped
    for name, cloud in (others or {}).items():
        near = f"{detector.SHADOW_NEAR_M:g}"
        shadow = np.where(labels == detector.SHADOW, detector.SHADOW, detector.CLEAR)
        both = np.where(cloud, detector.CLOUD, shadow).astype(np.uint8)
        out[name] = cloud
        kept = detector.shadows_near_clouds(both, (pixel_m, pixel_m), f)
        out[f"{name} + trained shadow within {near} m of it"] = kept > 0
    return out


def external(folders: dict[str, Path], sid: str) -> dict[str, np.ndarray]:
    """Masks made by a tool outside the engine (``--external NAME=DIR``: ``DIR/<id>.npy``, True = cloud), where one
    exists for this sample."""
    found = {name: folder / f"{sid}.npy" for name, folder in folders.items()}
    return {name: np.load(path) > 0 for name, path in found.items() if path.is_file()}


def counts(mask: np.ndarray, cloudy: np.ndarray, clear: np.ndarray, shipped: np.ndarray | None) -> np.ndarray:
    """Pixel counts: visibly cloudy, of them missed; shadowed, missed; unchanged, flagged; ∩ and ∪ with shipped."""
    d = (cloudy[:3] - clear[:3]).mean(axis=0)
    bright = d > VISIBLE
    dark = ~bright & (cloudy[3] < SHADOW_RATIO * clear[3])
    same = (np.abs(cloudy - clear) < np.maximum(UNCHANGED, SAME_RATIO * clear)).all(axis=0)
    inter = union = 0
    if shipped is not None:
        inter, union = int((mask & shipped).sum()), int((mask | shipped).sum())
    return np.array([bright.sum(), (bright & ~mask).sum(), dark.sum(), (dark & ~mask).sum(), same.sum(),
                     (same & mask).sum(), inter, union, mask.sum(), mask.size], dtype=np.int64)  # fmt: skip


def table(totals: dict[str, dict[str, np.ndarray]], n: dict[str, int]) -> str:
    """The markdown table: one row per data set and source."""
    lines = ["| data set (scenes) | mask source | IoU with the shipped mask | visibly cloudy missed | visibly shadowed "
             "missed | unchanged flagged (false alarm) | flagged |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, by_source in totals.items():
        for source, c in by_source.items():
            iou = f"{c[6] / c[7]:.3f}" if c[7] else "–"
            share = [f"{100 * c[i + 1] / c[i]:.1f} %" if c[i] else "–" for i in (0, 2, 4)]
            lines.append(f"| {name} ({n[name]}) | {source} | {iou} | {' | '.join(share)} | "
                         f"{100 * c[8] / c[9]:.1f} % |")  # fmt: skip
    return "\n".join(lines)


def figure(root: Path, det: detector.TrainedDetector, path: Path) -> None:
    """Outlines of the shipped mask, the rule and the trained detector on SEN12MS-CR cloudy images, one stretch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    trip = root / "sen12mscr_triplets"
    fig, axes = plt.subplots(len(FIGURE_IDS), 4, figsize=(13, 3.3 * len(FIGURE_IDS)))
    for row, sid in zip(axes, FIGURE_IDS):
        cloudy = _read(trip / "s2_cloudy" / f"{sid}.tif", S2_BGRN)
        clear = _read(trip / "s2_cloudfree" / f"{sid}.tif", S2_BGRN)
        with rasterio.open(trip / "cloudmask" / f"{sid}.tif") as ds:
            shipped = ds.read(1) > 0
        labels = detector.detect_array(det, cloudy)
        panels = [("cloud-free (another date)", clear, []),
                  ("mask shipped with SEN12MS-CR", cloudy, [(shipped, (1, 0, 0))]),
                  ("hand-made rule", cloudy, [(detect_clouds(cloudy), (1, 1, 0))]),
                  ("trained: cloud (cyan), shadow (magenta)", cloudy,
                   [(labels == detector.CLOUD, (0, 1, 1)), (labels == detector.SHADOW, (1, 0, 1))])]  # fmt: skip
        for ax, (title, image, outlines) in zip(row, panels):
            rgb = np.clip(image[[2, 1, 0]].transpose(1, 2, 0) / 0.35, 0, 1)  # one stretch for every panel
            for mask, colour in outlines:
                rgb[find_boundaries(mask, mode="inner")] = colour
            ax.imshow(rgb)
            ax.set_title(f"{sid}: {title}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", type=Path, help="also write the counts here")
    parser.add_argument("--figure", type=Path, help="also draw the SEN12MS-CR quicklooks with outlines here")
    parser.add_argument("--external", action="append", default=[], metavar="NAME=DIR",
                        help="also score masks made elsewhere: DIR/<sample id>.npy (benchmarks/s2cloudless_masks.py)",
                        )  # fmt: skip
    args = parser.parse_args(argv)
    folders = {k: Path(v) for k, v in (item.split("=", 1) for item in args.external)}
    det = detector.TrainedDetector(threads=1)
    totals: dict[str, dict[str, np.ndarray]] = {}
    n: dict[str, int] = {}
    start = time.process_time()
    for name, sid, cloudy, clear, shipped, pixel_m in samples(args.data):
        n[name] = n.get(name, 0) + 1
        for source, mask in masks_of(det, cloudy, shipped, pixel_m, external(folders, sid)).items():
            by_source = totals.setdefault(name, {})
            by_source[source] = by_source.get(source, 0) + counts(mask, cloudy, clear, shipped)
    print(table(totals, n))
    print(f"CPU seconds: {time.process_time() - start:.1f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({k: {s: c.tolist() for s, c in v.items()} for k, v in totals.items()}))
    if args.figure is not None:
        figure(args.data, det, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
