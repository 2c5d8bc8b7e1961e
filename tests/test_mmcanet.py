"""MMCANet (Zhou et al. 2025) and its MPIR variants: contract, shapes, block maths, parameter structure, overfit."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from helpers_rasters import write_tiny_sen12

from engine.models import build_model, get_spec, list_models
from engine.models.mmcanet_arch import CrossModalAttention, KernelBasisAttention, MFFBlock

NAMES = ("mmcanet", "mmcanet-l", "mmcanet-mpir2", "mmcanet-mpir4")
TINY = {"width": 8, "enc_blocks": (1, 1, 1), "dec_blocks": (1, 1), "kba_bases": 4}
TINY_MPIR = TINY | {"orb_count": 1, "cabs_per_orb": 1}



pytestmark = pytest.mark.usefixtures("one_thread")

def tiny(name: str) -> torch.nn.Module:
    return build_model(name, **(TINY_MPIR if "mpir" in name else TINY))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_all_registered() -> None:
    assert set(NAMES) <= {s.name for s in list_models()}
    assert get_spec("mmcanet-l").config.dw_kernel == 5 and get_spec("mmcanet").config.dw_kernel == 3
    assert get_spec("mmcanet-mpir2").config.stages == ("mmcanet", "mmcanet", "orsnet")
    assert get_spec("mmcanet-mpir4").config.stages == ("mmcanet", "mmcanet")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("h", "w", "sh", "sw"), [(37, 45, 11, 14), (21, 21, 21, 21)])
def test_shapes_odd_sizes(name: str, h: int, w: int, sh: int, sw: int) -> None:
    torch.manual_seed(0)
    model = tiny(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 4, h, w), torch.rand(2, 2, sh, sw))
    assert out.shape == (2, 4, h, w)
    assert torch.isfinite(out).all()


def test_mpir_stage_outputs_progress_in_resolution() -> None:
    model = tiny("mmcanet-mpir2").eval()
    with torch.no_grad():
        outs = model.forward_stages(torch.rand(1, 4, 37, 45), torch.rand(1, 2, 11, 14))
    assert [tuple(o.shape[-2:]) for o in outs] == [(10, 12), (19, 23), (37, 45)]


def test_default_parameter_counts_and_l_variant_delta() -> None:
    """The paper gives no counts; pin ours, and check -l differs exactly by the 5×5 vs 3×3 depth-wise kernels."""
    with torch.device("meta"):
        base, large = build_model("mmcanet"), build_model("mmcanet-l")
        mpir2, mpir4 = build_model("mmcanet-mpir2"), build_model("mmcanet-mpir4")
    cfg = get_spec("mmcanet").config
    enc_channels = sum(n * cfg.width * 2**i for i, n in enumerate(cfg.enc_blocks))
    top = len(cfg.enc_blocks) - 1
    dec_channels = sum(n * cfg.width * 2 ** (top - 1 - i) for i, n in enumerate(cfg.dec_blocks))
    dw_channels = 2 * enc_channels + dec_channels  # two streams + the decoder
    assert n_params(large) - n_params(base) == (25 - 9) * dw_channels
    assert n_params(base) == 20_266_728
    # MPIR4 = two MMCANet stages; MPIR2 adds a (small) ORSNet third stage
    assert 1.9 * n_params(base) < n_params(mpir4) < 2.1 * n_params(base)
    assert n_params(mpir2) > n_params(mpir4)


def test_kba_equals_per_pixel_mixed_kernel() -> None:
    """KBA via grouped convs == applying at each pixel the kernel Σ_n att_n·W_n (the definition), done naively."""
    torch.manual_seed(0)
    c, k, nset, gc = 8, 3, 5, 4
    kba = KernelBasisAttention(c, k, nset, gc)
    x, att = torch.randn(2, c, 6, 7), torch.randn(2, nset, 6, 7)
    fast = kba(x, att)
    g = c // gc
    w = kba.weight.view(g, nset, gc, gc, k, k)  # (group, basis, out-in-group, in-group, k, k)
    patches = F.unfold(x, k, padding=k // 2).view(2, g, gc * k * k, 6 * 7)  # per group: in-group × k × k
    ref = torch.zeros(2, c, 6 * 7)
    att_px = att.flatten(2).transpose(1, 2)  # (N, HW, nset)
    for gi in range(g):
        per_pixel = torch.einsum("npb,boi->npoi", att_px, w[gi].reshape(nset, gc, -1))  # (N, HW, out, in·k·k)
        ref[:, gi * gc : (gi + 1) * gc] = torch.einsum("npoi,nip->nop", per_pixel, patches[:, gi])
    ref = ref + torch.einsum("npb,bc->ncp", att_px, kba.bias)
    torch.testing.assert_close(fast, ref.view(2, c, 6, 7), rtol=1e-4, atol=1e-5)


def test_cross_attention_fused_map_is_softmax_of_summed_scores() -> None:
    """P_opt ⊙ P_sar renormalised == softmax(S_opt + S_sar): the fused map is a proper attention map."""
    torch.manual_seed(0)
    att = CrossModalAttention(8, heads=2)
    fo, fs = torch.randn(1, 8, 5, 6), torch.randn(1, 8, 5, 6)
    q_o, k_o, v_o = att._split(att.qkv_opt(fo))
    q_s, k_s, v_s = att._split(att.qkv_sar(fs))
    s_o = q_o @ k_o.transpose(-2, -1) * att.temp_opt
    s_s = q_s @ k_s.transpose(-2, -1) * att.temp_sar
    p = torch.softmax(s_o + s_s, dim=-1)
    expected = att.proj(((p @ v_o) * (p @ v_s)).reshape(1, 8, 5, 6))
    torch.testing.assert_close(att(fo, fs), expected, rtol=1e-5, atol=1e-6)
    # and SAR changes the result (the fusion is not a no-op)
    assert not torch.allclose(att(fo, fs), att(fo, torch.zeros_like(fs)))


def test_mff_block_starts_near_identity() -> None:
    torch.manual_seed(0)
    block = MFFBlock(16, dw_kernel=3, kba_kernel=3, nset=4, group_channels=4, ffn=2)
    x = torch.randn(1, 16, 8, 8)
    assert (block(x) - x).abs().mean() < 0.1 * x.abs().mean()


def test_sar_matters() -> None:
    torch.manual_seed(0)
    model = tiny("mmcanet").eval()
    opt = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(opt, torch.zeros(1, 2, 16, 16)), model(opt, torch.ones(1, 2, 16, 16)))


@pytest.mark.parametrize("name", ["mmcanet-mpir2", "mmcanet-mpir4"])  # mmcanet: through training.train below
def test_short_overfit_lowers_l1(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name)
    opt, sar, target = torch.rand(2, 4, 16, 16), torch.rand(2, 2, 16, 16), torch.rand(2, 4, 16, 16)
    optim = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):  # hand-rolled loop on plain L1: independent of training/train.py
        optim.zero_grad()
        loss = (model(opt, sar) - target).abs().mean()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def train_tiny(name: str, overrides: dict, loss: dict, root: Path, out: Path) -> list[float]:
    """30 steps of the training package's own loop (training.train) on 2 samples; returns the logged losses."""
    from training.config import ModelSection, config_from_dict
    from training.train import train

    raw = {
        "model": {"name": name},
        "data": {"train": [{"kind": "sen12mscr", "root": str(root), "include": ["0", "1"]}],
                 "val": [{"kind": "sen12mscr", "root": str(root), "include": ["2"]}],
                 "crop": 0, "batch_size": 2, "flips": False, "rot90": False, "synthetic_clouds": 0.0},
        "optim": {"lr": 3e-3, "alignment_modules": []},
        "schedule": {"epochs": 30, "start_epoch": 100},
        "loss": loss,
        "run": {"seed": 0, "out_dir": str(out), "device": "cpu", "threads": 1, "log_every": 1, "val_every": 0,
                "ckpt_every_steps": 0, "ckpt_every_minutes": 0, "progress": False},
        "card": {"training_data": "synthetic test triplets"},
    }
    cfg = config_from_dict(raw)
    cfg = type(cfg)(**{**cfg.__dict__, "model": ModelSection(name, overrides)})
    assert train(cfg)["steps"] == 30
    with open(out / "train_log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize(
    ("name", "overrides", "loss"),
    [
        ("mmcanet", TINY, {"kind": "l1_ssim"}),  # MMCANet's L_sum = L1 + (1 - SSIM)
        ("ssop-unet", {"widths": (8, 8, 12)}, {"kind": "l1"}),  # Cresson 2022 trains the U-Nets on plain L1
    ],
)
def test_trains_with_training_package_and_paper_loss(name: str, overrides: dict, loss: dict, tmp_path: Path) -> None:
    """The seed models through training.train with their papers' losses: 30 steps on 2 samples lower it clearly.

    (ssop-unet sits here too so the synthetic triplet writer lives in one place.)
    """
    root = write_tiny_sen12(tmp_path / "data")
    losses = train_tiny(name, overrides, loss, root, tmp_path / "run")
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert (tmp_path / "run" / "last.safetensors").is_file()


