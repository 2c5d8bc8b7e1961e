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
"""

from __future__ import annotations

from typing import Any

MARGIN_REGION = "inside_cloud"
MARGIN_METRIC = "psnr"


def baseline_margin(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The margin from a report's ``metrics`` (with ``baselines``); None when there is nothing to compare.

    Nothing to compare: no baselines scored, or no inside-cloud PSNR (no cloud pixel with a valid reference).
    """
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
        "clear_pixels_db": _outside(metrics.get("cloudy_input")),
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
