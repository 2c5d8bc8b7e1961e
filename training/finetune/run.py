"""One fine-tuning run, start to finish: checks, index, base scores, training, output weights with their card.

Order matters for the user: everything that can be wrong with the request (settings, the output folder, the base
model, the archive: one scene, no clear acquisition, no Sentinel-1 within the limit, too small to hold a block
out) is found before a single step is trained, and said in one line. The output file is only ever written
atomically (:func:`engine.models.weights.save`), and only with weights that beat the base model on the held-out
block: it is rewritten at each validation that improves the held-out inside-cloud PSNR, so a cancel or a crash
leaves the best weights so far — and the card of the final write says where the run stopped. If no checkpoint ever
beats the base model, the base weights are written unchanged with a card that says so.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import EngineError, ModelError, OutputError
from engine.models.finetune_record import read_record, record_line
from engine.progress import Progress
from training.config import DataSection, ModelSection, OptimSection, RunSection, ScheduleSection, TrainConfig
from training.finetune.config import FinetuneConfig
from training.finetune.samples import KINDS, build_samples, index_archive, write_splits
from training.finetune.scores import (
    CLOUD_MODEL,
    holdout_table,
    reader_spec,
    score_views,
    selection_score,
    validation_views,
)
from training.losses import LossConfig

MARKER = "archive.json"  # written by write_splits: a work folder holding it is ours to clear
PROGRESS = (0.05, 0.1, 0.97)  # fractions: archive indexed, base model scored, training done
ALIGNMENT_MODULES = ["engine.models.aligncr_arch:PCDAlignment"]  # the bundled recipe's 10:1 LR split


@dataclass
class FinetuneResult:
    output: Path
    steps: int = 0
    best_step: int = 0  # 0: no checkpoint beat the base model (the output holds the base weights)
    stop_reason: str = ""
    table: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def cancelled(self) -> bool:
        return self.stop_reason in ("signal", "requested")


# --------------------------------------------------------------------------------------------- checks
def check_settings(cfg: FinetuneConfig) -> None:
    if cfg.minutes <= 0 and cfg.steps <= 0:
        raise EngineError("give a budget: --minutes N or --steps N")
    if not 0 < cfg.val_fraction < 1:
        raise EngineError(f"--val-fraction must be between 0 and 1, not {cfg.val_fraction:g}")
    if cfg.patch_size < 16 or cfg.block_cells < 1:
        raise EngineError("--patch-size must be at least 16 pixels and --block-cells at least 1")


def check_output(out: Path) -> None:
    """The output must be a .safetensors file in an existing folder we can write into (probed with a real file)."""
    if out.suffix.lower() != ".safetensors":
        raise OutputError(f"the output must be a .safetensors file, not {out.name}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".aligncr-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write into {folder}: {exc.strerror or exc}") from None


def resolve_base(cfg: FinetuneConfig) -> Path:
    """The base weights: ``--weights FILE``, else the bundled file named by ``--base``; its card is checked."""
    from engine.commands.models import WEIGHTS_DIR
    from engine.models.weights import read_card

    if cfg.weights is not None:
        path = Path(cfg.weights)
        if not path.is_file():
            raise ModelError(f"weights file {path} not found")
    else:
        path = WEIGHTS_DIR / f"{cfg.base}.safetensors"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors"))) or "none"
            raise ModelError(f"no bundled weights named '{cfg.base}' (bundled: {known}); or give --weights FILE")
    read_card(path)
    return path


def prepare_work_dir(cfg: FinetuneConfig) -> Path:
    """``OUT.finetune/``: kept when resuming, else cleared — but only if an earlier run of ours made it."""
    work = cfg.work_dir
    if work.exists() and not cfg.resume:
        if not (work / MARKER).is_file():
            raise OutputError(f"{work} exists and is not a fine-tuning work folder: move it away")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


# --------------------------------------------------------------------------------------------- recipe
def make_recipe(cfg: FinetuneConfig, arch: str, base: Path, specs: dict[str, dict[str, dict]], work: Path
                ) -> TrainConfig:
    """The training recipe: the paper's loss (Charbonnier-style, cloud weight 5) and 10:1 LR split, the bundled
    recipe's augmentation and synthetic-cloud model, a constant small LR, the budget and early stopping."""
    return TrainConfig(
        model=ModelSection(name=arch, init_weights=str(base)),
        data=DataSection(
            train=[s["train"] for s in specs.values() if "train" in s],
            val=[s["val"] for s in specs.values() if "val" in s],
            crop=cfg.train_crop, val_crop=0, batch_size=cfg.batch_size, samples_per_epoch=cfg.samples_per_epoch,
            synthetic_clouds=0.0, cloud_model=CLOUD_MODEL, cache=True,
        ),
        optim=OptimSection(lr=cfg.lr, alignment_lr=cfg.alignment_lr, alignment_modules=ALIGNMENT_MODULES,
                           grad_clip=1.0),
        schedule=ScheduleSection(epochs=1_000_000, start_epoch=1_000_000),
        loss=LossConfig(kind="charbonnier", weight=5.0, eps2=1e-6, alpha=0.45),
        run=RunSection(seed=cfg.seed, out_dir=str(work), device=cfg.device, max_steps=cfg.steps,
                       threads=cfg.threads, log_every=10, val_every=cfg.val_every, ckpt_every_steps=cfg.val_every,
                       progress=False, select="margin", max_minutes=cfg.minutes, patience=cfg.patience),
    )


