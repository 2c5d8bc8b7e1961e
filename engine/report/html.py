"""``report.html``: one self-contained page (inline CSS, PNGs as base64 data URIs, no scripts, no network).

A single file can be mailed, attached to a ticket or opened from a QGIS message bar link and always shows the
same thing. Every value comes from the report dict and is HTML-escaped; the metric tables put the cloudy input
(the paper's "Cloudy" row) and the non-learned baselines (flat, fill) beside the output and show the gain over the
cloudy input and the margin over the best baseline, the direction of "better" being stated per metric. The
headline — the output's margin over the best baseline inside the cloud — opens the page.
"""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any

from engine.report.margin import ceiling_sentence, gamut_sentence, margin_sentence
from engine.sources.landcover import CLASS_NAMES

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.better{color:#1a7f37}.worse{color:#b42318}.note{color:#555;font-size:.9em}.headline{font-size:1.15em}
img{max-width:100%;display:block;margin:.6em 0}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
"""

PLOT_TITLES = {
    "quicklooks": "Quicklooks (one 2–98 % stretch for all panels, from the reference's clear pixels)",
    "mask_and_change": "Cloud mask and where the model changed the image",
    "ndvi_maps": "NDVI before / after",
    "ndvi_scatter": "NDVI scatter (density, log colour scale)",
    "per_class": "Per land-cover class",
    "cloud_cover_bins": "By cloud cover (per tile)",
}

# metric → (label, format, higher is better)
_METRICS = {
    "mae": ("MAE", "{:.4f}", False),
    "psnr": ("PSNR (dB)", "{:.2f}", True),
    "ssim": ("SSIM", "{:.4f}", True),
    "sam": ("SAM (°)", "{:.2f}", False),
}
# beside them in the quality table (not in the per-tile bins): structure and colour (engine.outputs.metrics)
_SHAPE_METRICS = {
    "band_r": ("band r (mean of B, G, R, NIR)", "{:.3f}", True),
    "ndvi_r": ("NDVI r", "{:.3f}", True),
    "off_gamut": ("off-gamut share", "{:.1%}", False),
}


def _fmt(value: Any, fmt: str = "{:.4g}") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return fmt.format(value)
    return escape(str(value))


def _gain(cloudy: float | None, output: float | None, higher_better: bool, fmt: str) -> str:
    if cloudy is None or output is None:
        return "<td>–</td>"
    d = output - cloudy
    good = d > 0 if higher_better else d < 0
    cls = "better" if good else ("worse" if d != 0 else "")
    return f'<td class="{cls}">{"+" if d >= 0 else "−"}{fmt.format(abs(d))}</td>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A table; a header of blank cells is left out (issue 16: key–value tables opened with an empty grey row)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>" if any(h.strip() for h in header) else f"<table>{body}</table>"


def _best(values: list[float | None], higher_better: bool) -> float | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return max(known) if higher_better else min(known)


def _row(label: str, name: str, hb: bool, fmt: str, cloudy: Any, bases: list[Any], output: Any) -> list[str]:
    cells = [f"<td>{escape(label)}</td>", f"<td>{name} {'↑' if hb else '↓'}</td>", f"<td>{_fmt(cloudy, fmt)}</td>"]
    cells += [f"<td>{_fmt(b, fmt)}</td>" for b in bases]
    cells += [f"<td>{_fmt(output, fmt)}</td>", _gain(cloudy, output, hb, fmt)]
    if bases:
        cells.append(_gain(_best(bases, hb), output, hb, fmt))
    return cells


def _quality_table(m: dict[str, Any]) -> str:
    bases = m.get("baselines") or {}
    rows = []
    for part, label in (("overall", "whole image"), ("inside_cloud", "inside clouds"), ("outside_cloud", "outside")):
        for key, (name, fmt, hb) in (_METRICS | _SHAPE_METRICS).items():
            rows.append(_row(label, name, hb, fmt, m["cloudy_input"][part][key],
                             [b[part][key] for b in bases.values()], m["output"][part][key]))  # fmt: skip
        own = m["output"][part]["reference_off_gamut"]
        rows.append([f"<td>{escape(label)}</td>", "<td>off-gamut share of the reference itself</td>",
                     f'<td colspan="{len(bases) + 3 + bool(bases)}">{_fmt(own, "{:.1%}")}</td>'])
    for key, name, hb in (("rmse", "NDVI RMSE", False), ("miou", "NDVI class mIoU", True)):
        rows.append(_row("whole image", name, hb, "{:.4f}", m["cloudy_input"]["ndvi"][key],
                         [b["ndvi"][key] for b in bases.values()], m["output"]["ndvi"][key]))  # fmt: skip
    header = ["region", "metric", "cloudy input", *(f"baseline {n}" for n in bases), "output", "gain vs cloudy"]
    if bases:
        header.append("margin vs best baseline")
    return _table(header, rows)


def _gamut_rule(g: dict[str, Any]) -> str:
    """E.g. "0.5–99.5 % clear percentiles widened by 10 % of that range on each side"."""
    lo, hi = g["percentiles"]
    return f"{lo:g}–{hi:g} % clear percentiles widened by {100 * g['margin']:g} % of that range on each side"


def _headline(m: dict[str, Any]) -> str:
    margin = m.get("baseline_margin")
    cls = "" if margin is None else ("better" if margin["beats_baselines"] else "worse")
    lines = [f'<p class="headline {cls}"><strong>{escape(margin_sentence(margin))}</strong></p>']
    lines += [f"<p>{escape(line)}</p>" for line in (ceiling_sentence(m), gamut_sentence(m)) if line]
    return "\n".join(lines)


def _class_table(m: dict[str, Any]) -> str:
    rows = []
    for name in CLASS_NAMES:
        c, o = m["cloudy_input"]["per_class"][name], m["output"]["per_class"][name]
        if not o["pixels"]:
            continue  # a class absent from the scene: no row of dashes
        rows.append([f"<td>{name}</td>", f"<td>{o['pixels']}</td>",
                     f"<td>{_fmt(c['mae'], '{:.4f}')}</td>", f"<td>{_fmt(o['mae'], '{:.4f}')}</td>",
                     f"<td>{_fmt(c['sam'], '{:.2f}')}</td>", f"<td>{_fmt(o['sam'], '{:.2f}')}</td>"])
    return _table(["class", "pixels", "MAE cloudy", "MAE output", "SAM cloudy (°)", "SAM output (°)"], rows)


def _bins_table(m: dict[str, Any]) -> str:
    rows = []
    for bc, bo in zip(m["cloudy_input"]["cloud_cover_bins"], m["output"]["cloud_cover_bins"]):
        if not bo["tiles"]:
            continue  # no tile with that cloud cover
        lo, hi = bo["range"]
        cells = [f"<td>{lo:g}–{hi:g} %</td>", f"<td>{bo['tiles']}</td>"]
        for key, (_, fmt, _) in _METRICS.items():
            cells.append(f"<td>{_fmt(bc[key], fmt)} → {_fmt(bo[key], fmt)}</td>")
        cells.append(f"<td>{_fmt(bc['ndvi_rmse'], '{:.4f}')} → {_fmt(bo['ndvi_rmse'], '{:.4f}')}</td>")
        rows.append(cells)
    return _table(["cloud cover", "tiles", "MAE", "PSNR (dB)", "SSIM", "SAM (°)", "NDVI RMSE"], rows)


def _kv_table(d: dict[str, Any]) -> str:
    return _table(["", ""], [[f"<td>{escape(str(k))}</td>", f"<td>{_fmt(v)}</td>"] for k, v in d.items()])


def _pre(obj: Any) -> str:
    if obj is None:
        return '<p class="note">not given</p>'
    return f"<pre>{escape(json.dumps(obj, indent=2))}</pre>"


def _quality_note(report: dict[str, Any]) -> str:
    """What the quality table's columns and rows mean."""
    return (
        '<p class="note">The reference is the cloud-free acquisition of the same place (another date: what '
        "changed on the ground in between counts against every column alike). "
        'Bands scaled to [0, 1] (data range 1). "Cloudy input" scores the unmodified input '
        "against the reference, as the paper's \"Cloudy\" row; the gain column is output − cloudy input, green "
        "when it is an improvement. Beating the cloudy input proves little: the non-learned baselines, made "
        "from the cloudy input and the same cloud mask and scored on the same pixels, are what a model must "
        "beat — <em>flat</em> paints every pixel with the per-band median of the scene's clear pixels, "
        "<em>fill</em> keeps the clear pixels and fills each cloud by harmonic interpolation from its border. "
        "The margin column is output − the best baseline of that row. <em>Band r</em> (per-band Pearson r with "
        "the reference, a flat colour scores 0) and <em>NDVI r</em> measure structure; the <em>off-gamut "
        "share</em> is the share of pixels whose colour is outside the cloudy input's own clear pixels (any band "
        f"beyond its {escape(_gamut_rule(report['settings']['off_gamut']))}): it catches painted colour casts. "
        "The reference's own share is printed under each region: where it is high (another date, hazy clear "
        "pixels) the share says little. The date-gap ceiling is the cloudy input's clear pixels scored against "
        "the reference: what a perfect removal would score inside the cloud.</p>"
    )


def render_html(report: dict[str, Any], figures: dict[str, bytes]) -> str:
    """The whole page as a string."""
    scene = report["scene"]
    cm = scene["cloud_mask"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>Align-CR report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Align-CR cloud-removal report</h1>",
        f'<p class="note">generated {escape(report["created_utc"])} by {escape(report["generator"]["name"])} '
        f'{escape(report["generator"]["version"])}; schema {escape(report["schema_version"])}</p>',
        "<h2>Summary</h2>",
        _headline(report["metrics"]) if report["metrics"] is not None else "",
        _kv_table(
            {
                "size (px)": f"{report['grid']['width']} × {report['grid']['height']}",
                "CRS": report["grid"]["crs"],
                "valid pixels": scene["pixels"]["valid"],
                f"cloud cover ({cm['source']} mask), %": cm["cloud_cover_percent"],
                "cloud mask": cm.get("method", cm["source"]),
                "mean change |output − input| (whole image)": scene["change_magnitude"]["mean"],
                "mean change inside clouds": scene["change_magnitude"]["inside_cloud"],
                "mean change outside clouds": scene["change_magnitude"]["outside_cloud"],
            }
        ),
    ]
    m = report["metrics"]
    if m is not None:
        parts += [
            "<h2>Quality against the cloud-free reference</h2>",
            _quality_note(report),
            _quality_table(m),
            "<h3>Per land-cover class</h3>",
            _class_table(m) if report["inputs"]["landcover"] else '<p class="note">no land cover given</p>',
            f"<h3>By cloud cover of {report['settings']['tile_size']} px tiles (cloudy input → output)</h3>",
            _bins_table(m),
        ]
    else:
        parts.append('<p class="note">No cloud-free reference was given, so no quality metrics: the layers, NDVI and '
                     "change magnitude below show what the model did, not how right it is.</p>")
    if scene["landcover"] is not None:
        lc = scene["landcover"]
        rows = [
            [f"<td>{escape(k)}</td>", f"<td>{v['pixels']}</td>", f"<td>{_fmt(v['percent'], '{:.1f}')}</td>"]
            for k, v in lc["classes"].items() if v["pixels"]
        ]
        if lc["unknown_pixels"]:
            rows.append(["<td>unknown</td>", f"<td>{lc['unknown_pixels']}</td>", "<td>–</td>"])
        parts += ["<h3>Land cover (valid pixels)</h3>", _table(["class", "pixels", "%"], rows)]
    parts.append("<h2>Figures</h2>")
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        title = PLOT_TITLES.get(name, name)
        parts.append(f'<h3>{escape(title)}</h3><img id="plot-{escape(name)}" alt="{escape(title)}" '
                     f'src="data:image/png;base64,{data}">')
    parts += [
        "<h2>Layers (GeoTIFF, on the optical grid)</h2>",
        _kv_table(report["layers"]),
        "<h2>Inputs</h2>",
        _kv_table({k: v for k, v in report["inputs"].items() if k != "optical_scale"}
                  | {f"scale of {k}": v for k, v in report["inputs"]["optical_scale"].items()}),
        "<h2>Model card</h2>",
        _pre(report["model_card"]),
        "<h2>Run settings</h2>",
        _pre(report["run_settings"]),
        "<h2>Evaluation settings</h2>",
        _pre(report["settings"]),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
