"""The report's headline: the output's margin over the best non-learned baseline inside the cloud.

Beating the cloudy input proves nothing (a flat colour already does, by 8–12 dB); what a model must show is that
inside the cloud it is better than the best of :data:`engine.refine.baselines.BASELINES` scored on the same pixels. The
margin is the output's inside-cloud PSNR minus the best baseline's, in dB, signed: negative means the model does
NOT beat the baselines. One place computes it (:func:`baseline_margin`, stored in ``report.json`` under
``metrics.baseline_margin``) and one place words it (:func:`margin_sentence`, used by the CLI and the HTML page).

The margin is only as meaningful as the reference. Outside the cloud the cloudy image *is* the scene's ground, so
its PSNR there against the reference is what a perfect cloud removal would score. When that is below the flat
colour's outside the cloud, the reference is another date (or the mask misses haze) and no cloud removal, however
good, would beat flat on it; the sentence says so (``clear_pixels_db`` < ``flat_outside_db``).

Beside the margin, the report words two more facts of :mod:`engine.outputs.metrics` here, for the CLI and the HTML
alike: the date-gap ceiling (:func:`ceiling_sentence`, the same number as ``clear_pixels_db``, stored as
``metrics.date_gap_ceiling_db``) and the off-gamut shares inside the cloud (:func:`gamut_sentence`).
"""

from __future__ import annotations

from typing import Any

MARGIN_REGION = "inside_cloud"
MARGIN_METRIC = "psnr"


def baseline_margin(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The margin from a report's ``metrics`` (with ``baselines``); None when there is nothing to compare.

    Nothing to compare: no baselines scored, or no inside-cloud PSNR (no cloud pixel with a valid reference).
    """
    from engine.outputs.metrics import ceiling_of  # here, not at the top: the CLI starts without SciPy

    output = metrics["output"][MARGIN_REGION][MARGIN_METRIC]
    scored = {
        name: block[MARGIN_REGION][MARGIN_METRIC]
        for name, block in (metrics.get("baselines") or {}).items()
        if block[MARGIN_REGION][MARGIN_METRIC] is not None
    }
    if output is None or not scored:
        return None
    best = max(scored, key=lambda name: scored[name])
    margin = output - scored[best]
    return {
        "clear_pixels_db": ceiling_of(metrics.get("cloudy_input")),
        "flat_outside_db": _outside((metrics.get("baselines") or {}).get("flat")),
        "region": MARGIN_REGION,
        "metric": MARGIN_METRIC,
        "output_db": output,
        "best_baseline": best,
        "best_baseline_db": scored[best],
        "margin_db": margin,
        "beats_baselines": margin > 0,
    }


def _outside(block: dict[str, Any] | None) -> float | None:
    """A metric block's outside-cloud PSNR, None when absent."""
    return ((block or {}).get("outside_cloud") or {}).get(MARGIN_METRIC)


def margin_sentence(margin: dict[str, Any] | None) -> str:
    """The margin in one plain line, e.g. "inside the cloud: output 24.10 dB, best baseline fill 25.30 dB →
    margin −1.20 dB (the model does NOT beat the baselines)"."""
    if margin is None:
        return "inside the cloud: no margin over the baselines (none scored, or no cloud pixel to score them on)"
    d = margin["margin_db"]
    verdict = "the model beats the baselines" if margin["beats_baselines"] else "the model does NOT beat the baselines"
    return (
        f"inside the cloud: output {margin['output_db']:.2f} dB, best baseline {margin['best_baseline']} "
        f"{margin['best_baseline_db']:.2f} dB → margin {'+' if d >= 0 else '−'}{abs(d):.2f} dB ({verdict})"
        + _reference_note(margin)
    )


def _reference_note(margin: dict[str, Any]) -> str:
    """A warning when the reference disagrees with the scene's own clear pixels more than with a flat colour."""
    clear, flat = margin.get("clear_pixels_db"), margin.get("flat_outside_db")
    if clear is None or flat is None or clear >= flat:
        return ""
    return (
        f"; but outside the cloud the image's own clear pixels score {clear:.2f} dB against this reference, under "
        f"flat's {flat:.2f} dB: the reference is likely another date (or the mask misses haze), so even a perfect "
        "cloud removal would not beat flat on it"
    )


def ceiling_sentence(metrics: dict[str, Any]) -> str | None:
    """The date-gap ceiling beside the output's inside-cloud PSNR, e.g. "date-gap ceiling (clear pixels of the input
    vs the reference): 26.23 dB; inside the cloud the output scores 24.10 dB"; None without clear pixels."""
    from engine.outputs.metrics import CEILING_LABEL, PSNR_CAP

    ceiling = metrics.get("date_gap_ceiling_db")
    if ceiling is None:
        return None
    inside = metrics["output"][MARGIN_REGION][MARGIN_METRIC]
    if ceiling >= PSNR_CAP:
        note = " (the clear pixels equal the reference: an exact target, no date gap)"
    else:
        note = " (what a perfect cloud removal would score inside the cloud against this reference)"
    output = "–" if inside is None else f"{inside:.2f} dB"
    return f"{CEILING_LABEL}: {ceiling:.2f} dB{note}; inside the cloud the output scores {output}"


def gamut_sentence(metrics: dict[str, Any]) -> str | None:
    """The off-gamut shares inside the cloud: the output's, the best of the others' and the reference's own."""
    inside = {name: block[MARGIN_REGION] for name, block in _blocks(metrics).items()}
    if inside["output"]["off_gamut"] is None:
        return None
    shares = ", ".join(f"{name} {100 * b['off_gamut']:.1f} %" for name, b in inside.items()
                       if b["off_gamut"] is not None)
    own = inside["output"]["reference_off_gamut"]
    return (f"off-gamut share inside the cloud (colours outside the input's clear pixels): {shares}; the reference "
            f"itself {'–' if own is None else f'{100 * own:.1f} %'}")


def _blocks(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The metric blocks by display name: cloudy input, each baseline, output."""
    return {"cloudy input": metrics["cloudy_input"], **(metrics.get("baselines") or {}), "output": metrics["output"]}
