"""What a model takes besides ``(optical, sar)``, read from its contract attributes — shared by training and evaluation.

A *temporal* model (class attribute ``temporal_inputs``, e.g. ``("prev", "next")``: ``msop-unet``, ``gapfill``;
the registry's contract, read into roles by :func:`engine.models.roles.inputs_of` as for the engine) takes the batch
entries ``optical_<x>`` and — unless ``uses_sar = False`` — ``sar_<x>`` for each ``x`` as keyword tensors, and the
acquisition times ``t_prev, t, t_next`` when ``needs_dates``. The keys come from those attributes, never from the
model's name. A model whose config says ``dem=True`` (the Cresson U-Nets' optional DEM branch, the ``dem`` role that
makes the engine ask for ``--dem``) also takes the batch's ``dem`` (N, 1, H, W), which only layout splits of an
archive with a DEM provide. A model whose ``forward`` takes ``return_stages`` can return every stage's output (deep
supervision, :mod:`training.losses`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import EngineError
from engine.models.roles import inputs_of


def input_keys(model: nn.Module) -> list[str]:
    """Batch keys a model takes as keyword arguments besides (optical, sar), from its contract attributes (the extra
    dates and DEM as :func:`engine.models.roles.inputs_of` reads them for the engine)."""
    declared = inputs_of(model, type(model).__name__)
    keys = list(declared.temporal_keys)
    if declared.needs_dates:
        keys += ["t_prev", "t", "t_next"]
    if declared.uses_dem:
        keys.append("dem")
    if declared.prior:
        keys.append("prior")
    return keys


def check_inputs(model: nn.Module, model_name: str, sample_keys: set[str]) -> None:
    """Stop before any step when the data lacks inputs the model needs (one clear line, not a TypeError later)."""
    missing = [k for k in input_keys(model) if k not in sample_keys and k != "prior"]  # prior: computed here
    if "dem" in missing:
        raise EngineError(
            f"model '{model_name}' was built with a DEM input (dem=True) but the data has no DEM: put dem.tif "
            "(elevation in metres) in the archive and rebuild the splits with python -m training.build_dataset, "
            "or train without it (model.overrides.dem=false)"
        )
    if missing:
        raise EngineError(
            f"model '{model_name}' needs {', '.join(missing)}, which the data does not provide: use a "
            "'layout' dataset built with a multi-date layout (python -m training.build_dataset --layout msop)"
        )


def model_kwargs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword inputs of ``model`` taken from a (device) batch; a ``prior`` the batch lacks is computed from its
    cloudy ``optical`` and ``mask`` (:func:`prior_batch`)."""
    return {k: (prior_batch(batch) if k == "prior" and k not in batch else batch[k]) for k in input_keys(model)}


def prior_batch(batch: Mapping[str, Any]) -> torch.Tensor:
    """(N, bands + 1, H, W) :func:`engine.refine.prior.channels` of each item of a batch, from its cloudy optical
    image and its mask (1 = cloud or no data: not clear), each item's own clear medians as its scene's — the
    engine's inference does the same with the whole scene's."""
    from engine.refine import prior

    optical = batch["optical"].detach().float().cpu().numpy()
    clear = batch["mask"].detach().cpu().numpy()[:, 0] < 0.5
    sar = batch["sar"].detach().float().cpu().numpy() if "sar" in batch else [None] * len(optical)
    items = [prior.channels(o, c, None, s) for o, c, s in zip(optical, clear, sar)]
    return torch.from_numpy(np.stack(items)).to(batch["optical"].device)


def returns_stages(model: nn.Module) -> bool:
    """Whether ``model.forward`` can return every stage's output (``return_stages=True``)."""
    try:
        return "return_stages" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a collated batch on ``device`` (ids stay on the host)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
