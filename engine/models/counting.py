"""Parameter and multiply-add counts, in our convention and in the one papers' tables use.

Why two conventions: the Align-CR paper (Tab. V) reports 43.53 M parameters and 174.94 "GFLOPs" for a 160×160
patch. Those numbers come from a thop-style counter, which only knows standard layers: it skips the main
weight/bias of custom deformable-conv modules (their offset-predicting ``conv_offset`` is a plain conv and is
counted), the attention matrix products (``q @ kᵀ``, ``attn @ v``) and every element-wise op; and its "FLOPs"
are multiply-accumulates. We count everything with :class:`torch.utils.flop_counter.FlopCounterMode` (which
reports 2 FLOPs per multiply-add) and subtract what such a counter misses, so both can be shown side by side.

Counting runs on the ``meta`` device by default: no memory, no arithmetic, a 45 M-parameter model at 160² is
counted in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.models.ops.deform_conv import ModulatedDeformConv2d
from engine.models.registry import build_model


@dataclass(frozen=True)
class ParamCount:
    total: int
    paper_convention: int  # without deformable convs' main weights and biases


@dataclass(frozen=True)
class MacCount:
    total: int  # every multiply-add FlopCounterMode sees
    paper_convention: int  # without deformable convs' main products and attention matmuls
    height: int
    width: int


def count_params(model: nn.Module) -> ParamCount:
    total = sum(p.numel() for p in model.parameters())
    dcn = sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, ModulatedDeformConv2d)
    )
    return ParamCount(total=total, paper_convention=total - dcn)


def _attention_modules(model: nn.Module) -> list[str]:
    """Modules whose own matmuls are attention products (not linear layers): Swin window attention."""
    return [name for name, m in model.named_modules() if type(m).__name__ == "WindowAttention"]


def count_macs(
    model: nn.Module,
    height: int = 160,
    width: int = 160,
    sar_size: tuple[int, int] | None = None,
    device: str | torch.device = "meta",
) -> MacCount:
    """Multiply-adds of one forward pass on a (1, bands, height, width) input (SAR on the same grid unless
    ``sar_size`` is given). ``model`` must live on ``device``."""
    cfg = getattr(model, "cfg", None)
    bands = getattr(cfg, "in_bands", 4)
    sar_bands = getattr(cfg, "sar_bands", 2)
    sh, sw = sar_size or (height, width)
    optical = torch.zeros(1, bands, height, width, device=device)
    sar = torch.zeros(1, sar_bands, sh, sw, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(optical, sar)
    per_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    root = type(model).__name__
    excluded = 0
    for name, m in model.named_modules():
        if isinstance(m, ModulatedDeformConv2d):
            own = sum(per_module.get(f"{root}.{name}", {}).values())
            offset_conv = getattr(m, "conv_offset", None)
            inner = sum(per_module.get(f"{root}.{name}.conv_offset", {}).values()) if offset_conv is not None else 0
            excluded += own - inner
    for name in _attention_modules(model):
        ops = per_module.get(f"{root}.{name}", {})
        # Linear layers run as addmm/mm on 2-D views; q·kᵀ and attn·v are batched (bmm) — only those go.
        excluded += sum(v for op, v in ops.items() if "bmm" in str(op).split("."))
    return MacCount(total=total // 2, paper_convention=(total - excluded) // 2, height=height, width=width)


def describe(name: str, height: int = 160, width: int = 160) -> dict[str, float]:
    """Counts for a registered model, in millions of parameters and G multiply-adds (built on ``meta``)."""
    with torch.device("meta"):
        model = build_model(name)
    p = count_params(model)
    out = {"params_M": p.total / 1e6, "params_paper_M": p.paper_convention / 1e6}
    macs = count_macs(model, height, width)
    out.update({"gmacs": macs.total / 1e9, "gmacs_paper": macs.paper_convention / 1e9})
    return out