def reader_specs(paths: dict[str, dict[str, Path]], archive: Path, counts: dict[str, dict[str, int]]
                 ) -> dict[str, dict[str, dict]]:
    return {kind: {split: reader_spec(paths[kind][split], archive, kind) for split in ("train", "val")
                   if counts[kind][split]} for kind in KINDS}


# --------------------------------------------------------------------------------------------- the card
def card_for(base_card: Any, base: Path, summary: dict, table: dict, run: dict[str, Any], cfg: FinetuneConfig
             ) -> dict[str, Any]:
    """The output's model card: the base's input contract, the archive, the held-out table, the settings."""
    n = summary["samples"]
    lon0, lat0, lon1, lat1 = summary["bounds_lonlat"]
    training_data = (
        f"Fine-tuned on the user's archive {summary['archive']} ({summary['sensor']}; {summary['crs']}, "
        f"lon {lon0}…{lon1}, lat {lat0}…{lat1}; {summary['dates'][0][:10]} to {summary['dates'][1][:10]}; "
        f"{summary['scenes']['optical']} optical and {summary['scenes']['sar']} Sentinel-1 scenes): "
        f"{n['real']['train']} real and {n['synthetic']['train']} synthetic-cloud training pairs, validated on "
        f"{n['real']['val']} real and {n['synthetic']['val']} synthetic pairs of {len(summary['held_out_blocks'])} "
        f"held-out block(s) of {summary['block_cells']}×{summary['block_cells']} {summary['patch_size']}-px patches."
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    finetune = {"base": {"file": base.name, "arch": base_card.arch, "created": base_card.created},
                "archive": summary, "settings": settings, **run}
    return {
        "bands": base_card.bands, "sar_bands": base_card.sar_bands, "normalisation": base_card.normalisation,
        "sar_units": base_card.sar_units, "training_data": training_data, "metrics": table,
        "notes": f"Fine-tuned from {base.name} ({base_card.arch}) with 'engine finetune'; held-out tables: model = "
                 "after, before = the base model.\n" + record_line(finetune),
    }


def card_record(weights: Path) -> dict[str, Any]:
    """The run's record in a fine-tuned weights file's card (base, archive summary, settings, steps)."""
    from engine.models.weights import read_card

    record = read_record(read_card(weights).notes)
    if record is None:
        raise ModelError(f"{weights} was not written by 'engine finetune' (its card has no fine-tuning record)")
    return record


# --------------------------------------------------------------------------------------------- the run
class _Run:
    """The state a run shares between its steps and the trainer's hooks: the best held-out score so far and the
    weights that made it (a CPU copy, so the final card can be written with them)."""

    def __init__(self, cfg: FinetuneConfig, base: Path, progress: Progress) -> None:
        from training.train import pick_device

        self.cfg, self.base, self.progress = cfg, base, progress
        self.device = pick_device(cfg.device, 0)  # an unavailable device is refused before anything is written
        self.t0 = time.monotonic()
        self.best_step, self.best_state, self.table = 0, None, {}
        self.steps, self.stop_reason = 0, ""

    def prepare(self) -> None:
        from engine.models import weights

        cfg, progress = self.cfg, self.progress
        self.idx = index_archive(cfg, progress.scaled(0.0, PROGRESS[0]))
        for notice in self.idx.notices:
            progress.warn(notice)
        self.samples = build_samples(self.idx, cfg)
        self.work = prepare_work_dir(cfg)
        paths = write_splits(self.work, self.idx, self.samples, cfg)
        self.specs = reader_specs(paths, self.idx.root, self.samples.summary["samples"])
        self.views = validation_views({k: s["val"] for k, s in self.specs.items() if "val" in s}, cfg.seed)
        progress.update(PROGRESS[0], "scoring the base model on the held-out block")
        self.model, self.base_card = weights.load(self.base, self.device)
        self.before = score_views(self.model, self.views, self.device)
        self.best_score = selection_score(self.before)
        self.table = holdout_table(self.before, self.before)

    def close(self) -> None:
        """The archive's product VRTs (:class:`training.finetune.samples.ArchiveIndex`), once nothing reads them."""
        idx = getattr(self, "idx", None)
        if idx is not None:
            idx.close()

    def on_step(self, step: int, total: int, loss: float) -> None:
        cfg, (_, start, stop) = self.cfg, PROGRESS
        done = step / total if total else 0.0
        if cfg.minutes > 0:
            done = max(done, (time.monotonic() - self.train_t0) / (60.0 * cfg.minutes))
        self.steps = step
        self.progress.update(start + (stop - start) * min(done, 1.0), f"step {step}, loss {loss:.4f}")

    def on_validation(self, step: int, model: Any, metrics: dict[str, float], improved: bool) -> None:
        """Score the held-out views; when the inside-cloud PSNR beats the best so far, keep and write the weights."""
        rows = score_views(model, self.views, self.device)
        score = selection_score(rows)
        if score <= self.best_score:
            return
        self.best_score, self.best_step = score, step
        self.best_state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        self.table = holdout_table(self.before, rows)
        self.write(model, f"in progress: best so far at step {step}")

    def write(self, model: Any, stop_reason: str) -> None:
        from engine.models import weights

        run = {"best_step": self.best_step, "steps": self.steps, "stop_reason": stop_reason,
               "minutes": round((time.monotonic() - self.t0) / 60.0, 2)}
        card = card_for(self.base_card, self.base, self.samples.summary, self.table, run, self.cfg)
        weights.save(model, self.cfg.out, card)

    def figure(self) -> None:
        """``WORK/holdout.png`` (:mod:`training.finetune.figure`) when matplotlib is installed."""
        from training.finetune.figure import holdout_figure

        try:
            holdout_figure(self.cfg.out, self.work / "holdout.png", self.base)
        except ImportError as exc:
            self.progress.warn(f"no held-out figure: {exc.name} is not installed (pip install matplotlib)")

    def train(self) -> dict[str, Any]:
        from training.train import STATE_FILE, TrainHooks, train

        cfg = self.cfg
        recipe = make_recipe(cfg, self.base_card.arch, self.base, self.specs, self.work)
        resume = self.work / STATE_FILE if cfg.resume and (self.work / STATE_FILE).is_file() else None
        hooks = TrainHooks(on_step=self.on_step, on_validation=self.on_validation,
                           should_stop=lambda: self.progress.cancelled)
        self.train_t0 = time.monotonic()
        return train(recipe, resume=resume, hooks=hooks)

    def finish(self, summary: dict[str, Any]) -> FinetuneResult:
        """The final write: the best weights (or the base ones, unchanged) with the card saying how the run ended."""
        self.steps, self.stop_reason = int(summary["steps"]), summary.get("stop_reason") or "budget"
        final = copy.deepcopy(self.model)  # the base model object: the best weights go into a copy of it
        if self.best_state is not None:
            final.load_state_dict(self.best_state)
        else:
            self.progress.warn("no checkpoint beat the base model on the held-out block: the output holds the base "
                               "weights unchanged")
        self.write(final, self.stop_reason)
        result = FinetuneResult(self.cfg.out, self.steps, self.best_step, self.stop_reason, self.table,
                                self.samples.summary, time.monotonic() - self.t0)
        if not result.cancelled:  # a cancelled run exits at once (the plugin kills it two seconds after asking)
            self.figure()
        return result


def finetune(cfg: FinetuneConfig, progress: Progress | None = None) -> FinetuneResult:
    """Fine-tune the base model on ``cfg.archive`` and write ``cfg.out`` (see the module docstring)."""
    progress = progress or Progress()
    check_settings(cfg)
    check_output(Path(cfg.out))
    run = _Run(cfg, resolve_base(cfg), progress)
    try:
        run.prepare()
        progress.update(PROGRESS[1], "fine-tuning")
        summary = run.train()
        result = run.finish(summary)
    finally:
        run.close()
    progress.update(1.0, "done")
    return result

