"""One progress bar over a whole ``engine run``: scene check, adaptation, the network, colour anchor and report.

Why the plugin maps the engine's messages: the engine reports each stage's own progress and starts every stage at
0 (``adapting to the scene: step 3/80`` comes with fraction 0.0), so the dialog's bar sat at 0 % through a
minute of adaptation while only the text counted steps (issue 28). Here each stage the run was asked for gets a
share of the bar sized by its expected time — adaptation about :data:`ADAPT_STEP_SECONDS` a step (the engine's
own figure, ``--adapt`` help), the network by the scene's pixels — and the stage's ``k/N`` (or its fraction) moves
the bar through that share. The bar never goes back, and once a few seconds have passed the message ends with an
estimate of the time left (elapsed time over the share done). No Qt import: the dialog's task and the tests use it.

In ``--mode best`` the engine switches the scene check on itself (issue 26), which the command does not carry: the
check is a stage of every run of that mode. Adaptation runs only when the command asks for it (``--adapt N``), so
its steps are the command's.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aligncr_qgis.run_options import MODE_SWITCHES

ADAPT_STEP_SECONDS = 0.7  # docs/measurements.md: 0.48 s (aligncr-res) to 1.07 s (aligncr-lite) a step on 2 CPU cores
PIXELS_PER_SECOND = 250_000.0  # the network on a CPU, roughly (aligncr-lite); only sizes the shares
MIN_STAGE_SECONDS = 1.0
ETA_AFTER_SECONDS, ETA_AFTER_FRACTION = 3.0, 0.02
_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")

# Stages in the order the engine runs them: (name, message prefixes).
STAGES = (
    ("check_read", ("scene check: reading",)),
    ("adapt_read", ("adapting to the scene: reading",)),
    ("adapt", ("adapting to the scene",)),
    ("check_score", ("scene check",)),
    ("network", ("tile", "writing output")),
    ("anchor", ("colour anchor",)),
    ("report", ("report",)),
)


def stage_of(message: str) -> str | None:
    """The stage an engine progress message belongs to (``None``: not one this module knows)."""
    text = message.strip().lower()
    if re.match(r"^\d+ tiles, ", text):  # the dialog's line for the engine's start event: the network starts
        return "network"
    return next((name for name, prefixes in STAGES if text.startswith(prefixes)), None)


def eta_text(seconds: float) -> str:
    """``about 1 min 20 s left``."""
    seconds = max(0, int(round(seconds)))
    minutes, rest = divmod(seconds, 60)
    return f"about {minutes} min {rest} s left" if minutes else f"about {rest} s left"


@dataclass
class RunProgress:
    """The bar of one run. ``expected`` maps each stage the run has to its expected seconds."""

    expected: dict[str, float]
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    last: float = 0.0

    @classmethod
    def for_run(cls, *, pixels: int, adapt_steps: int = 0, scene_check: bool = False, passes: int = 1,
                colour_anchor: bool = False, report: bool = False) -> RunProgress:
        """The stages of a run with these options, each sized by its expected time."""
        network = max(MIN_STAGE_SECONDS, passes * pixels / PIXELS_PER_SECOND)
        stages = {
            "check_read": 1.0 if scene_check else 0.0,
            "adapt_read": 1.0 if adapt_steps else 0.0,
            "adapt": adapt_steps * ADAPT_STEP_SECONDS,
            "check_score": 2.0 if scene_check else 0.0,
            "network": network,
            "anchor": 0.3 * network if colour_anchor else 0.0,
            "report": 0.5 * network if report else 0.0,
        }
        return cls({k: v for k, v in stages.items() if v > 0})

    @classmethod
    def for_command(cls, req: Any, pixels: int) -> RunProgress:
        """The stages of a :class:`~aligncr_qgis.run_options.RunCommand` over ``pixels`` optical pixels."""
        switched = MODE_SWITCHES.get(req.mode, ())  # what the mode switches on whatever the command says
        return cls.for_run(pixels=pixels, adapt_steps=req.adapt or 0,
                           scene_check=bool(req.scene_check) or "scene_check" in switched,
                           passes=4 if req.confidence else int(req.tta or 1), colour_anchor=bool(req.colour_anchor),
                           report=bool(req.report))

    def update(self, fraction: float, message: str) -> tuple[float, str]:
        """The bar's fraction and the message (with the time left) for one engine progress event."""
        now = self.clock()
        if self.started < 0:
            self.started = now
        stage = stage_of(message)
        if message == "done":  # EngineProcess's last word on success
            self.last = 1.0
        elif stage in self.expected:
            self.last = max(self.last, self._overall(stage, self._within(stage, fraction, message)))
        elapsed = now - self.started
        if elapsed >= ETA_AFTER_SECONDS and ETA_AFTER_FRACTION <= self.last < 1.0:
            message = f"{message} — {eta_text(elapsed * (1.0 - self.last) / self.last)}"
        return self.last, message

    def _within(self, stage: str, fraction: float, message: str) -> float:
        """How far into ``stage`` the event is: its ``k/N`` when it says one, else the engine's fraction (the
        report's runs from 0.8 to 1 of the engine's bar)."""
        count = _COUNT.search(message)
        if count and int(count.group(2)) > 0 and not message.lower().startswith("report"):
            return min(1.0, int(count.group(1)) / int(count.group(2)))
        if stage == "report":
            return min(1.0, max(0.0, (fraction - 0.8) / 0.2))
        if message.lower().startswith("writing output"):
            return 1.0
        return min(1.0, max(0.0, fraction))

    def _overall(self, stage: str, within: float) -> float:
        total = sum(self.expected.values()) or 1.0
        before = sum(v for name, v in self.expected.items() if _order(name) < _order(stage))
        return min(1.0, (before + within * self.expected[stage]) / total)


def _order(stage: str) -> int:
    return [name for name, _ in STAGES].index(stage)
