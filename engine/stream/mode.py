"""``--mode``: what a run does when the user names nothing else (issue 26: the default run must be the best one).

``best`` (the default, the dialog's and Processing's too) is what won on the validation split (docs/model.md):

* the bundled residual model ``aligncr-res`` (:mod:`engine.refine.prior`'s estimate + what the SAR adds);
* no scene adaptation unless ``--adapt N`` asks for it: decided on the select split, where adapting 30 steps added
  0.04 dB inside the cloud (within noise) and on the report split nothing, for 2.2× the run's time on a 2048² scene
  (docs/model.md, benchmarks/README.md);
* only the cloud replaced (``--only-cloudy``: the mask's, else the detected one), clear pixels kept as acquired;
* the scene check (synthetic clouds on the scene's own clear ground) and the **guard** it feeds
  (:func:`guard_verdict`): where the model does not beat the estimate there, the output inside the cloud is the
  estimate.

``raw`` is the paper's setting: the network's output everywhere (default model ``aligncr-lite``), nothing else
unless asked. In either mode ``--adapt``, ``--only-cloudy``, ``--scene-check`` and ``--colour-anchor`` may be given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine import RESOURCES
from engine.config import BUNDLED_MODELS, MODE_SWITCHES, RunConfig, mode_model
from engine.refine.scene_check import SceneCheck

# the bundled weights of each model that has some; a mode's model falls back to another bundled one, then identity
# (the names and that rule are engine.config's: the plugin reads them without torch)
BUNDLED = {name: RESOURCES / "weights" / f"{name}.safetensors" for name in BUNDLED_MODELS}


def default_model(mode: str = "best") -> str:
    """The model a run without ``--model``/``--weights`` uses: the mode's, when its bundled weights are present,
    else the other bundled one, else the ``identity`` baseline (a checkout without weights)."""
    return mode_model(mode, {name for name, path in BUNDLED.items() if path.is_file()})


def resolve(config: RunConfig) -> RunConfig:
    """``config`` with what its mode switches on (``best``: only the cloud replaced, the scene check)."""
    switches = MODE_SWITCHES.get(config.mode, ())
    return dataclasses.replace(config, **dict.fromkeys(switches, True)) if switches else config


@dataclass(frozen=True)
class Guard:
    """What the guard decided: ``used`` is ``"model"`` or ``"estimate"``; the scores are the scene check's."""

    used: str
    model_db: float
    estimate_db: float
    windows: int

    def sentence(self) -> str:
        """One line for the CLI, the plugin and the output's tags."""
        scores = (f"the model scored {self.model_db:.1f} dB and the non-learned estimate {self.estimate_db:.1f} dB "
                  f"under synthetic clouds on {self.windows} clear window(s) of this scene")  # fmt: skip
        if self.used == "model":
            return f"guard: {scores}; the model's output is used ({self.model_db - self.estimate_db:+.1f} dB)"
        return (f"guard: {scores}; the model does not beat the estimate on this scene, so the output inside the "
                "cloud is the estimate (a smooth fill from the cloud's edge towards the colour of clear ground the "
                "SAR sees as alike)")

    def as_tag(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def guard_verdict(check: SceneCheck | None) -> Guard | None:
    """The guard's decision from the scene check of a model that takes the estimate (None: nothing to decide on —
    no check, or a model without the estimate). The model is kept when it beats the estimate on the mean over the
    checked windows."""
    if check is None or check.prior_db is None:
        return None
    used = "model" if check.model_db > check.prior_db else "estimate"
    return Guard(used, check.model_db, check.prior_db, check.windows)


class EstimateOnly(nn.Module):
    """The guard's fallback in the model's place: returns the estimate it is given (``prior``'s optical bands), so
    the run streams exactly as with the model and writes the estimate inside the cloud."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor | None = None,
                prior: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        if prior is None:
            return optical
        return prior[:, : optical.shape[1]].to(optical.dtype)
