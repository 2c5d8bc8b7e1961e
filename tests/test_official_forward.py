"""Our ``aligncr`` equals the official Align-CR forward, through ``import_official``, on a random checkpoint.

The official side is :mod:`tests.official_aligncr_reference`, a transcription of zhu-xlab/M3R-CR's
``RDN_residual_CR`` (+ BasicSR PCD, torchvision's deformable conv) driven by an official-style state dict; our side
is what a user gets: the checkpoint written as the official training writes it (``{'network': {'module.' + k: v},
'epoch': …}``), converted by :func:`engine.models.weights.import_official`, loaded by :func:`engine.models.load`.

Every parameter is randomised (LayerNorm and weight-norm gains too, so a swapped stream or a mis-mapped key shows)
and the offset predictors get non-zero weights and biases, so each deformable conv samples about a pixel off the
grid, edges included. SAR is given on the optical grid, as the official loader gives it (ours then does not
resample it). The CI case is a 2-block network on 48×48 crops (``RDN_residual_CR(input_size=48)``: one plain and
one shifted Swin block over 3×3 windows, so edge and inner windows; pyramid 24/12/6), batch 2 so a window/batch
mix-up shows; the ``aligncr-lite`` and paper networks at the official 160×160 crop are the slow cases.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.models import aligncr_arch, build_model, import_official, load
from tests.official_aligncr_reference import OfficialParams, official_buffers, official_forward


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Perturb every floating parameter; give the offset predictors weights that move samples ≈ 1 px."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if ".conv_offset." in name:
                t.copy_(noise * (0.02 if name.endswith("weight") else 1.0))
            elif t.numel() > 1 and float(t.std()) > 0:
                t.add_(noise * 0.2 * t.std())
            else:  # constant inits: LayerNorm weight 1 / bias 0
                t.add_(noise * 0.1)


def _official_state(model: torch.nn.Module, size: int) -> dict[str, torch.Tensor]:
    """Our parameters under the official names, plus the buffers the official modules save (built the official
    way for a size×size input: ``RDN_residual_CR(input_size=size)``)."""
    out = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"\.parametrizations\.weight\.original0$", ".weight_g", k)
        k = re.sub(r"\.parametrizations\.weight\.original1$", ".weight_v", k)
        out[k] = v.detach().clone()
    cfg = model.cfg
    out.update(official_buffers(cfg.num_blocks, cfg.window_size, (size // 2, size // 2)))
    return out


def _exact_resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str, overrides: dict, size: int, batch: int,
           seed: int) -> dict[str, float]:
    """Run both forwards; assert the tolerances; return the measured differences (printed with -s)."""
    torch.manual_seed(seed)
    src_model = build_model(arch, **overrides)
    _randomise(src_model, seed)
    state = _official_state(src_model, size)
    pth = tmp_path / "30_net_CR.pth"
    torch.save({"network": {"module." + k: v for k, v in state.items()}, "epoch": 1}, pth)
    out = import_official(pth, tmp_path / "imported.safetensors", arch=arch, card={"config": overrides})
    ours, _ = load(out)

    g = torch.Generator().manual_seed(seed + 1)
    optical = torch.rand(batch, 4, size, size, generator=g, dtype=torch.float64)
    sar = torch.rand(batch, 2, size, size, generator=g, dtype=torch.float64)  # on the optical grid, as loaded
    params = OfficialParams({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    record: list = []
    t0 = time.perf_counter()
    with torch.no_grad():
        ref = official_forward(params, optical.clone(), sar.clone(), record=record)
        ref_old = official_forward(OfficialParams(params.state), optical.clone(), sar.clone(),
                                   skip_relu_in_place=False)
    t_ref = (time.perf_counter() - t0) / 2
    # Every tensor of the checkpoint drives the official forward (none mapped to nowhere, none missing).
    assert params.unused() == set()
    # The deformable convs really sample off the grid (not a plain conv in disguise).
    assert len(record) == 4 * src_model.cfg.num_blocks
    assert min(m for _, m in record) > 0.3, record
    assert (ref - optical).std() > 0.05, "the network's residual is too small for the comparison to mean much"

    with torch.no_grad():
        out32 = ours(optical.float(), sar.float())  # the production path, as shipped
    ours.double()
    with torch.no_grad():
        out64_shipped = ours(optical, sar)
    # Our resize_bilinear computes on the CPU in fp32 whatever the input dtype (a bf16 speed path, documented), which
    # alone leaves ≈ 1e-10 in fp64; with it kept in fp64, the two forwards must agree to rounding.
    monkeypatch.setattr(aligncr_arch, "resize_bilinear", _exact_resize)
    t0 = time.perf_counter()
    with torch.no_grad():
        out64 = ours(optical, sar)  # inference paths (in-place dense block, in-place mask product)
    t_ours = time.perf_counter() - t0
    out64_grad = ours(optical, sar).detach()  # the training paths

    diffs = {
        "fp64": float((out64 - ref).abs().max()),
        "fp64_grad": float((out64_grad - ref).abs().max()),
        "fp64_shipped": float((out64_shipped - ref).abs().max()),
        "fp32": float((out32.double() - ref).abs().max()),
        "old_skip": float((out64 - ref_old).abs().max()),
        "output_abs_max": float(ref.abs().max()),
        "min_mean_abs_offset": min(m for _, m in record),
        "t_ref_s": t_ref,
        "t_ours_s": t_ours,
    }
    print(arch, overrides, size, diffs)
    assert diffs["fp64"] <= 1e-10 and diffs["fp64_grad"] <= 1e-10, diffs
    assert diffs["fp64_shipped"] <= 1e-8, diffs
    assert diffs["fp32"] <= 1e-5, diffs
    # The comparison can fail: the skip without the official in-place ReLU (our forward before 04f7826) is far off.
    assert diffs["old_skip"] > 1e-2, diffs
    return diffs


def test_small_network_matches_the_official_forward(tmp_path, monkeypatch):
    """Two blocks (one plain, one shifted Swin), one wide-activation block per stream, 48×48 crops."""
    _check(tmp_path, monkeypatch, "aligncr-lite", {"num_blocks": 2, "fe_blocks": 1}, size=48, batch=2, seed=5)


# Minutes on a 2-core CI box (1.5 and 8 min): run on demand with ALIGNCR_SLOW_TESTS=1 (measured figures in the
# aligncr_arch docstring); the small case above covers every module and key in CI.
_ON_DEMAND = pytest.mark.skipif(not os.environ.get("ALIGNCR_SLOW_TESTS"), reason="set ALIGNCR_SLOW_TESTS=1 to run")


@pytest.mark.slow
@_ON_DEMAND
def test_lite_network_at_the_official_crop_matches_the_official_forward(tmp_path, monkeypatch):
    _check(tmp_path, monkeypatch, "aligncr-lite", {}, size=160, batch=1, seed=6)


@pytest.mark.slow
@_ON_DEMAND
def test_paper_network_matches_the_official_forward(tmp_path, monkeypatch):
    _check(tmp_path, monkeypatch, "aligncr", {}, size=160, batch=1, seed=7)
