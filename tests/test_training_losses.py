"""Training losses against hand-computed values; recipes; param groups by module type."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.errors import ModelError
from training.config import ConfigError, ScheduleSection, load_config
from training.losses import CARL, L1Loss, L1SSIMLoss, LossConfig, MaskedCharbonnier, build_loss, ssim_map
from training.param_groups import build_param_groups, resolve_types

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    # one band, 1×2 pixels: pred (0.5, 0.2), target (0.1, 0.2), cloudy input (0.9, 0.6), mask (1, 0)
    pred = torch.tensor([[[[0.5, 0.2]]]])
    batch = {"target": torch.tensor([[[[0.1, 0.2]]]]), "optical": torch.tensor([[[[0.9, 0.6]]]]),
             "mask": torch.tensor([[[[1.0, 0.0]]]])}
    return pred, batch


def test_masked_charbonnier_hand_value() -> None:
    pred, batch = _batch()
    # pixel 1: (1 + 5) · (0.4² + 1e-6)^0.45 ; pixel 2: 1 · (0 + 1e-6)^0.45 ; mean of the two
    expected = (6 * (0.16 + 1e-6) ** 0.45 + (1e-6) ** 0.45) / 2
    assert MaskedCharbonnier()(pred, batch).item() == pytest.approx(expected, rel=1e-5)
    # the mask broadcasts over bands: a 4-band batch with the same pixels gives the same mean
    pred4 = pred.expand(1, 4, 1, 2)
    batch4 = {k: (v.expand(1, 4, 1, 2) if k != "mask" else v) for k, v in batch.items()}
    assert MaskedCharbonnier()(pred4, batch4).item() == pytest.approx(expected, rel=1e-5)


def test_carl_hand_value() -> None:
    pred, batch = _batch()
    # adaptive: cloud pixel |P − T| = 0.4, clear pixel |P − I| = |0.2 − 0.6| = 0.4 → 0.4; λ·mean|P − T| = 0.2
    assert CARL(lam=1.0)(pred, batch).item() == pytest.approx(0.6, abs=1e-6)
    assert CARL(lam=0.5)(pred, batch).item() == pytest.approx(0.5, abs=1e-6)


def test_l1_and_l1_ssim() -> None:
    pred, batch = _batch()
    assert L1Loss()(pred, batch).item() == pytest.approx(0.2, abs=1e-6)
    x = torch.rand(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    same = {"target": x}
    assert L1SSIMLoss()(x, same).item() == pytest.approx(0.0, abs=1e-6)  # SSIM(x, x) = 1
    # constant images a, b: SSIM = (2ab + C1) / (a² + b² + C1) (the variance term is C2 / C2 = 1)
    a, b, c1 = 0.2, 0.6, 0.01**2
    ssim_const = (2 * a * b + c1) / (a * a + b * b + c1)
    pa = torch.full((1, 1, 12, 12), a, dtype=torch.float64)
    pb = torch.full((1, 1, 12, 12), b, dtype=torch.float64)
    assert ssim_map(pa, pb).mean().item() == pytest.approx(ssim_const, rel=1e-9)
    assert L1SSIMLoss()(pa, {"target": pb}).item() == pytest.approx(0.4 + 1 - ssim_const, rel=1e-6)
    xg = x.clone().requires_grad_(True)
    L1SSIMLoss()(xg, {"target": torch.rand_like(x)}).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_build_loss_kinds() -> None:
    assert isinstance(build_loss(LossConfig(kind="carl")), CARL)
    with pytest.raises(Exception, match="unknown loss"):
        build_loss(LossConfig(kind="mse"))


def test_recipes_load_and_say_what_they_are() -> None:
    paper = load_config(CONFIGS / "aligncr_paper.toml")
    official = load_config(CONFIGS / "aligncr_official.toml")
    assert paper.optim.lr == 1e-4 and paper.optim.alignment_lr == 1e-5 and paper.schedule.epochs == 30
    assert paper.data.crop == 160 and paper.loss.kind == "charbonnier" and paper.loss.alpha == 0.45
    assert [paper.schedule.factor(e) for e in (0, 9, 10, 14, 15, 20, 29)] == [1, 1, 0.5, 0.5, 0.25, 0.125, 0.0625]
    assert official.data.batch_size == 2 and official.run.seed == 7
    assert [official.schedule.factor(e) for e in (4, 5, 10)] == [1, 0.5, 0.25]  # StepLR(5, 0.5)
    assert "PAPER" in (CONFIGS / "aligncr_paper.toml").read_text()
    assert "OFFICIAL CODE" in (CONFIGS / "aligncr_official.toml").read_text()
    dsen = load_config(CONFIGS / "dsen2cr.toml")
    assert dsen.loss.kind == "carl" and dsen.model.name == "dsen2cr" and dsen.optim.optimizer == "nadam"
    over = load_config(CONFIGS / "aligncr_paper.toml", ["optim.lr=3e-4", "model.overrides.width=8", "run.device=cpu"])
    assert over.optim.lr == 3e-4 and over.model.overrides == {"width": 8} and over.run.device == "cpu"


def test_recipe_typos_are_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(bad)
    bad.write_text("[optimiser]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match="optimiser"):
        load_config(bad)
    assert ScheduleSection(start_epoch=0, step_size=1).factor(2) == pytest.approx(0.125)


class Aligner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Conv2d(4, 4, 3, padding=1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(6, 4, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 1), Aligner()) for _ in range(2)])


def test_alignment_parameters_get_their_own_lr_by_type() -> None:
    net = Net()
    types = resolve_types([f"{Aligner.__module__}:Aligner"])
    groups = build_param_groups(net, 1e-4, 1e-5, types)
    by_name = {g["name"]: g for g in groups}
    align_ids = {id(p) for b in net.blocks for p in b[1].parameters()}
    assert {id(p) for p in by_name["alignment"]["params"]} == align_ids and by_name["alignment"]["lr"] == 1e-5
    assert by_name["main"]["lr"] == 1e-4
    assert len(by_name["main"]["params"]) + len(align_ids) == len(list(net.parameters()))
    opt = torch.optim.Adam(groups)
    assert sorted(g["lr"] for g in opt.param_groups) == [1e-5, 1e-4]
    assert len(build_param_groups(net, 1e-4, 1e-5, ())) == 1
    with pytest.raises(ModelError, match="no module of type"):
        build_param_groups(nn.Conv2d(1, 1, 1), 1e-4, 1e-5, types)
    with pytest.raises(ModelError, match="cannot be imported"):
        resolve_types(["engine.models:NoSuchClass"])
    assert math.isclose(groups[0]["lr"], 1e-4)


def test_aligncr_alignment_blocks_get_1e5() -> None:
    """The recipes' type string finds exactly the network's own alignment parameters."""
    from engine.models import build_model

    tiny = {"num_feat": 8, "num_blocks": 2, "rdb_layers": 2, "growth": 4, "fe_blocks": 1, "fe_expand": 2,
            "pyramid_channels": (8, 8), "deformable_groups": 2, "num_heads": 2, "window_size": 4, "up_feat": 8}
    net = build_model("aligncr-lite", **tiny)
    recipe = load_config(CONFIGS / "aligncr_paper.toml")
    groups = build_param_groups(net, recipe.optim.lr, recipe.optim.alignment_lr,
                                resolve_types(recipe.optim.alignment_modules))
    align = next(g for g in groups if g["name"] == "alignment")
    assert align["lr"] == 1e-5 and next(g for g in groups if g["name"] == "main")["lr"] == 1e-4
    assert {id(p) for p in align["params"]} == {id(p) for p in net.alignment_parameters()}
