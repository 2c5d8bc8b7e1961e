"""Score ``engine run`` itself — the product path, not the training loop's forward — on the report split.

Why: options such as ``--adapt`` (scene adaptation) or ``--tta`` run inside the engine, on windows it reads through
its aligned readers; their measured value must be the engine's. Each report sample is written as a small
georeferenced scene — the cloudy optical image (uint16 DN = reflectance × 10⁴), the SAR in dB (the network's
[0, 1] units mapped back through the paper's clip ranges, exact inside them), the cloud mask and the reference —
run through ``engine run`` once per option set, read back, and scored inside the cloud beside the flat and fill
baselines with the same functions as :mod:`training.evaluate`. The grid is made up (UTM 32N); a SAR on its own
grid (M3R-CR's native 10 m) keeps its own pixel size over the same extent.

``python -m training.engine_check --out runs/engine_check --variant plain= --variant adapt=--adapt,80 \
--figure docs/scene_adapt_engine.png`` (what docs/model.md's scene-adaptation table and figure come from)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin

from engine.cli import main as engine_main
from engine.refine.baselines import BASELINES
from engine.sources.normalise import SAR_RANGES

CRS = "EPSG:32632"
ORIGIN = (500000.0, 5000000.0)


def _write(path: Path, data: np.ndarray, res: float, dtype: str, nodata: float | None = None) -> Path:
    transform = from_origin(*ORIGIN, res, res)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
                       dtype=dtype, crs=CRS, transform=transform, nodata=nodata) as ds:  # fmt: skip
        ds.write(data.astype(dtype))
    return path


def _dn(reflectance: Any) -> np.ndarray:
    """Reflectance as uint16-range DN ×10⁴, at least 1 (0 is the optical no-data value)."""
    return np.clip(np.rint(np.asarray(reflectance) * 10000.0), 1, 10000)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read().astype(np.float32)


def write_scene(sample: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The sample's cloudy optical image, SAR (dB), mask and reference as GeoTIFFs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    optical, sar = np.asarray(sample["optical"]), np.asarray(sample["sar"])
    res = 10.0 if sar.shape[-2:] == optical.shape[-2:] else 3.0
    sar_res = res * optical.shape[-1] / sar.shape[-1]
    db = np.stack([lo + np.asarray(sar[i], np.float64) * (hi - lo) for i, (lo, hi) in enumerate(SAR_RANGES)])
    return {
        "optical": _write(folder / "cloudy.tif", _dn(optical), res, "uint16", nodata=0),
        "sar": _write(folder / "s1.tif", db, sar_res, "float32"),
        "mask": _write(folder / "mask.tif", (np.asarray(sample["mask"])[:1] > 0.5), res, "uint8"),
        "reference": _write(folder / "reference.tif", _dn(sample["target"]), res, "uint16", nodata=0),
    }


def run_variant(paths: dict[str, Path], out: Path, extra: list[str], weights: str) -> np.ndarray:
    """``engine run`` on one scene with the extra options; the output as reflectance (its ``--scene-check``, if
    asked for, is in the output's settings: :func:`scene_check_of`)."""
    args = ["run", "--optical", str(paths["optical"]), "--sar", str(paths["sar"]), "--mask", str(paths["mask"]),
            "--out", str(out), "--weights", weights, "--sar-units", "db", "--device", "cpu", *extra]  # fmt: skip
    if engine_main(args) != 0:
        raise RuntimeError(f"engine run failed: {' '.join(args)}")
    return _read(out) / 10000.0


def scene_check_of(path: Path) -> dict[str, Any] | None:
    """The ``--scene-check`` record an output carries in its ``ALIGNCR_SETTINGS`` (None when not asked for)."""
    with rasterio.open(path) as ds:
        return json.loads(ds.tags().get("ALIGNCR_SETTINGS", "{}")).get("scene_check")


def check_agreement(rows: list[dict[str, Any]], variant: str) -> dict[str, Any] | None:
    """How well ``--scene-check``'s margin (synthetic clouds on the scene's clear ground, no reference) foretells
    the variant's true margin inside the real (or report-synthetic) cloud, per kind of sample: the share of scenes
    where the two agree in sign, and their Spearman correlation."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows}):
        pairs = [(r[variant]["scene_check"]["margin_db"],
                  r[variant]["psnr"] - max(r[b]["psnr"] for b in BASELINES))
                 for r in rows if r["kind"] == kind and r[variant].get("scene_check")]  # fmt: skip
        if not pairs:
            continue
        check, true = np.array(pairs).T
        rho = float(spearmanr(check, true).statistic) if len(pairs) > 2 else None
        out[kind] = {"scenes": len(pairs), "checked_of": sum(r["kind"] == kind for r in rows),
                     "sign_agreement": float(np.mean(np.sign(check) == np.sign(true))), "spearman": rho,
                     "check_margin_db": float(check.mean()), "true_margin_db": float(true.mean())}  # fmt: skip
    return out or None


def summary_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown: per kind of sample, each image's mean in-cloud scores, and its margin over the better of flat and fill
    (mean, and on how many samples it is ahead) — the default-run gate of docs/model.md. SSIM and SAM are compared with
    the better baseline's mean (the higher SSIM, the lower SAM); off-gamut is the worst sample's share."""
    head = ("| kind | image | PSNR dB | margin dB | ahead | SSIM | SAM ° | band r | NDVI r | off-gamut max % |\n"
            "|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        group = [r for r in rows if r["kind"] == kind]
        best_base = [max(r[b]["psnr"] for b in BASELINES) for r in group]
        for name in [*BASELINES, *names]:
            values = {k: [r[name].get(k) for r in group] for k in ("psnr", "ssim", "sam", "bandr_in", "ndvir_in",
                                                                      "offgamut_in")}  # fmt: skip
            mean = {k: float(np.mean([x for x in v if x is not None])) if any(x is not None for x in v) else None
                    for k, v in values.items()}  # fmt: skip
            margins = np.array(values["psnr"]) - np.array(best_base)
            worst = max((x for x in values["offgamut_in"] if x is not None), default=None)
            cells = [f"{kind} ({len(group)})", name, f"{mean['psnr']:.2f}", f"{margins.mean():+.2f}",
                     f"{int((margins > 0).sum())}/{len(group)}", f"{mean['ssim']:.3f}", f"{mean['sam']:.2f}",
                     *(f"{mean[k]:.2f}" if mean[k] is not None else "–" for k in ("bandr_in", "ndvir_in")),
                     f"{100 * worst:.2f}" if worst is not None else "–"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from torch.utils.data import DataLoader

    from engine.outputs import metrics
    from engine.refine import prior
    from training.evaluate import report_views
    from training.figures import shareable_items
    from training.scoring import baseline_images, region_scores, scored, shape_scores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", default="training/configs/aligncr_lite_report.toml")
    parser.add_argument("--weights", default="resources/weights/aligncr-lite.safetensors")
    parser.add_argument("--summarise", action="store_true",
                        help="print the table of an earlier run's --out/rows.json (every image in it) and stop")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=OPTIONS: a name and the engine options, comma-separated ('plain=' for none)")
    parser.add_argument("--kinds", default="", help="comma-separated report kinds to run (default: all of them)")
    parser.add_argument("--figure", type=Path, help="also draw these scenes' quicklooks into this PNG")
    parser.add_argument("--figure-scenes", default="real_02,real_04,real_07,synthetic_05,synthetic_06,synthetic_09",
                        help="the scenes (folder names under --out) the figure shows, one row each")
    args = parser.parse_args(argv)
    if args.summarise:
        rows = json.loads((args.out / "rows.json").read_text())
        names = [k for k, v in rows[0].items() if isinstance(v, dict) and "psnr" in v and k not in BASELINES]
        print(summary_table(rows, names), end="")
        return 0
    if not args.variant:
        parser.error("--variant is required (or --summarise)")
    variants = {n: [a for a in opts.split(",") if a] for n, opts in (v.split("=", 1) for v in args.variant)}
    rows: list[dict[str, Any]] = []
    start = time.time()
    for kind, view in report_views(args.report).items():
        if args.kinds and kind not in args.kinds.split(","):
            continue
        shareable = set(shareable_items(view))
        for i, batch in enumerate(DataLoader(view, batch_size=1, shuffle=False, num_workers=0)):
            sample = {k: v.numpy()[0] for k, v in batch.items() if k in ("optical", "sar", "mask", "target")}
            cloud = sample["mask"][0] > 0.5
            if not scored(cloud):
                continue
            folder = args.out / f"{kind}_{i:02d}"
            paths = write_scene(sample, folder)
            target = _dn(sample["target"]) / 10000.0  # as written
            cloudy = _dn(sample["optical"]) / 10000.0  # as written
            images = baseline_images(cloudy, cloud)
            estimate = prior.estimate(cloudy, ~cloud, None, sample["sar"])  # what aligncr-res starts at
            images["estimate"] = np.clip(estimate, 0.0, 1.0)
            for name, extra in variants.items():
                images[name] = run_variant(paths, folder / f"{name}.tif", extra, args.weights)
            gamut = metrics.clear_gamut(cloudy, cloud)
            row = {"kind": kind, "i": i, "id": str(batch["id"][0]), "cover": float(cloud.mean()),
                   "shareable": i in shareable, "ceiling_psnr": metrics.date_gap_ceiling(cloudy, target, cloud)}
            row.update({name: {**{m: region_scores(img, target, cloud)[f"{m}_in"] for m in ("psnr", "ssim", "sam")},
                               **shape_scores(img, target, cloud, gamut)}
                        for name, img in images.items()})  # fmt: skip
            row["reference"] = {"offgamut_in": shape_scores(target, target, cloud, gamut)["offgamut_in"]}
            for name in variants:
                row[name]["scene_check"] = scene_check_of(folder / f"{name}.tif")
            rows.append(row)
            print(kind, i, {k: round(v["psnr"], 2) for k, v in row.items() if isinstance(v, dict) and "psnr" in v},
                  f"{time.time() - start:.0f} s", flush=True)  # fmt: skip
            (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    print(summary_table(rows, ["estimate", *variants]), end="")
    agreement = {name: check_agreement(rows, name) for name in variants}
    agreement = {k: v for k, v in agreement.items() if v}
    if agreement:
        print("scene check vs the true margin:", json.dumps(agreement, indent=1))
        (args.out / "scene_check.json").write_text(json.dumps(agreement, indent=1))
    if args.figure is not None:
        unshareable = {f"{r['kind']}_{r['i']:02d}" for r in rows if not r["shareable"]}
        figure(args.out, args.figure_scenes.split(","), list(variants), args.figure, unshareable)
    return 0


def figure(folder: Path, scenes: list[str], variants: list[str], path: Path, unshareable: set[str]) -> Path:
    """One row per scene: cloudy, flat, fill, each variant's output, reference — under the reference's stretch.
    A scene whose licence forbids publishing pictures of it (``unshareable``: M3R-CR's PlanetScope, see
    :func:`training.figures.shareable_items`) is refused, not drawn."""
    from training.figures import quicklook_grid
    from training.scoring import baseline_images

    refused = sorted(set(scenes) & unshareable)
    if refused:
        raise ValueError(f"not drawn: {', '.join(refused)} may be scored but never pictured (academic-only imagery)")
    rows = []
    for name in scenes:
        cloudy, reference = _read(folder / name / "cloudy.tif") / 1e4, _read(folder / name / "reference.tif") / 1e4
        cloud = _read(folder / name / "mask.tif")[0] > 0
        images = {"cloudy": cloudy, **baseline_images(cloudy, cloud)}
        images.update({v: _read(folder / name / f"{v}.tif") / 1e4 for v in variants})
        rows.append((name, {**images, "reference": reference}, reference, ~cloud))
    return quicklook_grid(rows, path)


if __name__ == "__main__":
    raise SystemExit(main())
