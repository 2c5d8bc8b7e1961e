"""What the plugin asks ``engine finetune`` for, and what it tells the user afterwards — Qt-free and torch-free.

Shared by the Processing algorithm ``aligncr:finetune`` and the dialog's *Train on my area…* window, so both build
the same command line and say the same thing on a cancel: the engine rewrites the output weights atomically at each
held-out improvement, so a cancelled run still leaves the best weights so far — :func:`kept_weights` reads their
card (no torch) to say which step they come from, and only trusts a file written after the run started (an older
file at the same path is not this run's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aligncr_qgis.model_cards import ModelCardError, read_card
from aligncr_qgis.run_options import absolute_path
from engine.models.finetune_record import read_record

DEFAULT_BASE = "aligncr-lite"


@dataclass
class FinetuneRequest:
    archive: str
    out: str
    base: str = DEFAULT_BASE  # bundled weights name, or a .safetensors path
    minutes: float = 30.0
    steps: int = 0
    patch_size: int = 256
    val_fraction: float = 0.25
    pair_days: float = 30.0
    sar_days: float = 3.0
    device: str = "auto"
    lr: float = 0.0  # 0 = the engine's default
    val_every: int = 0  # steps between validations; 0 = the engine's default

    def to_args(self) -> list[str]:
        """``engine finetune`` arguments (without ``--json``, which :class:`EngineProcess` adds); files and folders
        absolute, as the engine runs in the plugin's folder."""
        base = (["--weights", absolute_path(self.base)] if self.base.endswith(".safetensors")
                else ["--base", self.base])  # fmt: skip
        args = ["finetune", "--archive", absolute_path(self.archive), "--out", absolute_path(self.out), *base,
                "--minutes", f"{self.minutes:g}",
                "--patch-size", str(self.patch_size), "--val-fraction", f"{self.val_fraction:g}",
                "--pair-days", f"{self.pair_days:g}", "--sar-max-days", f"{self.sar_days:g}", "--device", self.device]
        for flag, value in (("--steps", self.steps), ("--lr", self.lr), ("--val-every", self.val_every)):
            if value:
                args += [flag, f"{value:g}"]
        return args


def finetune_info(path: str | Path) -> dict:
    """The ``finetune`` record of a fine-tuned weights file's card (base, archive, best step …), or {}."""
    try:
        notes = str(read_card(path).card.get("notes") or "")
    except (ModelCardError, OSError):
        return {}
    return read_record(notes) or {}


def kept_weights(out: str | Path, started: float) -> str:
    """After a cancel: the sentence saying which weights were kept in ``out``, or "" when this run wrote none."""
    path = Path(out)
    if not path.is_file() or path.stat().st_mtime < started:
        return ""
    step = finetune_info(path).get("best_step", 0)
    if not step:
        return f"no step beat the base model yet; {path} holds the base weights"
    return f"the best weights so far (step {step}) are kept in {path}"


def outcome_text(result: dict) -> str:
    """The headline of a finished run from the engine's ``result`` event: where, and the held-out table."""
    lines = [str(result.get("message", ""))]
    for split, v in (result.get("table") or {}).items():
        before, after = v.get("before_psnr_in"), v.get("model_psnr_in")
        flat, fill = v.get("flat_psnr_in"), v.get("fill_psnr_in")
        if after is None:
            continue
        lines.append(f"{split.removeprefix('holdout_')}: inside-cloud PSNR {before:.2f} → {after:.2f} dB "
                     f"(flat {flat:.2f}, fill {fill:.2f}; {v.get('scored_samples', 0)} held-out samples)")
    return "\n".join(line for line in lines if line)
