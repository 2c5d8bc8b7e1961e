"""What the plugin asks ``engine finetune`` for, and what it tells the user afterwards — Qt-free and torch-free.

Shared by the Processing algorithm ``aligncr:finetune`` and the dialog's *Train on my area…* window, so both build
the same command line and say the same thing on a cancel: the engine rewrites the output weights atomically at each
held-out improvement, so a cancelled run still leaves the best weights so far — :func:`kept_weights` reads their
card (no torch) to say which step they come from, and only trusts a file written after the run started (an older
file at the same path is not this run's).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from aligncr_qgis.model_cards import ModelCardError, read_card
from engine.config import absolute_name
from engine.models.finetune_record import read_record

DEFAULT_BASE = "aligncr-lite"
AUTO_PATCH = 0  # patch size chosen from the archive's scenes (patch_for_archive)
ENGINE_PATCH = 256  # engine finetune's own default, when the archive's scenes cannot be read here
PATCH_SIZES = (256, 192, 128, 96, 64, 48, 32, 16)
MIN_BLOCKS = 4  # blocks of patches the auto patch size aims for: one held out, the rest trained on
RASTERS = (".tif", ".tiff", ".vrt", ".jp2")
# Each engine finetune flag in words: the window's field names and Processing's parameters (issue 28: the window's
# errors named CLI flags, such as "lower --patch-size").
FIELDS = {"--patch-size": ("Patch size", "PATCH_SIZE"), "--val-fraction": ("Held-out share", "VAL_FRACTION"),
          "--pair-days": ("Real pairs within (days)", "PAIR_DAYS"),
          "--sar-max-days": ("Sentinel-1 within (days)", "SAR_MAX_DAYS"),
          "--block-cells": ("Held-out block (patches)", "BLOCK_CELLS"), "--minutes": ("Time budget", "MINUTES"),
          "--steps": ("Step budget", "STEPS"), "--base": ("Start from", "BASE"), "--weights": ("Start from", "BASE"),
          "--archive": ("Archive folder", "ARCHIVE"), "--device": ("Device", "DEVICE"),
          "--lr": ("Learning rate", "LEARNING_RATE"), "--val-every": ("Steps between validations", "VAL_EVERY")}
_FLAG = re.compile(r"--[a-z][a-z-]+")


@dataclass
class FinetuneRequest:
    archive: str
    out: str
    base: str = DEFAULT_BASE  # bundled weights name, or a .safetensors path
    minutes: float = 30.0
    steps: int = 0
    patch_size: int = ENGINE_PATCH  # AUTO_PATCH: chosen from the archive (patch_for_archive) when the run starts
    val_fraction: float = 0.25
    pair_days: float = 30.0
    sar_days: float = 3.0
    block_cells: int = 2
    device: str = "auto"
    lr: float = 0.0  # 0 = the engine's default
    val_every: int = 0  # steps between validations; 0 = the engine's default

    def to_args(self) -> list[str]:
        """``engine finetune`` arguments (without ``--json``, which :class:`EngineProcess` adds); files and folders
        absolute, as the engine runs in the plugin's folder."""
        base = (["--weights", absolute_name(self.base)] if self.base.endswith(".safetensors")
                else ["--base", self.base])  # fmt: skip
        args = ["finetune", "--archive", absolute_name(self.archive), "--out", absolute_name(self.out), *base,
                "--minutes", f"{self.minutes:g}",
                "--patch-size", str(self.resolved_patch()), "--val-fraction", f"{self.val_fraction:g}",
                "--pair-days", f"{self.pair_days:g}", "--sar-max-days", f"{self.sar_days:g}", "--block-cells",
                str(self.block_cells), "--device", self.device]
        for flag, value in (("--steps", self.steps), ("--lr", self.lr), ("--val-every", self.val_every)):
            if value:
                args += [flag, f"{value:g}"]
        return args


    def choose_patch(self) -> str:
        """With :data:`AUTO_PATCH`, fix the patch size from the archive now and say why (so the run and what the
        user reads agree); "" when a size was given."""
        if self.patch_size != AUTO_PATCH:
            return ""
        self.patch_size, why = patch_for_archive(self.archive, self.block_cells)
        return why

    def resolved_patch(self) -> int:
        """The patch size the run uses: as given, or (:data:`AUTO_PATCH`) the archive's (:func:`patch_for_archive`)."""
        if self.patch_size != AUTO_PATCH:
            return self.patch_size
        return patch_for_archive(self.archive, self.block_cells)[0]


def patch_for_archive(archive: str | Path, block_cells: int = 2) -> tuple[int, str]:
    """(patch size, why) for an archive: the largest of :data:`PATCH_SIZES` that cuts its largest optical scene into
    at least :data:`MIN_BLOCKS` held-out blocks of ``block_cells``² patches (else into the most), so a small archive
    trains instead of failing with "lower --patch-size" (issue 28). Scene sizes are read with GDAL (QGIS ships it);
    an archive of products it cannot size keeps the engine's default."""
    sizes = _optical_sizes(Path(archive) / "optical")
    if not sizes:
        return ENGINE_PATCH, f"the engine's default ({ENGINE_PATCH} px): the archive's scene sizes are unknown here"
    width, height = max(w for w, _ in sizes), max(h for _, h in sizes)

    def blocks(patch: int) -> int:
        return math.ceil(width // patch / block_cells) * math.ceil(height // patch / block_cells)

    fitting = [p for p in PATCH_SIZES if blocks(p) >= MIN_BLOCKS]
    patch = fitting[0] if fitting else max(PATCH_SIZES, key=lambda p: (blocks(p), p))
    return patch, f"{patch} px: {blocks(patch)} blocks of the archive's largest scene ({width}×{height} px)"


def _optical_sizes(folder: Path) -> list[tuple[int, int]]:
    """(width, height) of the rasters in an archive's ``optical/`` folder (masks aside) that GDAL opens."""
    if not folder.is_dir():
        return []
    from osgeo import gdal

    sizes = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in RASTERS or path.stem.endswith(("_mask", "_scl")):
            continue
        ds = gdal.Open(str(path))
        if ds is not None:
            sizes.append((ds.RasterXSize, ds.RasterYSize))
        ds = None
    return sizes


def in_words(message: str, processing: bool = False) -> str:
    """An engine message with its CLI flags named as the window's fields (or Processing's parameters)."""
    return _FLAG.sub(lambda m: f"'{FIELDS[m.group(0)][int(processing)]}'" if m.group(0) in FIELDS else m.group(0),
                     message)


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
