"""Settings of one fine-tuning run (``engine finetune``'s options, the Processing algorithm's parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE = "aligncr-lite"  # the bundled weights (resources/weights/aligncr-lite.safetensors)


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune, on what, within which budget.

    Patch and block sizes are in optical pixels / patches: the archive is cut into ``patch_size`` squares (the
    training samples; random ``crop``-pixel windows of them are trained on) and whole ``block_cells`` ×
    ``block_cells`` blocks of patches are held out for validation — never a random pixel or patch split, so the
    validation score is measured on ground the model did not see.
    """

    archive: Path
    out: Path
    base: str = DEFAULT_BASE  # a weights file name in resources/weights (without .safetensors)
    weights: Path | None = None  # or any weights file (overrides ``base``)
    minutes: float = 30.0  # training time budget (0 = none; then ``steps`` must be set)
    steps: int = 0  # optimisation-step budget (0 = none)
    device: str = "auto"
    val_fraction: float = 0.25  # share of the blocks held out for validation
    patch_size: int = 256
    block_cells: int = 2
    crop: int = 0  # training crop in pixels; 0 = ¾ of the patch, at most 112 (the bundled recipe's crop)
    pair_days: float = 30.0  # a real pair's clear image lies within this many days of the cloudy one
    sar_days: float = 3.0  # an optical patch pairs with the nearest Sentinel-1 patch within this many days
    clear_max: float = 1.0  # % cloud at most in a "clear" patch (detected masks have stray pixels)
    cloudy_min: float = 2.0  # % cloud at least in the cloudy patch of a real pair
    batch_size: int = 4
    lr: float = 1e-4  # the paper's rate (half the bundled recipe's): fine-tuning, not training anew
    alignment_lr: float = 1e-5
    val_every: int = 25  # steps between validations
    patience: int = 8  # validations without improvement before stopping early
    samples_per_epoch: int = 200
    threads: int = 0  # torch CPU threads (0 = torch's default)
    seed: int = 0
    resume: bool = False  # continue the checkpoint left in the work folder by an earlier run with these settings

    @property
    def work_dir(self) -> Path:
        """Split CSVs, logs and resumable checkpoints, next to the output: ``OUT.finetune/``."""
        return self.out.with_name(self.out.name + ".finetune")

    @property
    def train_crop(self) -> int:
        return self.crop or min(112, (self.patch_size * 3 // 4) // 8 * 8)
