"""msop-unet trains with training/: build_dataset splits (MSOP layout) → LayoutSplit → the real loop → engine weights.

A 48×48-pixel archive (16 cells of 12×12 px) with one optical scene every 5 days, each with a SAR scene a day later;
odd scenes are cloudy (+5700 DN) over the western half. Every optical scene carries the same spatial texture and a
DN that grows with the date, every SAR scene a texture on its own grid and a date offset, so a crop, flip or
rotation applied to one date and not to another shows up as a non-constant difference between dates.
"""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_archive import alternating_archive, augmented_draws, crop_flip_rot, d, optical_dn

from engine.errors import EngineError, InputError
from engine.models import weights as model_weights
from training.build_dataset import build
from training.config import load_config
from training.datasets import AugmentConfig, TrainView, build_reader
from training.layout.query import MSOP, SSOP
from training.layout.split import SplitConfig
from training.train import train

ROOT = Path(__file__).resolve().parents[1]
N, PATCH = 48, 12  # 12 px: validation's SSIM needs 11×11
DATES = [d(5, 1) + timedelta(days=5 * k) for k in range(10)]  # May 1 … June 15
SPLIT = SplitConfig(block_cells=1, val=0.125, test=0.125, seed=0)
TINY_MSOP = "model.overrides.widths=[8, 8, 8]"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return alternating_archive(tmp_path_factory.mktemp("msop_archive"), N, DATES)


