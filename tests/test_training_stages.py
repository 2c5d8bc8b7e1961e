"""Deep supervision of the MMCANet MPIR variants: the return_stages hook, StageLoss maths, the loop on every stage."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_rasters import write_tiny_sen12

from engine.errors import EngineError
from engine.models import build_model
from training.config import load_config
from training.losses import L1Loss, StageLoss, batch_at, build_loss
from training.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY_MPIR = {"width": 8, "enc_blocks": (1, 1, 1), "dec_blocks": (1, 1), "kba_bases": 4, "orb_count": 1,
             "cabs_per_orb": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("name", "n_stages"), [("mmcanet-mpir2", 3), ("mmcanet-mpir4", 2)])
def test_return_stages_is_forward_stages_and_default_is_the_final_image(name: str, n_stages: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, **TINY_MPIR).eval()
    opt, sar = torch.rand(1, 4, 32, 32), torch.rand(1, 2, 10, 10)
    with torch.no_grad():
        stages = model(opt, sar, return_stages=True)
        reference = model.forward_stages(opt, sar)
        final = model(opt, sar)
    assert len(stages) == n_stages
    for a, b in zip(stages, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(final, stages[-1], rtol=0, atol=0)
    assert [s.shape[-1] for s in stages] == [32 // 2 ** (n_stages - 1 - i) for i in range(n_stages)]


def test_stage_loss_values_gradients_and_errors() -> None:
    torch.manual_seed(0)
    target = torch.rand(2, 4, 32, 32)
    batch = {"target": target, "optical": torch.rand(2, 4, 32, 32), "mask": torch.ones(2, 1, 32, 32)}
    preds = [torch.rand(2, 4, s, s, requires_grad=True) for s in (8, 16, 32)]
    loss = StageLoss(L1Loss(), [0.5, 1.0, 2.0])
    value = loss(preds, batch)
    pooled = [F.avg_pool2d(target, 4), F.avg_pool2d(target, 2), target]
    by_hand = [(p - t).abs().mean() for p, t in zip(preds, pooled)]
    torch.testing.assert_close(value, 0.5 * by_hand[0] + by_hand[1] + 2.0 * by_hand[2])
    assert loss.last_terms == pytest.approx([float(v.detach()) for v in by_hand])
    value.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preds)
    # a block average of the target, so a coarse stage that is the pooled target has zero loss
    assert float(L1Loss()(pooled[0], batch_at(batch, (8, 8)))) == 0.0
    assert batch_at(batch, (8, 8))["mask"].shape == (2, 1, 8, 8)

    zero_first = StageLoss(L1Loss(), [0.0, 1.0, 1.0])
    preds = [p.detach().requires_grad_() for p in preds]
    zero_first(preds, batch).backward()
    assert preds[0].grad is None and preds[2].grad is not None and np.isnan(zero_first.last_terms[0])
    # a single tensor is the wrapped loss; [] weights = the final output only
    torch.testing.assert_close(StageLoss(L1Loss())(preds[2], batch), by_hand[2])
    torch.testing.assert_close(StageLoss(L1Loss())(preds, batch), by_hand[2])
    with pytest.raises(EngineError, match="2 weight"):
        StageLoss(L1Loss(), [1.0, 1.0])(preds, batch)
    with pytest.raises(EngineError, match="whole factor"):
        StageLoss(L1Loss(), [1.0, 1.0])([torch.rand(2, 4, 10, 10), preds[2]], batch)
    with pytest.raises(EngineError, match="all zero"):
        StageLoss(L1Loss(), [0.0, 0.0, 0.0])(preds, batch)


def test_each_stage_weight_reaches_its_own_stage() -> None:
    """Weight on stage 0 alone trains stage 0's output head and not the last stage's; all weights reach every head."""
    torch.manual_seed(0)
    model = build_model("mmcanet-mpir2", **TINY_MPIR)
    opt, sar, target = torch.rand(2, 4, 32, 32), torch.rand(2, 2, 32, 32), torch.rand(2, 4, 32, 32)
    batch = {"target": target, "optical": opt}
    for weights, expect in (([1.0, 0.0, 0.0], [True, False, False]), ([1.0, 1.0, 1.0], [True, True, True])):
        model.zero_grad(set_to_none=True)
        StageLoss(L1Loss(), weights)(model(opt, sar, return_stages=True), batch).backward()
        got = [tail.weight.grad is not None and float(tail.weight.grad.abs().sum()) > 0 for tail in model.tails]
        assert got == expect, weights


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_mpir2_recipe_overfit_lowers_every_stage_loss(tmp_path: Path) -> None:
    """The shipped MPIR2 recipe (tiny widths, 64 px images, L1): 40 loop steps; each stage's own term falls."""
    root = write_tiny_sen12(tmp_path / "data", size=64)
    out = tmp_path / "run"
    train_spec = f'[{{kind = "sen12mscr", root = "{root}", include = ["0", "1"]}}]'
    val_spec = f'[{{kind = "sen12mscr", root = "{root}", include = ["2"]}}]'
    overrides = [f"model.overrides.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY_MPIR.items()]
    cfg = load_config(ROOT / "training/configs/mmcanet_mpir2.toml", [
        *overrides, f"data.train={train_spec}", f"data.val={val_spec}", "data.crop=0", "data.val_crop=0",
        "data.batch_size=2", "data.num_workers=0", "data.cache=true", "optim.lr=3e-3", "run.max_steps=40",
        'loss.kind="l1"',  # the recipe's L1 + SSIM moves slowly on the 16 px first stage; L1 shows the routing
        f'run.out_dir="{out}"', 'run.device="cpu"', "run.threads=1", "run.log_every=1", "run.val_every=0",
        "run.ckpt_every_steps=0", "run.ckpt_every_minutes=0", "run.progress=false",
    ])
    assert cfg.loss.stage_weights == [1.0, 1.0, 1.0]
    assert load_config(ROOT / "training/configs/mmcanet_mpir2.toml").loss.kind == "l1_ssim"
    assert isinstance(build_loss(cfg.loss), StageLoss)
    summary = train(cfg)
    assert summary["steps"] == 40 and len(summary["last_stage_losses"]) == 3
    with open(out / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    stages = np.array([[float(v) for v in r["stage_losses"].split(";")] for r in rows])
    losses = np.array([float(r["loss"]) for r in rows])
    assert stages.shape == (40, 3)
    np.testing.assert_allclose(stages.sum(axis=1), losses, rtol=1e-5)  # equal weights 1: the loss is their sum
    for s in range(3):
        assert stages[-5:, s].mean() < 0.8 * stages[:5, s].mean(), (s, stages[:5, s], stages[-5:, s])
    assert (out / "best.safetensors").is_file()


def test_stage_weights_on_a_single_output_model_are_refused(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "training/configs/mmcanet.toml", [
        "loss.stage_weights=[1.0, 1.0]", f'run.out_dir="{tmp_path}"', 'run.device="cpu"',
        "model.overrides.width=8", "model.overrides.enc_blocks=[1, 1, 1]", "model.overrides.dec_blocks=[1, 1]",
    ])
    with pytest.raises(EngineError, match="returns one output"):
        train(cfg)
    mpir4 = load_config(ROOT / "training/configs/mmcanet_mpir4.toml")
    assert mpir4.model.name == "mmcanet-mpir4" and mpir4.loss.stage_weights == [1.0, 1.0]
