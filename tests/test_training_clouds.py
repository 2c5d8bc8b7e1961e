"""Synthetic clouds with exact targets, the new real-data readers, the scene-disjoint splits and the scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from engine.refine.synthetic_clouds import add_clouds, fractal_shape, opacity
from training import scoring
from training.datasets import AugmentConfig, TrainView, build_reader

ROOT = Path(__file__).resolve().parents[1]


def _clear_sample(h: int = 64, w: int = 64) -> dict:
    rng = np.random.default_rng(0)
    img = (0.05 + 0.1 * rng.random((4, h, w))).astype(np.float32)
    return {"optical": img, "target": img, "sar": np.full((2, h, w), 0.5, np.float32),
            "mask": np.zeros((1, h, w), np.float32), "landcover": np.zeros((h, w), np.int64), "id": "x"}


def test_clouds_leave_the_target_exact_and_mark_what_they_change():
    s = _clear_sample()
    for seed in range(20):
        out = add_clouds(s, np.random.default_rng(seed))
        assert out["target"] is s["target"]  # exact target: the clear image itself
        changed = np.abs(out["optical"] - s["target"]).max(axis=0) > 0.08
        masked = out["mask"][0] > 0.5
        # what the cloud or its shadow clearly changed (> 800 DN) is inside the mask the loss weights; only the
        # faint fringe under 10 % opacity falls outside it
        assert (changed & ~masked).sum() <= 0.01 * max(changed.sum(), 1)
        assert out["optical"].min() >= 0 and out["optical"].max() <= 1


def test_cloud_shapes_and_kinds_vary():
    rng = np.random.default_rng(1)
    covers = [fractal_shape((96, 96), rng).mean() for _ in range(30)]
    assert min(covers) < 0.3 < 0.6 < max(covers)
    kinds = {opacity(fractal_shape((64, 64), rng), rng)[1] for _ in range(40)}
    assert kinds == {"thick", "semi", "haze"}


def test_clear_readers_always_get_clouds_and_real_ones_keep_theirs(tmp_path):
    class Clear:
        kind = "clear"
        synthetic = 1.0

        def __len__(self):
            return 2

        def read(self, i):
            return _clear_sample()

    view = TrainView([Clear()], AugmentConfig(crop=0, flips=False, rot90=False, cloud_model="layers"), seed=3)
    for i in range(2):
        s = view[i]
        assert s["mask"].sum() > 0
        assert not np.allclose(s["optical"].numpy(), s["target"].numpy())
    again = TrainView([Clear()], AugmentConfig(crop=0, flips=False, rot90=False, cloud_model="layers"), seed=3)
    assert np.array_equal(view[1]["optical"].numpy(), again[1]["optical"].numpy())  # deterministic for scoring


def test_scoring_margin_is_model_minus_best_baseline():
    rng = np.random.default_rng(0)
    target = rng.random((4, 32, 32)).astype(np.float32)
    cloud = np.zeros((32, 32), bool)
    cloud[8:24, 8:24] = True
    cloudy = target.copy()
    cloudy[:, cloud] = 0.9
    perfect = scoring.score_sample("a", target, cloudy, target, cloud)
    assert perfect["model_psnr_in"] >= 100  # engine.outputs.metrics caps a perfect PSNR at 100 dB
    worse = scoring.score_sample("b", cloudy, cloudy, target, cloud)  # the cloudy input as "model"
    summary = scoring.summarise([worse])
    best = max(worse["flat_psnr_in"], worse["fill_psnr_in"])
    assert summary["margin_in"] == pytest.approx(worse["model_psnr_in"] - best)
    assert summary["margin_in"] < 0 and summary["wins_in"] == 0.0
    full = scoring.score_sample("c", cloudy, cloudy, target, np.ones((32, 32), bool))
    assert not full["scored"]  # no clear pixel: baselines have nothing to work from, not counted inside


def test_unknown_select_key_is_refused(tmp_path):
    from training.config import config_from_dict
    from training.train import train

    cfg = config_from_dict({"run": {"select": "loss", "out_dir": str(tmp_path)}})
    with pytest.raises(Exception, match="run.select"):
        train(cfg)


@pytest.mark.shared
def test_real_sources_read_with_their_quirks(shared_data):
    cases = [("bigearthnet", "bigearthnet_mm_example", {"include": ["87_48"]}, (120, 120)),
             ("terramind", "terramind_examples", {"include": ["433D_629L_3_1"]}, (224, 224)),
             ("ssl4eo", "ssl4eo_s12_sample", {"mode": "triplet"}, (264, 264)),
             ("sen1floods11", "sen1floods11_sample", {}, (512, 512)),
             ("sen12mscr_pairs", "sen12mscr_dsp_sea", {"include": ["ROIs1158_spring_101_30"]}, (256, 256))]
    for kind, folder, opts, hw in cases:
        reader = build_reader({"kind": kind, "root": str(shared_data / folder), **opts})
        s = reader.read(0)
        assert s["optical"].shape == (4, *hw) and s["sar"].shape == (2, *hw), kind
        assert np.isfinite(s["sar"]).all() and np.isfinite(s["optical"]).all(), kind
        assert 0 < np.median(s["target"][2]) < 0.5, kind  # red reflectance of a snow-free scene
    # TerraMesh 433D carries the +1000 DN offset: removed (its darkest red pixels are near 0, not 0.1)
    tm = build_reader({"kind": "terramind", "root": str(shared_data / "terramind_examples"),
                       "include": ["433D_629L_3_1"]}).read(0)
    assert np.percentile(tm["target"][2], 1) < 0.06
    ssl = build_reader({"kind": "ssl4eo", "root": str(shared_data / "ssl4eo_s12_sample")}).read(0)
    assert 0.1 < ssl["mask"].mean() < 0.6  # the real August clouds, detected


@pytest.mark.shared
def test_bundled_splits_are_scene_disjoint_and_overlap_is_refused(shared_data, tmp_path):
    from training.splits import manifest

    train = ROOT / "training/configs/aligncr_lite_bundled.toml"
    report = ROOT / "training/configs/aligncr_lite_report.toml"
    m = manifest(train, report)
    real = [r for r in m["samples"] if r["split"] == "report_real"]
    assert len(real) >= 8 and {r["kind"] for r in real} >= {"sen12mscr", "m3rcr"}  # two sensors
    bad = tmp_path / "bad.toml"
    bad.write_text(report.read_text() + '\n[[report.real]]\nkind = "sen12mscr"\nroot = "../shared/data/'
                   'sen12mscr_triplets"\ninclude = ["5349"]\n')
    with pytest.raises(InputError, match="share scene"):
        manifest(train, bad)


@pytest.mark.shared
def test_evaluate_recipe_scores_both_kinds_with_baselines_and_writes_the_card(shared_data, tmp_path):
    import json

    import torch

    from engine.models import build_model, read_card
    from engine.models import weights as model_weights
    from training.evaluate import main

    torch.manual_seed(0)
    w = model_weights.save(build_model("aligncr-lite", num_blocks=1, fe_blocks=1), tmp_path / "w.safetensors",
                           {"arch": "aligncr-lite", "config": {"num_blocks": 1, "fe_blocks": 1}})
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""[report]
seed = 1
synthetic_draws = 2
[[report.real]]
kind = "sen12mscr"
root = "{shared_data / 'sen12mscr_triplets'}"
include = ["6553"]
[[report.synthetic]]
kind = "bigearthnet"
root = "{shared_data / 'bigearthnet_mm_example'}"
include = ["87_48"]
""")
    out, card_out = tmp_path / "r.json", tmp_path / "carded.safetensors"
    assert main(["--weights", str(w), "--recipe", str(recipe), "--out", str(out), "--card-out", str(card_out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == {"real": 1, "synthetic": 2}
    for kind in ("real", "synthetic"):
        summary = report["results"][kind]["summary"]
        assert {"model_psnr_in", "flat_psnr_in", "fill_psnr_in", "margin_in"} <= set(summary)
    a, b = report["results"]["synthetic"]["per_sample"]
    assert a["cover"] != b["cover"]  # two different cloud draws of the same image
    card = read_card(card_out)
    assert card.metrics["report_real"]["margin_in"] == pytest.approx(report["results"]["real"]["summary"]["margin_in"])