@pytest.fixture(scope="module")
def msop_splits(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("msop_splits")
    res = build(archive, out, MSOP, patch_size=PATCH, split=SPLIT)
    assert len(res.splits["train"]) >= 40 and res.splits["val"] and res.splits["test"]
    return out


def _layout(root: Path, split: str = "train", **extra: object):
    return build_reader({"kind": "layout", "root": str(root), "split": split, **extra})


def test_layout_reader_maps_items_to_the_temporal_contract(archive: Path, msop_splits: Path) -> None:
    reader = _layout(msop_splits, require=["t-1", "t+1"])
    with (msop_splits / "train.csv").open() as fh:
        row = next(csv.DictReader(fh))
    s = reader.read(0)
    assert {"optical", "sar", "target", "mask", "optical_prev", "sar_prev", "optical_next", "sar_next",
            "landcover", "t", "t_prev", "t_next", "t_target"} <= set(s)
    assert s["optical"].shape == s["optical_prev"].shape == s["target"].shape == (4, PATCH, PATCH)
    assert s["sar"].shape == s["sar_next"].shape == (2, PATCH, PATCH)  # 10 m SAR brought onto the 5 m patch grid
    # each key holds the scene its layout item names, scaled by engine.sources.normalise (DN / 1e4, clear pixels)
    for item, key in (("t-1", "optical_prev"), ("t+1", "optical_next"), ("target", "target")):
        name = Path(row[f"{item}_optical"]).stem
        when = DATES[int(name[1:])]
        assert s[key].min() >= optical_dn(when) / 1e4 - 1e-6
        assert s[{"t-1": "t_prev", "t+1": "t_next", "target": "t_target"}[item]] == when.timestamp()
    assert s["t_prev"] < s["t"] < s["t_next"] and abs(s["t_target"] - s["t"]) <= 10 * 86400
    # the target is cloud-free: it is never the bright cloud value
    assert s["target"].max() < 0.1
    # an SSOP split has no t-1 / t+1: refused up front when the recipe requires them
    ssop = msop_splits.parent / "ssop_for_reader"
    build(archive, ssop, SSOP, patch_size=PATCH, split=SPLIT)
    with pytest.raises(InputError, match="t-1"):
        _layout(ssop, require=["t-1", "t+1"])
    with pytest.raises(InputError, match="split"):
        _layout(msop_splits, split="training")


def test_augmentation_is_identical_on_every_date(msop_splits: Path) -> None:
    """Random crop + flips + rot90 over many draws: each date's image is the same transform of its own patch."""
    reader = _layout(msop_splits)
    c = 8
    view = TrainView([reader], AugmentConfig(crop=c, random_crop=True, flips=True, rot90=True), seed=1)
    transforms_seen = set()
    for out, raw, (y, x, k, flip) in augmented_draws(view, reader, c):
        assert out["optical"].shape == (4, c, c) and out["sar"].shape == (2, c, c)
        transforms_seen.add((k, flip))
        for key in ("optical_prev", "optical_next", "target", "sar", "sar_prev", "sar_next", "mask"):
            np.testing.assert_array_equal(out[key].numpy(), crop_flip_rot(raw[key], y, x, c, k, flip), err_msg=key)
        assert out["t_prev"] == raw["t_prev"] and isinstance(out["t_next"], float)
    assert len(transforms_seen) >= 4  # the draws did flip and rotate


def test_msop_unet_trains_through_the_loop_and_loads_in_the_engine(msop_splits: Path, tmp_path: Path) -> None:
    """The shipped recipe with tiny widths: 40 steps lower the L1 loss; best/last weights load with the engine."""
    out = tmp_path / "run"
    train_spec = f'[{{kind = "layout", root = "{msop_splits}", split = "train", require = ["t-1", "t+1"]}}]'
    val_spec = f'[{{kind = "layout", root = "{msop_splits}", split = "val", require = ["t-1", "t+1"]}}]'
    cfg = load_config(ROOT / "training/configs/msop_unet.toml", [
        TINY_MSOP, f"data.train={train_spec}", f"data.val={val_spec}", "data.batch_size=4", "data.num_workers=0",
        "data.cache=true", "optim.lr=2e-3", "run.max_steps=40", f'run.out_dir="{out}"', 'run.device="cpu"',
        "run.threads=1", "run.log_every=1", "run.val_every=20", "run.ckpt_every_steps=0", "run.ckpt_every_minutes=0",
        "run.progress=false",
    ])
    assert cfg.model.name == "msop-unet" and cfg.loss.kind == "l1" and cfg.optim.lr == 2e-3
    summary = train(cfg)
    assert summary["steps"] == 40
    with open(out / "train_log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    with open(out / "val_log.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2  # validation ran the temporal model too (steps 20 and 40)

    batch = torch.utils.data.default_collate([_layout(msop_splits, "test")[i] for i in range(2)])
    temporal = {k: batch[k] for k in ("optical_prev", "sar_prev", "optical_next", "sar_next")}
    state = torch.load(out / "state_last.pt", weights_only=True)["model"]
    for name in ("best", "last"):
        model, card = model_weights.load(out / f"{name}.safetensors")
        assert card.arch == "msop-unet" and tuple(card.config["widths"]) == (8, 8, 8)
        assert np.isfinite(card.metrics["validation"]["psnr"])
        assert getattr(model, "temporal_inputs", None) == ("prev", "next")
        with torch.no_grad():
            pred = model.eval()(batch["optical"], batch["sar"], **temporal)
        assert pred.shape == batch["target"].shape and torch.isfinite(pred).all()
        if name == "last":
            for key, value in model.state_dict().items():
                torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_evaluate_scores_temporal_models_on_a_layout_split(msop_splits: Path, tmp_path: Path) -> None:
    """training.evaluate on a build_dataset folder: msop-unet weights and the weightless gapfill get their dates."""
    import json

    from engine.models import build_model
    from training.evaluate import main as evaluate_main

    torch.manual_seed(0)
    weights = model_weights.save(build_model("msop-unet", widths=(8, 8, 8)), tmp_path / "msop.safetensors",
                                 {"training_data": "none (test)"})
    n_test = len(_layout(msop_splits, "test"))
    for name in (str(weights), "gapfill"):
        out = tmp_path / "report.json"
        assert evaluate_main(["--weights", name, "--data", str(msop_splits), "--out", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["samples"] == n_test and set(report["results"]) == {"model", "identity"}
        model_rows = report["results"]["model"]["per_sample"]
        assert len(model_rows) == n_test and all(np.isfinite(r["psnr"]) for r in model_rows)
    # gap-filling between clear t-1 / t+1 (eastern cells, never cloudy) is exact up to the target's own date
    east = [r for r, row in zip(model_rows, _layout(msop_splits, "test").rows) if int(row["col"]) >= 2]
    assert east and all(r["mae"] < 0.0011 for r in east)  # |DN(t) - DN(t')| <= 10 days = 10 DN = 0.001


def test_a_temporal_model_on_single_date_data_stops_before_training(archive: Path, tmp_path: Path) -> None:
    ssop = tmp_path / "ssop"
    build(archive, ssop, SSOP, patch_size=PATCH, split=SPLIT)
    spec = f'[{{kind = "layout", root = "{ssop}", split = "train"}}]'
    cfg = load_config(ROOT / "training/configs/msop_unet.toml", [
        TINY_MSOP, f"data.train={spec}", "data.val=[]", "data.batch_size=2", "data.num_workers=0",
        f'run.out_dir="{tmp_path / "run"}"', 'run.device="cpu"', "run.progress=false",
    ])
    with pytest.raises(EngineError, match="optical_prev, sar_prev, optical_next, sar_next"):
        train(cfg)
    assert not (tmp_path / "run" / "state_last.pt").exists()
