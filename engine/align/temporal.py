"""The acquisition times of temporal models (``needs_dates``: ``gapfill``) in the streaming pipeline.

A temporal model declares extra dates (``temporal_inputs = ("prev", "next")``: ``msop-unet``, ``gapfill``); their
images are roles like any other input (:mod:`engine.models.roles`, opened and read through :mod:`engine.align.inputs`).
What is temporal proper is *when*: a model with ``needs_dates = True`` also takes the acquisition times ``t_prev,
t, t_next`` (seconds since the epoch) as keywords. They come from ``--date-prev/--date/--date-next`` when given,
else from each file's tags (:func:`engine.sources.dates.read_acquisition_date`); the cloudy date outside ``[t_prev,
t_next]`` is an extrapolation, said in a warning.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from engine.config import RunConfig
from engine.errors import InputError
from engine.models.gapfill_arch import interpolation_weight
from engine.progress import Progress, record_warning
from engine.sources.dates import read_acquisition_date

log = logging.getLogger("engine")


def _date(given: datetime | None, path: Path | str, option: str) -> datetime:
    if given is not None:
        return given
    try:
        return read_acquisition_date(path)
    except InputError as exc:
        raise InputError(f"{exc} with {option}") from None


def acquisition_dates(config: RunConfig, progress: Progress, warnings: list[str]) -> dict[str, float]:
    """``t_prev, t, t_next`` in seconds since the epoch, from the flags or the files' tags.

    Raises :class:`InputError` (one line, before anything is written) when a date cannot be told or ``t_prev`` is
    not strictly before ``t_next``."""
    assert config.optical_prev is not None and config.optical_next is not None
    t_prev = _date(config.date_prev, config.optical_prev, "--date-prev")
    t = _date(config.date, config.optical, "--date")
    t_next = _date(config.date_next, config.optical_next, "--date-next")
    weight = float(interpolation_weight(t_prev, t, t_next))  # raises unless t_prev < t_next
    if not 0.0 <= weight <= 1.0:
        record_warning(progress, warnings, f"the cloudy date {t.isoformat()} is outside [{t_prev.isoformat()}, "
              f"{t_next.isoformat()}]: extrapolating (weight {weight:.3f} on the next image)")  # fmt: skip
    log.info("dates: t-1 %s, t %s, t+1 %s (weight %.4f on t+1)", t_prev.isoformat(), t.isoformat(),
             t_next.isoformat(), weight)  # fmt: skip
    return {"t_prev": t_prev.timestamp(), "t": t.timestamp(), "t_next": t_next.timestamp()}
