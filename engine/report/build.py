"""``write_report``: layers + ``report.json`` + ``report.html`` for one declouded scene.

Order of work: one streaming pass (:mod:`engine.report.accumulate`; with baselines, after a first pass for the
flat baseline's clear medians) writes the GeoTIFF layers, accumulates the numbers — the output's, the cloudy
input's and the baselines' — and fills nearest-decimated quicklooks; :mod:`.plots` draws them; the JSON is
validated against ``schema.json`` before it is written, then JSON and HTML are written atomically.
"""

from __future__ import annotations

import datetime as dt
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.config import as_source
from engine.errors import EngineError, OutputError
from engine.outputs.guard import check_output_dir
from engine.outputs.metrics import GAMUT_MARGIN, GAMUT_PERCENTILES, PSNR_CAP, SSIM_RADIUS, SSIM_SIGMA, ceiling_of
from engine.outputs.ndvi import NDVI_CLASS_EDGES, NDVI_NODATA
from engine.outputs.writer import AtomicFile
from engine.progress import Progress
from engine.refine.baselines import BASELINES, DEFAULT_HALO, MEDIAN_SAMPLE_PX
from engine.report import REPORT_FILES, plots
from engine.report.accumulate import MASK_NODATA, PassResult, run_pass
from engine.report.html import render_html
from engine.report.margin import baseline_margin
from engine.report.schema import SCHEMA_VERSION, validate_report
from engine.report.sources import Sources, open_sources
from engine.sources.footprint import input_footprint
from engine.sources.landcover import CLASS_NAMES, UNKNOWN
from engine.sources.masks import RULE_KIND
from engine.sources.raster import input_read_errors

QUICKLOOK_SIDE = 700


def _jsonable(obj: Any) -> Any:
    """Model cards and run settings may hold Paths, tuples, numpy scalars: make them plain JSON."""
    return None if obj is None else json.loads(json.dumps(obj, default=str))