@pytest.mark.parametrize("name", ["mmcanet", "mmcanet-mpir2"])
def test_weights_round_trip_and_engine_run(name: str, tmp_path: Path) -> None:
    """Tiny weights saved with engine.models.weights reload identically and drive the pipeline on a raster."""
    from helpers_rasters import write_optical, write_sar

    from engine.config import RunConfig
    from engine.models import weights as weights_io
    from engine.stream.accel import AccelConfig
    from engine.stream.pipeline import run

    torch.manual_seed(0)
    model = tiny(name).eval()
    path = weights_io.save(model, tmp_path / f"{name}.safetensors", {"training_data": "none (test)"})
    loaded, card = weights_io.load(path)
    assert card.arch == name and tuple(card.config["enc_blocks"]) == TINY["enc_blocks"]
    opt, sar = torch.rand(1, 4, 20, 28), torch.rand(1, 2, 6, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(opt, sar), model(opt, sar))
    optical = write_optical(tmp_path / "opt.tif", height=50, width=70)
    s1 = write_sar(tmp_path / "s1.tif", like=optical)
    out = tmp_path / "out.tif"
    run(RunConfig(optical=optical, sar=s1, out=out, weights=path, tile=32, overlap=8, device="cpu"),
        accel=AccelConfig(threads=1))
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (70, 50, 4)
        assert np.isfinite(ds.read().astype(np.float64)).all()
