"""Training recipes: TOML files (stdlib ``tomllib``) → frozen dataclasses, with ``--set section.key=value`` overrides.

A recipe has the sections ``[model]``, ``[data]`` (with ``[[data.train]]`` / ``[[data.val]]`` dataset tables, see
:mod:`training.datasets`), ``[optim]``, ``[schedule]``, ``[loss]`` (:class:`training.losses.LossConfig`),
``[run]`` and ``[card]`` (free text copied into the model card of the weights it writes). Unknown keys are errors:
a typo must not silently fall back to a default.

Learning-rate schedule, in epochs: constant until ``start_epoch``, then multiplied by ``gamma`` at ``start_epoch``
and every ``step_size`` epochs after. The paper ("halved every 5 epochs after the first 10") is start 10 / step 5;
the official code's ``StepLR(5, 0.5)`` is start 5 / step 5. The schedule is applied per optimisation step
(epoch = step // steps_per_epoch) so a run resumed mid-epoch continues on the same curve.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError
from training.losses import LossConfig


class ConfigError(EngineError):
    """A training recipe is unreadable or names an unknown option."""


@dataclass(frozen=True)
class ModelSection:
    name: str = "aligncr"
    overrides: dict[str, Any] = field(default_factory=dict)  # config fields of the registered model
    # Zero the output conv so a long-skip (residual) network starts as the identity: a short run then only has
    # to improve on the cloudy input instead of first unlearning a random residual. Off in the paper recipes.
    zero_init_output: bool = False
    # ICNR-initialise the convs before pixel shuffles (training.param_groups.icnr_init): no 2-px checkerboard at
    # the start of training. Off in the paper recipes (the official code uses PyTorch's default init).
    icnr_init: bool = False
    # Start from the weights of this .safetensors file (its card's arch must be ``name``; the network is built from
    # the card's config, ``overrides`` must then be empty, and the two init options above are not applied):
    # fine-tuning a trained model (``engine finetune``) rather than training one from scratch.
    init_weights: str = ""


@dataclass(frozen=True)
class DataSection:
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    crop: int = 160  # training crop in optical pixels (paper: 160)
    val_crop: int = 0  # 0 = whole images; the official test uses a centre 160 crop
    batch_size: int = 12
    val_batch_size: int = 1
    num_workers: int = 0
    samples_per_epoch: int = 0  # 0 = one pass over the data; > 0 repeats a small data set with fresh crops
    flips: bool = True
    rot90: bool = True
    synthetic_clouds: float = 0.0
    cloud_model: str = "flat"  # synthetic clouds: "flat" (first bundled model) | "layers" (refine.synthetic_clouds)
    # real cloud layers (training.datasets.cloud_bank) for half the synthetic clouds: training takes the bank's
    # "train" split, the select view its "select" split; False = the generator only
    real_clouds: bool = False
    cache: bool = True  # keep decoded samples in memory (small data sets)


@dataclass(frozen=True)
class OptimSection:
    optimizer: str = "adam"  # adam | nadam (DSen2-CR)
    lr: float = 1e-4
    alignment_lr: float = 1e-5
    # Module types whose parameters get ``alignment_lr`` ("package.module:Class"); matched with isinstance.
    alignment_modules: list[str] = field(default_factory=list)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global grad norm; 0 = off


@dataclass(frozen=True)
class ScheduleSection:
    epochs: int = 30
    start_epoch: int = 10
    step_size: int = 5
    gamma: float = 0.5

    def factor(self, epoch: int) -> float:
        """LR multiplier in ``epoch`` (0-based)."""
        if epoch < self.start_epoch:
            return 1.0
        return self.gamma ** (1 + (epoch - self.start_epoch) // self.step_size)


@dataclass(frozen=True)
class RunSection:
    seed: int = 0
    out_dir: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_steps: int = 0  # 0 = the whole schedule
    threads: int = 0  # torch CPU threads; 0 = torch's default
    amp: bool = True  # mixed precision on CUDA only
    log_every: int = 10
    val_every: int = 500
    ckpt_every_steps: int = 500
    ckpt_every_minutes: float = 5.0
    offset_warn: float = 50.0  # EDVR: mean |offset| above 50 means training is diverging
    offset_abort: float = 200.0  # stop with an error above this (0 = never)
    progress: bool = True
    # which validation figure picks best.safetensors: "psnr" (whole image) or "margin" (inside-cloud PSNR margin
    # over the best non-learned baseline, training.scoring) — the one that says whether the model is worth shipping
    select: str = "psnr"
    # also keep the weights of every validation as val_step<N>.safetensors (a choice under a second criterion,
    # e.g. the stripe check, can then be made afterwards on the same select split)
    keep_validated: bool = False
    # stop after this many minutes of training (0 = no limit): validation, checkpoint and weights as at the end
    max_minutes: float = 0.0
    # early stop: end the run after this many validations in a row without a better selection score (0 = never)
    patience: int = 0
    # DDP: Align-CR's last AlignFuse block computes a SAR-stream update nothing downstream uses, so some
    # parameters get no gradient; DDP must be told (found with torchrun on 2 processes).
    find_unused_parameters: bool = True


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossConfig = field(default_factory=LossConfig)
    run: RunSection = field(default_factory=RunSection)
    card: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
    "loss": LossConfig,
    "run": RunSection,
}


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ConfigError(f"[{where}] has unknown option(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        if names[key].type in ("tuple[float, float]",) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from a parsed recipe (unknown sections/keys raise :class:`ConfigError`)."""
    unknown = set(raw) - set(_SECTIONS) - {"card"}
    if unknown:
        raise ConfigError(f"unknown recipe section(s) {sorted(unknown)}; known: {sorted([*_SECTIONS, 'card'])}")
    kwargs: dict[str, Any] = {name: _section(cls, raw.get(name, {}), name) for name, cls in _SECTIONS.items()}
    _check_teacher(kwargs["loss"])
    return TrainConfig(card=dict(raw.get("card", {})), **kwargs)


def _check_teacher(loss: LossConfig) -> None:
    """Distillation needs both a teacher and a weight: either alone would train without it and say nothing."""
    if loss.teacher_weight < 0:
        raise ConfigError(f"loss.teacher_weight must be ≥ 0, got {loss.teacher_weight}")
    if loss.teacher_weight > 0 and not loss.teacher:
        raise ConfigError(f"loss.teacher_weight = {loss.teacher_weight} but no loss.teacher (weights file) is named")
    if loss.teacher and loss.teacher_weight == 0:
        raise ConfigError(f"loss.teacher = '{loss.teacher}' but loss.teacher_weight is 0: give it a weight > 0")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` → (["optim", "lr"], 0.001); the value is parsed as TOML (bare words as strings)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not section.key=value")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a parsed recipe (nested keys allowed: model.overrides.x=1)."""
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a table")
        node[path[-1]] = value
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML recipe and apply overrides."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"training config {p} not found")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    return config_from_dict(apply_overrides(raw, overrides or []))
