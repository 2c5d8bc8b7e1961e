"""Real cloud layers (training.datasets.cloud_bank): cut from a cloudy image with its mask (and shadow, where a clear
image of the place exists), pasted onto a clear one with an exact target; the report split's layers come from its
own scenes only and land on grounds of other sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.datasets import cloud_bank

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _donor() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright cloud block and, beside it, a shadow: pixels at 40 % of the clear image."""
    clear = np.full((4, 64, 64), 0.2, np.float32)
    cloudy = clear.copy()
    cloud = np.zeros((64, 64), bool)
    cloud[10:30, 10:30] = True
    cloudy[:, cloud] = 0.7
    cloudy[:, 35:45, 12:28] *= 0.4
    return cloudy, cloud, clear


def test_a_layer_has_a_soft_edge_the_clouds_own_radiance_and_its_shadow_as_a_darkening():
    cloudy, cloud, clear = _donor()
    layer = cloud_bank.layer_from("d", "s", cloudy, cloud, clear, "sen12mscr")
    assert layer.alpha[20, 20] == pytest.approx(1.0, abs=1e-3) and layer.alpha[50, 50] == 0
    assert 0 < layer.alpha[20, 30] < 1  # the edge, softened
    assert np.allclose(layer.radiance[:, 20, 20], 0.7)
    assert layer.shadow[40, 20] > 0.9 and np.allclose(layer.darkening[:, 40, 20], 0.4, atol=0.02)
    assert layer.shadow[55, 55] == 0 and np.allclose(layer.darkening[:, 55, 55], 1.0)


def test_pasting_keeps_the_ground_where_there_is_no_cloud_and_marks_cloud_and_shadow():
    cloudy, cloud, clear = _donor()
    layer = cloud_bank.layer_from("d", "s", cloudy, cloud, clear, "sen12mscr")
    rng = np.random.default_rng(0)
    ground = rng.uniform(0.05, 0.4, (4, 64, 64)).astype(np.float32)
    sample = cloud_bank.paste({"optical": ground, "mask": np.zeros((1, 64, 64), np.float32)}, layer, rng)
    mask = sample["mask"][0] > 0.5
    untouched = (sample["optical"] == ground).all(0)
    assert 0.05 < mask.mean() < 0.95 and untouched.mean() > 0.6
    assert not (untouched & mask).any()  # every pixel the cloud or its shadow changed counts as inside the cloud
    assert np.all((sample["optical"] >= 0) & (sample["optical"] <= 1))


@pytest.mark.shared
def test_the_report_split_has_its_own_scenes_and_pastes_each_layer_on_another_source():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    from training.evaluate import report_views

    report = {layer.scene for layer in cloud_bank.bank("report")}
    elsewhere = {d.scene for d in cloud_bank.DONORS if d.split != "report"}
    assert report and not report & elsewhere
    recipe = Path(__file__).resolve().parents[1] / "training" / "configs" / "aligncr_lite_report.toml"
    view = report_views(recipe)["realclouds"]
    ids = [view[i]["id"] for i in range(len(view))]
    assert len(ids) >= 12 and ids == [view[i]["id"] for i in range(len(view))]  # seeded: the same split every time
    donors = {d.id: d.source for d in cloud_bank.DONORS}
    for sid in ids:
        ground, layer = sid.split("+")
        assert not (ground.startswith("0000200") and donors[layer] == "ssl4eo")