def _pct(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def _scene_json(res: PassResult, src: Sources, mask_given: bool, method: str | None = None) -> dict[str, Any]:
    """The scene's facts; ``method`` is the run's one line on where its cloud came from (a mask the trained
    detector wrote is read as a given one, but was detected)."""
    s = res.stats
    clear = s.valid - s.cloud
    detected = not mask_given or (method or "").startswith("detected")
    out: dict[str, Any] = {
        "pixels": {"total": s.total, "valid": s.valid, "cloud": s.cloud, "clear": clear},
        "cloud_mask": {
            "source": "detected" if detected else "given",
            "method": method or ("given mask" if mask_given else f"detected: {RULE_KIND}"),
            "cloud_cover_percent": _pct(s.cloud, s.valid),
        },
        "landcover": None,
        "change_magnitude": {
            "mean": s.change_sum["all"] / s.valid if s.valid else None,
            "inside_cloud": s.change_sum["cloud"] / s.cloud if s.cloud else None,
            "outside_cloud": s.change_sum["clear"] / clear if clear else None,
        },
        "ndvi": {
            "class_edges": list(NDVI_CLASS_EDGES),
            "input": s.ndvi_summary("input"),
            "output": s.ndvi_summary("output"),
            "reference": s.ndvi_summary("reference"),
        },
    }
    if src.landcover is not None:
        known = int(s.class_pixels[:UNKNOWN].sum())
        out["landcover"] = {
            "classes": {
                name: {"pixels": int(s.class_pixels[k]), "percent": _pct(int(s.class_pixels[k]), known)}
                for k, name in enumerate(CLASS_NAMES)
            },
            "unknown_pixels": int(s.class_pixels[UNKNOWN]),
        }
    return out


def _masked(arr: np.ndarray, nodata: float) -> np.ma.MaskedArray:
    return np.ma.masked_invalid(np.ma.masked_equal(arr, nodata)) if np.isfinite(nodata) else np.ma.masked_invalid(arr)


def _quicklooks(q: dict[str, np.ndarray], has_reference: bool, baselines: list[str]) -> bytes:
    """Cloudy input, output, reference and baselines under one stretch from the reference's clear pixels (the
    output's when there is no reference); no-data pixels transparent."""
    panels = {"cloudy input": ("optical", "optical_valid"), "output (declouded)": ("prediction", "prediction_valid")}
    if has_reference:
        panels["reference (cloud-free)"] = ("reference", "reference_valid")
    panels |= {f"baseline: {name}": (f"baseline_{name}", "optical_valid") for name in baselines}
    images = {title: np.where(q[valid], q[key], np.nan) for title, (key, valid) in panels.items()}
    basis = "reference" if has_reference else "prediction"
    clear = (q["cloud_mask"] == 0) & q[f"{basis}_valid"]
    return plots.quicklook_panels(images, q[basis], clear)


def _baseline_settings(res: PassResult) -> dict[str, Any] | None:
    if not res.baseline_metrics:
        return None
    return {
        "names": list(res.baseline_metrics),
        "flat_medians": None if res.medians is None else [float(v) for v in res.medians],
        "flat_medians_from": "clear pixels of the cloudy input, first pass over the scene "
                             f"(every pixel up to {MEDIAN_SAMPLE_PX}, else a regular grid of about that many)",
        "fill_halo_px": DEFAULT_HALO,
    }


def _gamut_settings(res: PassResult) -> dict[str, Any]:
    """The gamut the off-gamut shares are taken against, and where it comes from."""
    g = res.gamut
    return {
        "percentiles": list(GAMUT_PERCENTILES),
        "margin": GAMUT_MARGIN,
        "from": "clear pixels of the cloudy input, first pass over the scene (the flat medians' sample); a pixel "
                "is off-gamut when any band is outside [low, high]",
        "low": None if g is None else [float(v) for v in g.low],
        "high": None if g is None else [float(v) for v in g.high],
    }


def _metrics_json(res: PassResult) -> dict[str, Any] | None:
    if res.output_metrics is None or res.cloudy_metrics is None:
        return None
    metrics: dict[str, Any] = {
        "output": res.output_metrics.result(),
        "cloudy_input": res.cloudy_metrics.result(),
        "baselines": {name: acc.result() for name, acc in res.baseline_metrics.items()} or None,
    }
    metrics["baseline_margin"] = baseline_margin(metrics)
    metrics["date_gap_ceiling_db"] = ceiling_of(metrics["cloudy_input"])
    return metrics


def _make_plots(src: Sources, res: PassResult, report: dict[str, Any]) -> dict[str, bytes]:
    figs: dict[str, bytes] = {}
    q = res.quicklooks.layers
    figs["quicklooks"] = _quicklooks(q, src.reference is not None, list(res.baseline_metrics))
    cloud = np.ma.masked_equal(q["cloud_mask"], MASK_NODATA)
    change = np.ma.masked_invalid(q["change_magnitude"])
    cm = report["scene"]["cloud_mask"]
    figs["mask_and_change"] = plots.mask_and_change(cloud, change, cm["cloud_cover_percent"], cm["source"])
    nd = [("NDVI before", "ndvi_input"), ("NDVI after", "ndvi_output"), ("NDVI reference", "ndvi_reference")]
    figs["ndvi_maps"] = plots.ndvi_maps([(t, _masked(q[k], NDVI_NODATA)) for t, k in nd if k in q])
    h = res.stats.hist2d
    if src.reference is not None:
        figs["ndvi_scatter"] = plots.ndvi_scatter(
            [
                ("cloudy input", "reference NDVI", "cloudy input NDVI", h["reference_vs_input"]),
                ("declouded output", "reference NDVI", "output NDVI", h["reference_vs_output"]),
            ]
        )
        m = report["metrics"]
        # empty classes and bins have no bars to draw: they are left out, not drawn as blank slots (issue 16)
        classes = [c for c in CLASS_NAMES if m["output"]["per_class"][c]["pixels"]]
        series = {}
        for metric in ("mae", "sam"):
            for label, key in (("cloudy input", "cloudy_input"), ("output", "output")):
                series[f"{metric}|{label}"] = [m[key]["per_class"][c][metric] for c in classes]
        if src.landcover is not None and classes:
            pix = [m["output"]["per_class"][c]["pixels"] for c in classes]
            figs["per_class"] = plots.grouped_bars(
                "per land-cover class (vs cloud-free reference)",
                [f"{c}\n({n} px)" for c, n in zip(classes, pix)], series, ["MAE", "SAM (°)"],
            )
        used = [i for i, b in enumerate(m["output"]["cloud_cover_bins"]) if b["tiles"]]
        out_bins = m["output"]["cloud_cover_bins"]
        bins = [f"{out_bins[i]['range'][0]:g}–{out_bins[i]['range'][1]:g} %\n({out_bins[i]['tiles']} tiles)"
                for i in used]
        series = {}
        for metric in ("mae", "psnr", "sam", "ssim"):
            for label, key in (("cloudy input", "cloudy_input"), ("output", "output")):
                series[f"{metric}|{label}"] = [m[key]["cloud_cover_bins"][i][metric] for i in used]
        figs["cloud_cover_bins"] = plots.grouped_bars(
            f"by cloud cover of {report['settings']['tile_size']} px tiles", bins, series,
            ["MAE", "PSNR (dB)", "SAM (°)", "SSIM"],
        )
    else:
        figs["ndvi_scatter"] = plots.ndvi_scatter(
            [("output vs input", "cloudy input NDVI", "output NDVI", h["input_vs_output"])]
        )
        if src.landcover is not None:
            lc = report["scene"]["landcover"]["classes"]
            present = [c for c in CLASS_NAMES if lc[c]["pixels"]]
            if present:
                figs["per_class"] = plots.grouped_bars(
                    "land-cover share of valid pixels", present,
                    {"percent|pixels": [lc[c]["percent"] for c in present]}, ["% of classified pixels"],
                )
    return figs


def _staged_text(path: Path, text: str, clobber: bool) -> AtomicFile:
    """``text`` written into a claimed temporary beside ``path`` (fsync-ed), renamed by :meth:`AtomicFile.commit`."""
    staged = AtomicFile(path, clobber=clobber)
    staged.claim(staged.tmp)
    try:
        staged.tmp.write_text(text, encoding="utf-8")
        staged.fsync(staged.tmp)
    except OSError as exc:
        staged.discard()
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    staged.finished = staged.tmp
    return staged


def _made_folders(folder: Path) -> list[Path]:
    """Create ``folder`` with its parents; returns those this call created, deepest first (removed on failure)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the report folder {folder}: {exc.strerror or exc}") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder someone else put a file into stays
        try:
            folder.rmdir()
        except OSError:
            return


def _report_json(src: Any, res: PassResult, tile_size: int, bands: tuple[int, ...], model_card: dict | None,
                 run_settings: dict | None, mask_given: bool, cloud_mask: str | None = None,
                 **paths: Path | None) -> dict[str, Any]:  # fmt: skip
    """``report.json`` (before the plots): inputs as named, grid, settings, scene facts and the metrics."""
    g = src.grid
    name = {k: (str(v) if v is not None else None) for k, v in paths.items()}
    if (cloud_mask or "").startswith("detected"):  # the detector's raster lives in the run's memory only
        name["mask"] = None
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": {"name": "aligncr engine", "version": __version__},
        "created_utc": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "inputs": {
            **name,
            "bands": list(bands),
            "optical_scale": {
                "optical": src.optical.scale,
                "prediction": src.prediction.scale,
                "reference": src.reference.scale if src.reference is not None else None,
            },
        },
        "grid": {
            "width": g.width,
            "height": g.height,
            "crs": g.crs.to_string() if g.crs else None,
            "transform": list(g.transform)[:6],
        },
        "settings": {
            "tile_size": tile_size,
            "data_range": 1.0,
            "ssim": {"window": "gaussian", "sigma": SSIM_SIGMA, "size": 2 * SSIM_RADIUS + 1,
                     "covariance": "population", "k1": 0.01, "k2": 0.03, "channel_axis": 0},
            "psnr_cap_db": PSNR_CAP,
            "ndvi_nodata": NDVI_NODATA,
            "cloud_mask_nodata": MASK_NODATA,
            "baselines": _baseline_settings(res),
            "off_gamut": _gamut_settings(res),
        },
        "scene": _scene_json(res, src, mask_given, cloud_mask),
        "metrics": _metrics_json(res),
        "layers": dict(res.layers),
        "plots": [],
        "html": "report.html",
        "model_card": _jsonable(model_card),
        "run_settings": _jsonable(run_settings),
    }


def write_report(
    optical: Path,
    prediction: Path,
    out_dir: Path,
    *,
    reference: Path | None = None,
    landcover: Path | None = None,
    mask: Path | None = None,
    bands: tuple[int, int, int, int] = (1, 2, 3, 4),
    model_card: dict | None = None,
    run_settings: dict | None = None,
    tile_size: int = 300,
    progress: Progress | None = None,
    baselines: bool = True,
    prediction_name: Path | None = None,
    clobber: bool = True,
    cloud_mask: str | None = None,
) -> dict:
    """Write the report into ``out_dir`` (created if missing) and return the ``report.json`` dict.

    ``bands`` are the 1-based indices of B, G, R, NIR in optical, prediction and reference (all on the optical
    grid). Land cover (WorldCover codes) and mask (1 band, 1 = cloud, or Planet UDM2) may be on any grid; without a
    mask, clouds are detected on the cloudy input with :func:`engine.align.cloudmask.detect_clouds`. ``baselines``:
    with a reference, also score the non-learned baselines (:mod:`engine.refine.baselines`) and the output's margin over
    the best of them inside the cloud (:mod:`engine.report.margin`).
    mask, clouds are detected on the cloudy input with :func:`engine.align.cloudmask.detect_clouds`.
    ``cloud_mask`` is the run's line on where its cloud came from (:func:`engine.sources.masks.describe`).
    ``prediction_name`` is what ``report.json`` calls the prediction when it is read from another file (the
    engine's verified temporary output, renamed only after the report). Unreadable inputs are one
    :class:`~engine.errors.InputError` line. Every file of the report (layers, JSON, HTML) is renamed into place at
    the very end: a report that fails leaves none of them, nor the folders it created (issue 25); none replaces a
    file an input opens, nor, with ``clobber`` off, an existing file.
    """
    progress = progress or Progress()
    if tile_size < 2 * SSIM_RADIUS + 1:
        raise EngineError(f"tile size must be at least {2 * SSIM_RADIUS + 1} px, got {tile_size}")
    out_dir = Path(out_dir)
    named = {"optical": optical, "prediction": prediction, "reference": reference, "land cover": landcover,
             "mask": mask}  # fmt: skip
    check_output_dir(out_dir, input_footprint(named), files=REPORT_FILES, what="report", clobber=clobber)
    created = _made_folders(out_dir)
    staged: list[AtomicFile] = []
    try:
        report, res, figs = _report(named, out_dir, bands, model_card, run_settings, tile_size, progress, baselines,
                                    prediction_name, clobber, cloud_mask)  # fmt: skip
        staged = [*res.writers, _staged_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False)
                                             + "\n", clobber)]  # fmt: skip
        staged.append(_staged_text(out_dir / "report.html", render_html(report, figs), clobber))
        for item in staged:
            item.commit()
    except BaseException:
        for item in staged:
            item.discard()
        _remove_empty(created)
        raise
    progress.update(1.0, "report written")
    return report


def _report(named: dict[str, Any], out_dir: Path, bands: tuple[int, ...], model_card: dict | None,
            run_settings: dict | None, tile_size: int, progress: Progress, baselines: bool,
            prediction_name: Path | None, clobber: bool,
            cloud_mask: str | None = None) -> tuple[dict, PassResult, dict[str, bytes]]:  # fmt: skip
    """The streaming pass (layers finished, not yet renamed), ``report.json``'s dict, validated, and the plots."""
    bands = tuple(int(b) for b in bands)
    res: PassResult | None = None
    try:
        with ExitStack() as stack, input_read_errors("an input of the report"):
            paths = {k: (as_source(v) if v is not None else None) for k, v in named.items()}
            src = open_sources(stack, optical=paths["optical"], prediction=paths["prediction"],
                               reference=paths["reference"], landcover=paths["land cover"], mask=paths["mask"],
                               bands=bands)  # type: ignore[arg-type]  # fmt: skip
            res = run_pass(src, out_dir, tile_size, progress.scaled(0.0, 0.85), QUICKLOOK_SIDE,
                           baselines=BASELINES if baselines else (), clobber=clobber)  # fmt: skip
            report = _report_json(src, res, tile_size, bands, model_card, run_settings, named["mask"] is not None,
                                  cloud_mask, optical=named["optical"],
                                  prediction=prediction_name or named["prediction"],
                                  reference=named["reference"], landcover=named["land cover"],
                                  mask=named["mask"])  # fmt: skip
            progress.update(0.88, "report: plots")
            progress.check_cancelled()
            figs = _make_plots(src, res, report)
        report["plots"] = list(figs)
        validate_report(report)
    except BaseException:
        for writer in res.writers if res is not None else []:
            writer.discard()
        raise
    return report, res, figs
