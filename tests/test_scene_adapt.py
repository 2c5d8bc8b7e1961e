"""Scene adaptation (refine.scene_adapt): the real cloud never enters the loss, the model given is left as it was,
and the adapted copy fits the scene's own clear pixels better than the model it started from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.models import build_model
from engine.refine.scene_adapt import AdaptConfig, adapt, training_batch


def _scene(size: int = 96) -> dict[str, np.ndarray]:
    """Fields of two colours, SAR that sees their border, the left third under a (real) cloud."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    field = ((xx // 24 + yy // 24) % 2).astype(np.float32)
    optical = np.stack([0.05 + 0.10 * field, 0.08 + 0.05 * field, 0.04 + 0.12 * field, 0.30 - 0.10 * field])
    optical = (optical + rng.normal(0, 0.003, optical.shape)).astype(np.float32)
    sar = np.stack([0.4 + 0.3 * field, 0.3 + 0.2 * field]).astype(np.float32)
    mask = np.zeros((1, size, size), np.float32)
    mask[:, :, : size // 3] = 1.0
    optical[:, mask[0] > 0] = 0.8  # the real cloud: its pixels must never be a target
    return {"optical": optical, "sar": sar, "mask": mask}


def test_the_real_cloud_never_enters_the_loss():
    scene = _scene()
    batch = training_batch([scene], AdaptConfig(batch=6, crop=80), np.random.default_rng(1))
    assert batch["optical"].shape == (6, 4, 80, 80) and batch["sar"].shape == (6, 2, 80, 80)
    real = batch["target"].numpy().min(axis=1) > 0.79  # the cloud's flat 0.8 in the (cropped, rotated) targets
    assert real.any() and (batch["w"].numpy()[:, 0][real] == 0).all()
    assert (batch["w"].numpy() >= 0).all() and batch["w"].max() > 1.0  # synthetic cloud weighted 1 + 5


# aligncr-lite at a tenth of its width: adaptation is the same code for any size (25 steps of the real width took
# 30-50 s of a CI core)
TINY = {"num_feat": 8, "num_blocks": 1, "rdb_layers": 2, "growth": 4, "fe_blocks": 1, "fe_expand": 2,
        "pyramid_channels": [8, 8], "deformable_groups": 2, "num_heads": 2, "window_size": 4, "up_feat": 8}


@pytest.mark.slow
def test_adapted_copy_fits_the_scene_and_the_original_is_untouched():
    torch.manual_seed(0)
    model = build_model("aligncr-lite", **TINY).eval()  # the copy and the fit, not the size, are tested
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scene = _scene()
    cfg = AdaptConfig(steps=25, lr=1e-3, crop=48)
    tuned = adapt(model, scene, cfg, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not tuned.training

    def loss(net: torch.nn.Module) -> float:
        batch = training_batch([scene], cfg, np.random.default_rng(123))
        with torch.no_grad():
            pred = net(batch["optical"], batch["sar"])
        return float((batch["w"] * (pred - batch["target"]).abs()).mean())

    assert loss(tuned) < 0.7 * loss(model)
