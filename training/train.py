"""``python -m training.train --config CFG [--resume CKPT] [--max-steps N] [--device D] [--set sec.key=value ...]``.

The training loop for every registered model. Models come only from :func:`engine.models.build_model`, weights
files only from :func:`engine.models.weights.save` (with the validation metrics in the model card).

What a run writes under ``run.out_dir``:

* ``state_last.pt`` — the resumable training state (model, optimizer, scheduler, AMP scaler, step, best metric and
  every RNG state), written atomically every ``ckpt_every_steps`` steps or ``ckpt_every_minutes`` minutes and at
  the end. It is our own file, saved with ``torch.save`` and loaded with ``weights_only=True`` (plain tensors,
  numbers and strings only; the numpy RNG state is stored as a tensor for that reason).
* ``last.safetensors`` and ``best.safetensors`` (best validation PSNR) — weights + model card.
* ``train_log.csv``, ``val_log.csv`` and TensorBoard events in ``tb/``; ``config.toml.json`` — the resolved recipe.

Determinism and resume. Data order is ``DistributedSampler(shuffle, seed)`` with ``set_epoch`` (also with one
process), augmentation randomness is a function of (seed, epoch, index) (:class:`training.datasets.TrainView`),
and the LR schedule is a function of the step. A resumed run rebuilds the epoch's order and skips the batches
already consumed, so N steps straight and N/2 + resume + N/2 give the same weights (tested).

Multi-GPU: launch with ``torchrun --nproc_per_node K -m training.train ...``; the process group is initialised
from the environment torchrun sets (``env://``), the model is wrapped in DistributedDataParallel and each rank
reads its shard through DistributedSampler. ``batch_size`` is per process (the paper's 12 on 2 GPUs is 6 each).
Only rank 0 validates, logs and writes files.

Model inputs. Every model gets ``model(optical, sar)``. A *temporal* model (class attribute ``temporal_inputs``,
e.g. ``("prev", "next")`` for ``msop-unet``; the registry's contract, as the engine reads it) also gets the batch
entries ``optical_<x>`` and — unless ``uses_sar = False`` — ``sar_<x>`` for each ``x`` as keyword tensors, and the
acquisition times ``t_prev, t, t_next`` when ``needs_dates``. Which keys, comes from the model's attributes, never
its name; the data must provide them (``kind = "layout"`` splits of a multi-date layout do), else the run stops
before the first step naming what is missing. A model built with a DEM input (config ``dem=True``, e.g.
``ssop-unet`` in ``ssop_unet_dem.toml``) also gets the batch's ``dem``; only layout splits of an archive with a
``dem.tif`` have it, and without it the run stops before the first step with one line saying so. A model whose
``forward`` takes ``return_stages`` (the MMCANet MPIR variants) is asked for every stage's output when
``loss.stage_weights`` is set, and each is supervised (:class:`training.losses.StageLoss`); validation always
scores the final output.

Stopping: SIGTERM or Ctrl-C ends the run cleanly after the current step (validation + checkpoint), so
``kill PID`` on a background run loses nothing; ``--resume`` continues it. So do ``run.max_minutes`` (a time
budget), ``run.patience`` (that many validations in a row without a better selection score: early stopping) and a
caller's :class:`TrainHooks` ``should_stop`` (e.g. a cancel from the QGIS plugin through ``engine finetune``).

Divergence guard: the mean |offset| of every deformable conv is logged; above ``offset_warn`` (EDVR's 50 px) a
warning is printed, above ``offset_abort`` the run stops with :class:`TrainingDiverged` (after saving its state
for inspection). A non-finite loss stops the run the same way.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from engine.errors import EngineError
from training.config import TrainConfig, load_config
from training.datasets import AugmentConfig, TrainView, build_reader, packed, resolve_path
from training.inputs import check_inputs, model_kwargs, returns_stages, to_device
from training.losses import StageLoss, build_loss
from training.param_groups import (
    build_param_groups,
    enable_offset_tracking,
    icnr_init,
    offset_magnitudes,
    resolve_types,
    zero_init_output,
)

STATE_FILE = "state_last.pt"
# run.select → the validation key whose highest value makes best.safetensors
SELECT_KEYS = {"psnr": "psnr", "margin": "margin_in"}


class TrainingDiverged(EngineError):
    """The loss became non-finite or the deformable offsets exploded."""


@dataclass
class TrainHooks:
    """What a caller that drives training (``engine finetune``) is told and may ask, without parsing the logs.

    ``on_step(step, total_steps, loss)`` after every optimisation step; ``on_validation(step, model, metrics,
    improved)`` after every validation (``improved``: it beat the best selection score, so ``best.safetensors`` was
    just written); ``should_stop()`` polled after every step (True ends the run as a signal does)."""

    on_step: Callable[[int, int, float], None] | None = None
    on_validation: Callable[[int, nn.Module, dict[str, float], bool], None] | None = None
    should_stop: Callable[[], bool] | None = None


# --------------------------------------------------------------------------------------------- distribution
def init_distributed(init_method: str | None = None) -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when torchrun (or the caller) asks for one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or init_method is not None:
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if init_method is None:
                dist.init_process_group(backend=backend)
            else:
                dist.init_process_group(
                    backend=backend,
                    init_method=init_method,
                    rank=int(os.environ.get("RANK", "0")),
                    world_size=world,
                )
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device '{name}' asked for but CUDA is not available (use --device cpu)")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


# --------------------------------------------------------------------------------------------- data
class SkipSampler(Sampler[int]):
    """The first ``skip`` indices of a sampler dropped: resuming in the middle of an epoch."""

    def __init__(self, base: Sampler[int], skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        for k, i in enumerate(self.base):
            if k >= self.skip:
                yield i

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]


def build_views(cfg: TrainConfig) -> tuple[TrainView, TrainView | None]:
    d = cfg.data
    if not d.train:
        raise EngineError("the recipe lists no training data ([[data.train]])")
    train = TrainView(
        [build_reader(s, cache=d.cache) for s in d.train],
        AugmentConfig(crop=d.crop, random_crop=True, flips=d.flips, rot90=d.rot90,
                      synthetic_clouds=d.synthetic_clouds, cloud_model=d.cloud_model,
                      cloud_bank="train" if d.real_clouds else ""),
        seed=cfg.run.seed,
        length=d.samples_per_epoch or None,
    )
    val = None
    if d.val:
        val = TrainView(
            [build_reader(s, cache=d.cache) for s in d.val],
            AugmentConfig(crop=d.val_crop, random_crop=False, flips=False, rot90=False, cloud_model=d.cloud_model,
                          cloud_bank="select" if d.real_clouds else ""),
            seed=cfg.run.seed,
        )
    return train, val


# --------------------------------------------------------------------------------------------- state
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], state["numpy_gauss"][0], state["numpy_gauss"][1]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic torch.save: a run killed while writing never leaves a truncated checkpoint behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise EngineError(f"checkpoint {p} not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the file is not our checkpoint
        raise EngineError(f"{p} is not a training checkpoint of this project ({type(exc).__name__})") from None


def build_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    o = cfg.optim
    kinds = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}
    if o.optimizer not in kinds:
        raise EngineError(f"unknown optimizer '{o.optimizer}' (known: {', '.join(kinds)})")
    return kinds[o.optimizer](groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


# --------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: nn.Module, view: TrainView, device: torch.device, batch_size: int = 1,
             cache: dict[str, Any] | None = None) -> dict[str, float]:
    """Per-sample means of the model's, the cloudy input's (``identity_``) and the baselines' (``flat_``, ``fill_``)
    PSNR/SSIM/MAE/SAM — overall and inside/outside the cloud — plus ``margin_in`` (:mod:`training.scoring`).

    Keys without a prefix are the model's (``psnr``, ``psnr_in``…), as the logs always had them. ``cache`` keeps
    the baselines of each validation sample between validations (the view is deterministic).
    """
    from training import scoring

    rows = scoring.model_rows(model, view, device, batch_size, cache)
    summary = scoring.summarise(rows)
    return {(k[len("model_"):] if k.startswith("model_") else k): v for k, v in summary.items() if v is not None}


# --------------------------------------------------------------------------------------------- logging
class CsvLog:
    """Append-only CSV with a fixed header (a resumed run keeps appending to the same file, under its own header:
    a log started before a column existed keeps its columns)."""

    def __init__(self, path: Path, fields: list[str]) -> None:
        self.path, self.fields = path, fields
        if path.exists():
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), None)
            if header:
                self.fields = header
                return
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerow(fields)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([row.get(k, "") for k in self.fields])


def _card(cfg: TrainConfig, step: int, epoch: float, metrics: dict[str, float] | None, elapsed_s: float) -> dict:
    card = dict(cfg.card)
    notes = card.pop("notes", "")
    training = {
        "recipe": cfg.to_dict(),
        "steps": step,
        "epochs": round(epoch, 3),
        "wall_time_s": round(elapsed_s, 1),
    }
    return {
        "training_data": card.pop("training_data", ", ".join(str(s.get("root", "")) for s in cfg.data.train)),
        "metrics": {"validation": metrics or {}},
        "notes": (notes + "\n" if notes else "") + "training: " + json.dumps(training, default=str),
        **card,
    }


def _initial_model(cfg: TrainConfig) -> nn.Module:
    """The network of ``model.init_weights`` with its trained weights (fine-tuning starts from it)."""
    from engine.models import weights

    if cfg.model.overrides:
        raise EngineError("model.overrides cannot be combined with model.init_weights (the card gives the config)")
    model, card = weights.load(resolve_path(cfg.model.init_weights))
    if card.arch != cfg.model.name:
        raise EngineError(f"{cfg.model.init_weights} holds a '{card.arch}' model, the recipe names '{cfg.model.name}'")
    return model


def _teacher(cfg: TrainConfig, device: torch.device) -> nn.Module | None:
    """The frozen network whose output is the second target (``loss.teacher``, distillation), or None.

    Why: a shallower network trained on ~20 scenes alone learns texture the deeper one does not paint
    (docs/model.md, the one-block trial); the deeper one's output is a smooth, consistent target on every crop.
    """
    if not cfg.loss.teacher or cfg.loss.teacher_weight <= 0:
        return None
    from engine.models import weights

    teacher, _ = weights.load(resolve_path(cfg.loss.teacher), device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def save_weights(model: nn.Module, path: Path, card: dict[str, Any]) -> None:
    from engine.models import weights

    weights.save(model, path, card)  # atomic itself


# --------------------------------------------------------------------------------------------- the loop
def _worker_ignores_stop_signals(_: int) -> None:
    """A data worker's start: SIGTERM and SIGINT are the main process's to handle (:class:`_StopFlag`). Sent to the
    whole process group (``timeout``, ``kill -- -PGID``, Ctrl-C in a terminal) they reached the workers too, one
    died of it, and the step the main process was finishing failed before its checkpoint (seen rehearsing
    benchmarks/gpu_session.sh's train stage). The workers end with the loader once the main process stops."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class _StopFlag:
    """SIGTERM/SIGINT → finish the current step, validate, checkpoint and return (a killed or pre-empted run
    loses nothing). Installed only in the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second signal: give up at once
            raise KeyboardInterrupt
        self.requested = True
        print(f"signal {signum}: stopping after this step (checkpoint first)", file=sys.stderr)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    cfg: TrainConfig,
    resume: str | Path | None = None,
    init_method: str | None = None,
    hooks: TrainHooks | None = None,
) -> dict[str, Any]:
    """Run (or continue) the recipe; returns a summary dict (steps, last loss, best validation metrics)."""
    rank, world, local_rank = init_distributed(init_method)
    run = cfg.run
    threads_before = torch.get_num_threads()
    if run.threads:
        torch.set_num_threads(run.threads)
    try:
        return _train(cfg, resume, rank, world, local_rank, hooks)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg: TrainConfig, resume: str | Path | None, rank: int, world: int, local_rank: int,
           hooks: TrainHooks | None = None) -> dict[str, Any]:
    return _Trainer(cfg, resume, rank, world, local_rank, hooks).run()


VAL_LOG_FIELDS = ["step", "psnr", "ssim", "mae", "sam", "identity_psnr", "identity_ssim", "identity_mae",
                  "identity_sam", "psnr_in", "psnr_out", "identity_psnr_in", "flat_psnr_in", "fill_psnr_in",
                  "margin_in", "wins_in", "ssim_in", "fill_ssim_in", "flat_ssim_in", "sam_in", "fill_sam_in",
                  "flat_sam_in", "time"]
TRAIN_LOG_FIELDS = ["step", "epoch", "lr", "loss", "offset_mean", "offset_max", "sec_per_step", "time", "stage_losses"]


class _Trainer:
    """One run of a recipe: set up (model, optimiser, data, resumed state, logs), then step / log / validate /
    checkpoint until the schedule ends or a signal asks to stop. Each part is a method; the state they share
    (step, best selection score, logging window) lives on the instance."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None, rank: int, world: int, local_rank: int,
                 hooks: TrainHooks | None = None) -> None:
        self.cfg, self.run_cfg, self.world = cfg, cfg.run, world
        self.hooks = hooks or TrainHooks()
        self.stale_validations = 0  # validations in a row without a better selection score (run.patience)
        self.stop_reason = ""  # why the run ended early (TrainHooks, run.max_minutes, run.patience)
        self.is_main = rank == 0
        self.device = pick_device(cfg.run.device, local_rank)
        seed_everything(cfg.run.seed)
        self._build_model()
        self._build_data(rank)
        self.step, self.best_psnr, self.elapsed_before = 0, -math.inf, 0.0
        self.out_dir = resolve_path(cfg.run.out_dir)
        if resume is not None:
            self._resume(resume)
        self.ddp_model: nn.Module = self.model
        if dist.is_initialized():
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=cfg.run.find_unused_parameters,
            )
        self.tb = self._open_logs() if self.is_main else None
        self.t_start = self.last_ckpt_time = time.monotonic()
        self.last_val: dict[str, float] = {}
        self.last_loss = float("nan")
        self.window_loss, self.window_n, self.window_t = 0.0, 0, time.monotonic()
        self.window_stages: list[float] = []
        self.last_stages: list[float] = []
        self.val_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- set-up
    def _build_model(self) -> None:
        cfg, run = self.cfg, self.cfg.run
        from engine.models import build_model

        if run.select not in SELECT_KEYS:
            raise EngineError(f"run.select must be one of {sorted(SELECT_KEYS)}, got '{run.select}'")
        if cfg.model.init_weights:
            model = _initial_model(cfg).to(self.device)
        else:
            model = build_model(cfg.model.name, **cfg.model.overrides).to(self.device)
            if cfg.model.icnr_init:
                icnr_init(model)
            if cfg.model.zero_init_output:
                zero_init_output(model, int(getattr(getattr(model, "cfg", None), "in_bands", 4)))
        self.n_dcn = enable_offset_tracking(model)
        groups = build_param_groups(model, cfg.optim.lr, cfg.optim.alignment_lr,
                                    resolve_types(cfg.optim.alignment_modules))
        self.optimizer = build_optimizer(cfg, groups)
        self.use_amp = run.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.loss_fn = build_loss(cfg.loss)
        self.want_stages = isinstance(self.loss_fn, StageLoss)
        if self.want_stages and not returns_stages(model):
            raise EngineError(f"loss.stage_weights is set but model '{cfg.model.name}' returns one output "
                              "(deep supervision needs a multi-stage model, e.g. mmcanet-mpir2)")
        self.model = model
        self.teacher = _teacher(cfg, self.device)
        if self.teacher is not None and self.want_stages:
            raise EngineError("loss.teacher cannot be combined with loss.stage_weights")

    def _build_data(self, rank: int) -> None:
        cfg, d = self.cfg, self.cfg.data
        self.train_view, self.val_view = build_views(cfg)
        check_inputs(self.model, cfg.model.name, set(self.train_view.read(0)))
        if self.val_view is not None:
            check_inputs(self.model, cfg.model.name, set(self.val_view.read(0)))
        self.sampler = DistributedSampler(self.train_view, num_replicas=self.world, rank=rank, shuffle=True,
                                          seed=cfg.run.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // d.batch_size
        if self.steps_per_epoch < 1:
            raise EngineError(
                f"{len(self.train_view)} training samples over {self.world} process(es) make no batch of "
                f"{d.batch_size}; lower data.batch_size or raise data.samples_per_epoch"
            )
        self.total_steps = cfg.schedule.epochs * self.steps_per_epoch
        if cfg.run.max_steps:
            self.total_steps = min(self.total_steps, cfg.run.max_steps)
        schedule, per_epoch = cfg.schedule, self.steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: schedule.factor(s // per_epoch))

    def _resume(self, resume: str | Path) -> None:
        state = load_state(resume)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best_psnr = float(state["best_psnr"])
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        _set_rng_state(state["rng"])

    def _open_logs(self) -> Any:
        """CSV logs (and TensorBoard when installed; returned) in the run folder, with the recipe beside them."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2, default=str))
        self.train_log = CsvLog(self.out_dir / "train_log.csv", TRAIN_LOG_FIELDS)
        self.val_log = CsvLog(self.out_dir / "val_log.csv", VAL_LOG_FIELDS)
        try:
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(str(self.out_dir / "tb"))
        except ImportError:
            warnings.warn("tensorboard is not installed: TensorBoard logs are off (CSV logs still written)",
                          stacklevel=1)
            return None

    # ------------------------------------------------------------------------------------------- saving
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    def _card(self, metrics: dict[str, float] | None) -> dict:
        return _card(self.cfg, self.step, self.step / self.steps_per_epoch, metrics, self.elapsed())

    def checkpoint(self) -> None:
        if not self.is_main:
            return
        save_state(self.out_dir / STATE_FILE, {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_psnr": self.best_psnr,
            "elapsed_s": self.elapsed(),
            "rng": _rng_state(),
        })
        save_weights(self.model, self.out_dir / "last.safetensors", self._card(self.last_val or None))

    def run_validation(self) -> None:
        """Score the select split; keep the weights when ``run.keep_validated`` and as best when they beat it."""
        run = self.run_cfg
        if not self.is_main or self.val_view is None:
            return
        self.last_val = validate(self.model, self.val_view, self.device, self.cfg.data.val_batch_size,
                                 self.val_cache)
        self.val_log.write({"step": self.step, **self.last_val, "time": round(self.elapsed(), 1)})
        if self.tb is not None:
            for k, v in self.last_val.items():
                self.tb.add_scalar(f"val/{k}", v, self.step)
        if run.keep_validated:
            save_weights(self.model, self.out_dir / f"val_step{self.step}.safetensors", self._card(self.last_val))
        score = self.last_val.get(SELECT_KEYS[run.select], -math.inf)
        improved = score > self.best_psnr
        self.stale_validations = 0 if improved else self.stale_validations + 1
        if improved:
            self.best_psnr = score
            save_weights(self.model, self.out_dir / "best.safetensors", self._card(self.last_val))
        if self.hooks.on_validation is not None:
            self.hooks.on_validation(self.step, self.model, self.last_val, improved)

    def should_stop(self) -> str:
        """Why the run must end now ('' = it need not): time budget, early stopping or the caller's request."""
        run = self.run_cfg
        if run.max_minutes and self.elapsed() >= 60.0 * run.max_minutes:
            return "time budget"
        if run.patience and self.stale_validations >= run.patience:
            return "no improvement"
        if self.hooks.should_stop is not None and self.hooks.should_stop():
            return "requested"
        return ""

    # ------------------------------------------------------------------------------------------- one step
    def train_step(self, batch: dict[str, Any]) -> None:
        """Forward, loss (a non-finite one stops the run with a checkpoint), backward, optimiser and LR step."""
        tensors = to_device(batch, self.device)
        kwargs = model_kwargs(self.model, tensors)
        if self.want_stages:
            kwargs["return_stages"] = True
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            pred = self.ddp_model(tensors["optical"], tensors["sar"], **kwargs)
        pred = [p.float() for p in pred] if isinstance(pred, (list, tuple)) else pred.float()
        loss = self.loss_fn(pred, tensors)
        if self.teacher is not None:
            loss = loss + self.cfg.loss.teacher_weight * self.loss_fn(pred, self._teacher_batch(tensors))
        if not torch.isfinite(loss):
            self.checkpoint()
            raise TrainingDiverged(f"loss became {loss.item()} at step {self.step}: training diverged "
                                   "(lower the learning rate or enable optim.grad_clip)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.last_loss = float(loss.detach())
        self.window_loss += self.last_loss
        self.window_n += 1
        if self.want_stages:
            self.last_stages = list(self.loss_fn.last_terms)
            self.window_stages = ([a + b for a, b in zip(self.window_stages, self.last_stages)] if self.window_stages
                                  else list(self.last_stages))

    def _teacher_batch(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """The batch with the teacher's output as its target (same cloud mask, so the same weighting)."""
        with torch.no_grad():
            taught = self.teacher(tensors["optical"], tensors["sar"], **model_kwargs(self.teacher, tensors))
        return {**tensors, "target": taught.float()}

    def check_offsets(self) -> dict[str, float]:
        """Mean |offset| per deformable conv; stop (with a checkpoint) above ``run.offset_abort``, warn above
        ``run.offset_warn`` (EDVR's divergence sign)."""
        run = self.run_cfg
        offsets = offset_magnitudes(self.model) if self.n_dcn else {}
        offset_max = max(offsets.values()) if offsets else 0.0
        if run.offset_abort and offset_max > run.offset_abort:
            self.checkpoint()
            worst = max(offsets, key=offsets.get)
            raise TrainingDiverged(
                f"mean |offset| of {worst} reached {offset_max:.1f} px (> {run.offset_abort}) at step {self.step}: "
                "the alignment diverged (lower optim.alignment_lr or enable optim.grad_clip)"
            )
        if self.is_main and offset_max > run.offset_warn and self.step % run.log_every == 0:
            print(f"warning: mean |offset| {offset_max:.1f} px > {run.offset_warn} at step {self.step} "
                  "(EDVR: training may be diverging)", file=sys.stderr)
        return offsets

    def log_window(self, offsets: dict[str, float]) -> None:
        """Every ``run.log_every`` steps (and at the end): the window's mean loss, LR, offsets and speed."""
        step, n = self.step, self.window_n
        if not self.is_main or not (step % self.run_cfg.log_every == 0 or step == self.total_steps):
            return
        now = time.monotonic()
        row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
               "lr": self.optimizer.param_groups[0]["lr"], "loss": self.window_loss / n,
               "offset_mean": sum(offsets.values()) / len(offsets) if offsets else 0.0,
               "offset_max": max(offsets.values()) if offsets else 0.0, "sec_per_step": (now - self.window_t) / n,
               "time": round(self.elapsed(), 1),
               "stage_losses": ";".join(f"{v / n:.6g}" for v in self.window_stages)}
        self.train_log.write(row)
        if self.tb is not None:
            self.tb.add_scalar("train/loss", row["loss"], step)
            self.tb.add_scalar("train/lr", row["lr"], step)
            for i, v in enumerate(self.window_stages):
                self.tb.add_scalar(f"train/loss_stage{i}", v / n, step)
            for name, v in offsets.items():
                self.tb.add_scalar(f"offsets/{name}", v, step)
        self.window_loss, self.window_n, self.window_t = 0.0, 0, now
        self.window_stages = []

    def after_step(self) -> None:
        """Validation every ``run.val_every`` steps; a checkpoint every ``ckpt_every_steps`` or minutes."""
        run = self.run_cfg
        if run.val_every and self.step % run.val_every == 0:
            self.run_validation()
        minutes = (time.monotonic() - self.last_ckpt_time) / 60.0
        if (run.ckpt_every_steps and self.step % run.ckpt_every_steps == 0) or (
            run.ckpt_every_minutes and minutes >= run.ckpt_every_minutes
        ):
            self.checkpoint()
            self.last_ckpt_time = time.monotonic()
        if self.world > 1:
            dist.barrier()

    # ------------------------------------------------------------------------------------------- the loop
    def _epoch_loader(self) -> DataLoader:
        """This epoch's batches from the current step on (a resumed run skips what it already did)."""
        d = self.cfg.data
        epoch = self.step // self.steps_per_epoch
        skip = (self.step % self.steps_per_epoch) * d.batch_size
        self.train_view.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        return DataLoader(self.train_view, batch_size=d.batch_size, sampler=SkipSampler(self.sampler, skip),
                          num_workers=d.num_workers, drop_last=True, pin_memory=self.device.type == "cuda",
                          worker_init_fn=_worker_ignores_stop_signals if d.num_workers else None)  # fmt: skip

    def run(self) -> dict[str, Any]:
        run = self.run_cfg
        progress = None
        if self.is_main and run.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        stop = _StopFlag()
        self.model.train()
        try:
            while self.step < self.total_steps and not stop.requested:
                for batch in self._epoch_loader():
                    self.train_step(batch)
                    self.log_window(self.check_offsets())
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{self.last_loss:.4f}",
                                             lr=f"{self.optimizer.param_groups[0]['lr']:.1e}")
                    self.after_step()
                    if self.hooks.on_step is not None:
                        self.hooks.on_step(self.step, self.total_steps, self.last_loss)
                    self.stop_reason = self.stop_reason or self.should_stop()
                    if self.step >= self.total_steps or stop.requested or self.stop_reason:
                        break
                if self.stop_reason:
                    break
            if self.val_view is not None and (not run.val_every or self.step % run.val_every):
                self.run_validation()
            self.checkpoint()
        finally:
            stop.restore()
            if progress is not None:
                progress.close()
            if self.tb is not None:
                self.tb.close()
        return {"steps": self.step, "last_loss": self.last_loss, "last_stage_losses": self.last_stages,
                "best_psnr": self.best_psnr, "validation": self.last_val, "out_dir": str(self.out_dir),
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.world,
                "ddp": isinstance(self.ddp_model, nn.parallel.DistributedDataParallel),
                "stopped_by_signal": stop.requested, "stop_reason": self.stop_reason or (
                    "signal" if stop.requested else "")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="TOML recipe (training/configs/*.toml)")
    parser.add_argument("--resume", help="state_last.pt of an earlier run to continue")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimisation steps in total")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides run.device)")
    parser.add_argument("--out", help="output folder (overrides run.out_dir)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value (TOML syntax), e.g. --set optim.lr=2e-4")
    parser.add_argument("--pack", help="read the recipe's data from this training pack (python -m training.pack), "
                        "not from its files: a machine without the data or GDAL")  # fmt: skip
    args = parser.parse_args(argv)
    overrides = list(args.set)
    if args.max_steps is not None:
        overrides.append(f"run.max_steps={args.max_steps}")
    if args.device:
        overrides.append(f'run.device="{args.device}"')
    if args.out:
        overrides.append(f'run.out_dir="{args.out}"')
    try:
        if args.pack:
            packed.use(args.pack)
        cfg = load_config(args.config, overrides)
        summary = train(cfg, resume=args.resume)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(json.dumps({k: v for k, v in summary.items()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
