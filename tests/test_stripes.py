"""No 2-pixel stripes: the measure finds a pixel-locked pattern, ICNR removes its cause, the bundled model has none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.models import build_model
from engine.refine.stripes import STRIPE_LIMIT, even_odd_difference
from training.choose import ramp
from training.param_groups import icnr_init

BUNDLED = Path(__file__).resolve().parents[1] / "resources" / "weights" / "aligncr-lite.safetensors"


def test_measure_zero_on_ramps_and_finds_a_pixel_locked_pattern():
    optical, _ = ramp()
    assert max(even_odd_difference(optical[0].numpy())) < 1e-6
    striped = optical[0].numpy().copy()
    striped[:, 1::2, :] += 0.001  # odd rows 10 DN brighter
    rows, cols = even_odd_difference(striped)
    assert rows == pytest.approx(0.001, rel=1e-3) and cols < 1e-6
    rng = np.random.default_rng(0)
    texture = rng.normal(0.2, 0.02, size=(4, 512, 512))  # texture without a preferred phase averages out
    assert max(even_odd_difference(texture)) < 0.5 * STRIPE_LIMIT


def test_icnr_gives_the_four_shuffle_phases_one_filter():
    torch.manual_seed(0)
    model = build_model("aligncr-lite")
    assert icnr_init(model) == 1
    w = model.UPNet[0].weight.detach()
    phases = w.view(-1, 4, *w.shape[1:])
    assert torch.equal(phases, phases[:, :1].expand_as(phases))
    # the upsampler alone (conv + shuffle) maps a uniform feature map to a uniform image, where the default
    # initialisation drew a checkerboard
    up = torch.nn.Sequential(model.UPNet[0], model.UPNet[1])
    feat = torch.full((1, 32, 32, 32), 0.5)
    with torch.no_grad():
        assert max(even_odd_difference(up(feat)[0].numpy()[:, 2:-2, 2:-2])) < 1e-6
        torch.manual_seed(0)
        default = build_model("aligncr-lite")
        up0 = torch.nn.Sequential(default.UPNet[0], default.UPNet[1])
        assert max(even_odd_difference(up0(feat)[0].numpy()[:, 2:-2, 2:-2])) > 10 * STRIPE_LIMIT


def test_default_init_draws_stripes_that_icnr_removes():
    """The root cause, shown: the same random model with and without ICNR on a smooth input."""
    optical, sar = ramp()
    torch.manual_seed(3)
    model = build_model("aligncr-lite").eval()
    with torch.no_grad():
        before = max(even_odd_difference((model(optical, sar) - optical)[0].numpy()))
        icnr_init(model)
        after = max(even_odd_difference((model(optical, sar) - optical)[0].numpy()))
    assert before > STRIPE_LIMIT
    assert after < 0.1 * before


@pytest.fixture(scope="module")
def bundled():
    from engine.models import weights

    if not BUNDLED.is_file():
        pytest.skip("no bundled weights")
    model, _ = weights.load(BUNDLED, torch.device("cpu"))
    return model.eval()


def test_bundled_model_draws_no_stripes_on_a_smooth_input(bundled):
    optical, sar = ramp()
    with torch.no_grad():
        out = bundled(optical, sar)[0].numpy()
    assert max(even_odd_difference(out)) < STRIPE_LIMIT


@pytest.mark.shared
def test_bundled_model_draws_no_stripes_on_real_samples(bundled, shared_data):
    from training.datasets import SEN12MSCR

    reader = SEN12MSCR(shared_data / "sen12mscr_triplets", include=["4438", "746", "6317"])
    for i in range(len(reader)):
        s = reader.read(i)
        with torch.no_grad():
            out = bundled(torch.from_numpy(s["optical"])[None], torch.from_numpy(s["sar"])[None])[0].numpy()
        own = max(even_odd_difference(s["target"]))  # what the landscape itself measures
        assert max(even_odd_difference(out)) < own + STRIPE_LIMIT, s["id"]


def test_stripe_penalty_charges_the_pattern_not_the_detail():
    from training.losses import LossConfig, build_loss, line_pattern

    torch.manual_seed(0)
    target = torch.rand(2, 4, 48, 48)
    batch = {"target": target, "mask": torch.zeros(2, 1, 48, 48), "optical": target}
    plain, penalised = build_loss(LossConfig()), build_loss(LossConfig(stripe_weight=50.0))
    assert penalised(target, batch).item() == pytest.approx(plain(target, batch).item())
    striped = target.clone()
    striped[..., 1::2] += 0.002  # columns: what the first retrained model drew
    extra = penalised(striped, batch).item() - plain(striped, batch).item()
    assert extra == pytest.approx(50.0 * 0.002, rel=0.02)
    shift = line_pattern(striped, -1).mean().item() - line_pattern(target, -1).mean().item()
    assert shift == pytest.approx(0.002, rel=1e-4)
    # the penalty's gradient pushes the pattern back towards the target's
    p = striped.clone().requires_grad_(True)
    penalised(p, batch).backward()
    assert (p.grad[..., 1::2].mean() > p.grad[..., 0::2].mean()).item()


def test_choose_takes_the_best_margin_without_stripes(tmp_path):
    from engine.models import weights
    from training.choose import choose
    from training.param_groups import zero_init_output

    torch.manual_seed(3)
    striped = build_model("aligncr-lite")  # default init: a 2-px pattern on any input
    clean = build_model("aligncr-lite")
    icnr_init(clean)
    zero_init_output(clean, 4)  # the identity: no pattern of its own
    card = {"arch": "aligncr-lite"}
    weights.save(striped, tmp_path / "val_step200.safetensors", card)
    weights.save(clean, tmp_path / "val_step100.safetensors", card)
    weights.save(clean, tmp_path / "val_step50.safetensors", card)
    (tmp_path / "val_log.csv").write_text("step,psnr,margin_in\n50,20,3.0\n100,20,0.5\n200,21,1.0\n")
    path, margin, excess = choose(tmp_path, 100, [])  # step 50 is before --from-step
    assert path.name == "val_step100.safetensors" and margin == 0.5 and excess < STRIPE_LIMIT


def test_loss_pattern_and_engine_measure_agree():
    """The torch pattern the loss penalises is the numpy one engine.refine.stripes measures (|mean|, worst band)."""
    from training.losses import line_pattern

    torch.manual_seed(1)
    x = torch.rand(1, 4, 50, 61)
    x[:, :, 1::2, :] += torch.tensor([0.001, 0.002, 0.0, 0.003]).view(1, 4, 1, 1)
    rows, cols = even_odd_difference(x[0].numpy())
    assert line_pattern(x, -2).abs().max().item() == pytest.approx(rows, rel=1e-4)
    assert line_pattern(x, -1).abs().max().item() == pytest.approx(cols, rel=1e-4)
