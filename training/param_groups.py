"""Optimizer parameter groups and deformable-offset monitoring, both found by module TYPE.

Align-CR trains its alignment blocks with a 10× smaller learning rate (1e-5 vs 1e-4): deformable offsets are
unstable early in training (EDVR, BasicSR's ``dcn_lr_mul``). Which modules are "alignment" is named in the recipe
as classes (``"engine.models.aligncr_arch:PCDAlignment"``) and matched with ``isinstance`` over
``model.modules()`` — never by guessing from parameter names, which silently break when a module is renamed.
A listed class that matches nothing in the model is an error: the recipe and the network disagree.

Offsets: every :class:`engine.models.ops.deform_conv.ModulatedDeformConv2d` records its last mean |offset| when
``track_offsets`` is on. EDVR/BasicSR warn when it exceeds 50 px: the alignment is diverging.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from engine.errors import ModelError


def resolve_types(names: list[str]) -> tuple[type, ...]:
    """``["pkg.module:Class", ...]`` → the classes (imported)."""
    types = []
    for name in names:
        module_name, _, cls_name = name.partition(":")
        if not cls_name:
            raise ModelError(f"alignment module '{name}' must be written 'package.module:Class'")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):
            raise ModelError(f"alignment module class '{name}' cannot be imported") from None
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ModelError(f"'{name}' is not an nn.Module class")
        types.append(cls)
    return tuple(types)


def alignment_parameter_ids(model: nn.Module, types: tuple[type, ...]) -> set[int]:
    """ids of the parameters inside any module of one of ``types`` (outermost matches; each parameter once)."""
    ids: set[int] = set()
    if not types:
        return ids
    found = {t: False for t in types}
    for module in model.modules():
        for t in types:
            if isinstance(module, t):
                found[t] = True
                ids.update(id(p) for p in module.parameters())
    missing = [t.__name__ for t, ok in found.items() if not ok]
    if missing:
        raise ModelError(f"the model has no module of type {missing} (recipe's optim.alignment_modules)")
    return ids


def build_param_groups(
    model: nn.Module, lr: float, alignment_lr: float, alignment_types: tuple[type, ...] = ()
) -> list[dict[str, Any]]:
    """[{"name": "main", params, lr}, {"name": "alignment", params, lr}] (the second only when non-empty)."""
    align_ids = alignment_parameter_ids(model, alignment_types)
    trainable = [p for p in model.parameters() if p.requires_grad]
    main = [p for p in trainable if id(p) not in align_ids]
    align = [p for p in trainable if id(p) in align_ids]
    if not trainable:
        raise ModelError("the model has no trainable parameters")
    groups: list[dict[str, Any]] = [{"name": "main", "params": main, "lr": lr}]
    if align:
        groups.append({"name": "alignment", "params": align, "lr": alignment_lr})
    return groups


def zero_init_output(model: nn.Module, out_channels: int) -> nn.Module:
    """Zero the weights and bias of the LAST ``nn.Conv2d`` producing ``out_channels`` (the output layer).

    For networks that add their output to the cloudy input (Align-CR, DSen2-CR) this makes the untrained model
    the identity; gradients still reach that layer (its input features are not zero), so it learns from step 1.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == out_channels]
    if not convs:
        raise ModelError(f"zero_init_output: the model has no Conv2d with {out_channels} output channels")
    nn.init.zeros_(convs[-1].weight)
    if convs[-1].bias is not None:
        nn.init.zeros_(convs[-1].bias)
    return convs[-1]


def deformable_convs(model: nn.Module) -> dict[str, nn.Module]:
    """Named deformable convolutions of a model (anything exposing ``last_offset_abs_mean``)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "last_offset_abs_mean")}


def enable_offset_tracking(model: nn.Module) -> int:
    """Turn on offset recording in every deformable conv; returns how many there are."""
    convs = deformable_convs(model)
    for m in convs.values():
        m.track_offsets = True
    return len(convs)


def offset_magnitudes(model: nn.Module) -> dict[str, float]:
    """{module name: last mean |offset| in pixels} for deformable convs that have run a forward pass."""
    out = {}
    for name, m in deformable_convs(model).items():
        value = m.last_offset_abs_mean
        if value is not None:
            out[name] = float(value)
    return out


def icnr_init(model: nn.Module) -> int:
    """ICNR initialisation (Aitken et al. 2017) of every conv that feeds an ``nn.PixelShuffle``; returns how many.

    A sub-pixel convolution initialised at random gives each of the r² output phases its own filter, so the
    untrained upsampler already draws an r-periodic checkerboard that training must then unlearn — the 2-pixel
    row/column stripes of the first bundled model. ICNR gives the r² phases of each output channel the same
    kernel: at initialisation the conv + shuffle is a nearest-neighbour upsampling of one ordinary conv.
    """
    count = 0
    for seq in model.modules():
        children = list(seq.children())
        for prev, nxt in zip(children, children[1:]):
            if isinstance(prev, nn.Conv2d) and isinstance(nxt, nn.PixelShuffle):
                r2 = nxt.upscale_factor**2
                w = prev.weight
                base = torch.empty(w.shape[0] // r2, *w.shape[1:], dtype=w.dtype, device=w.device)
                nn.init.kaiming_uniform_(base, a=5**0.5)  # nn.Conv2d's own default, for the shared kernel
                with torch.no_grad():
                    w.copy_(base.repeat_interleave(r2, dim=0))
                    if prev.bias is not None:
                        prev.bias.copy_(prev.bias.view(-1, r2)[:, :1].expand(-1, r2).reshape(-1))
                count += 1
    return count
