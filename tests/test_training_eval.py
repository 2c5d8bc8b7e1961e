"""training.evaluate: JSON report with per-class and cloud-cover-bin metrics, identity baseline alongside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from engine.models import build_model
from engine.models import weights as model_weights
from training.evaluate import main, open_dataset

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

TINY = {"num_feat": 8, "num_blocks": 1, "rdb_layers": 2, "growth": 4, "fe_blocks": 1, "fe_expand": 2,
        "pyramid_channels": (8, 8), "deformable_groups": 2, "num_heads": 2, "window_size": 4, "up_feat": 8}


@pytest.fixture()
def tiny_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("aligncr-lite", **TINY)
    return model_weights.save(model, tmp_path / "tiny.safetensors", {"training_data": "nothing (random init)"})


def _triplets(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for sid, cover in (("1", 0.1), ("2", 0.5)):
        for sub in ("s2_cloudfree", "s2_cloudy", "s1", "cloudmask"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        free = rng.integers(200, 2000, (13, 32, 32)).astype(np.uint16)
        cloudy = free.copy()
        rows = int(32 * cover)
        cloudy[:, :rows] = 7000
        mask = np.zeros((1, 32, 32), np.uint8)
        mask[:, :rows] = 1
        arrays = {"s2_cloudfree": free, "s2_cloudy": cloudy, "cloudmask": mask,
                  "s1": rng.uniform(-25, 0, (2, 32, 32)).astype(np.float32)}
        for sub, a in arrays.items():
            with rasterio.open(root / sub / f"{sid}.tif", "w", driver="GTiff", width=32, height=32, count=a.shape[0],
                               dtype=a.dtype) as ds:
                ds.write(a)
    return root


def test_evaluate_report(tiny_weights: Path, tmp_path: Path) -> None:
    data = _triplets(tmp_path / "data")
    out = tmp_path / "metrics.json"
    assert main(["--weights", str(tiny_weights), "--data", str(data), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 2 and set(report["results"]) == {"model", "identity"}
    ident = report["results"]["identity"]
    assert [b["range"] for b in ident["cloud_cover_bins"]] == [[0, 20], [20, 40], [40, 60], [60, 80], [80, 100]]
    assert [b["tiles"] for b in ident["cloud_cover_bins"]] == [1, 0, 1, 0, 0]
    # identity is exact outside the clouds, wrong inside them
    assert ident["outside_cloud"]["mae"] == pytest.approx(0.0, abs=1e-9)
    assert ident["inside_cloud"]["mae"] > 0.4
    assert set(ident["per_class"]) == {"forest", "rangeland", "agriculture", "urban", "barren", "water"}
    assert [r["id"] for r in ident["per_sample"]] == ["1", "2"]
    assert report["card"]["training_data"] == "nothing (random init)"
    assert main(["--weights", "identity", "--data", str(data), "--ids", "2", "--out", str(out)]) == 0
    only = json.loads(out.read_text())
    assert only["samples"] == 1 and set(only["results"]) == {"model"}
    assert main(["--weights", "identity", "--data", str(tmp_path / "absent")]) == 2


@pytest.mark.shared
def test_evaluate_m3rcr_sample_per_class(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    assert main(["--weights", "identity", "--data", str(shared_data / "m3rcr_sample"), "--split", "train",
                 "--crop", "160", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]["model"]
    assert res["overall"]["pixels"] == 160 * 160
    assert sum(c["pixels"] for c in res["per_class"].values()) > 0  # real WorldCover classes
    assert open_dataset(shared_data / "sen12mscr_glfcr", split="test").sample_id(0) == "ROIs1970_fall_139_p839"


def _sample(shift: float = 0.0, every: int = 5):
    """A smooth 32² scene, its cloudy copy (every ``every``-th pixel a bright cloud, so the ground under the cloud
    is like the clear ground) whose clear pixels are the truth + ``shift`` (another date), and the cloud mask."""
    yy, xx = np.mgrid[0:32, 0:32] / 32
    target = np.stack([0.04 + 0.03 * yy, 0.06 + 0.03 * xx, 0.05 + 0.05 * xx * yy, 0.3 + 0.1 * np.sin(4 * xx + yy)])
    cloud = (np.arange(32 * 32) % every == 0).reshape(32, 32)
    cloudy = target + shift
    cloudy[:, cloud] = 0.8
    return target, cloudy.astype(np.float32), cloud


def test_scoring_rows_carry_band_r_ndvi_r_off_gamut_and_the_ceiling() -> None:
    from engine.outputs.metrics import PSNR_CAP
    from training import scoring

    target, cloudy, cloud = _sample()
    row = scoring.score_sample("a", target, cloudy, target, cloud)  # a perfect "model"
    assert row["model_bandr_in"] == pytest.approx(1.0) and row["model_ndvir_in"] == pytest.approx(1.0)
    assert row["flat_bandr_in"] == 0.0 and row["flat_ndvir_in"] == 0.0  # a flat colour has no structure
    assert row["identity_offgamut_in"] == 1.0  # the cloud itself
    assert row["reference_offgamut_in"] == row["model_offgamut_in"] < 0.01
    assert row["ceiling_psnr"] == PSNR_CAP  # clear pixels equal to the truth: no date gap
    cast = target.copy()
    cast[2] += 0.3
    assert scoring.score_sample("b", cast, cloudy, target, cloud)["model_offgamut_in"] > 0.99
    # another date: clear pixels off by 0.01 in every band → MSE 1e-4 → 40 dB
    dated = scoring.score_sample("c", target, _sample(shift=0.01)[1], target, cloud)
    assert dated["ceiling_psnr"] == pytest.approx(40.0, rel=1e-5)
    # the ceiling is averaged over the scored samples only, like the inside-cloud figures it is read beside
    _, cloudy_d, cloud_d = _sample(shift=0.1, every=200)  # 0.5 % cloud: not scored
    unscored = scoring.score_sample("d", target, cloudy_d, target, cloud_d)
    assert not unscored["scored"] and unscored["ceiling_psnr"] == pytest.approx(20.0, rel=1e-5)
    summary = scoring.summarise([dated, unscored])
    assert summary["ceiling_psnr"] == pytest.approx(40.0, rel=1e-5)
    assert summary["reference_offgamut_in"] == dated["reference_offgamut_in"]


def test_markdown_tables_show_the_new_columns_and_the_ceiling_on_real_splits() -> None:
    from engine.outputs.metrics import CEILING_LABEL
    from training import scoring
    from training.evaluate import markdown_tables

    target, cloudy, cloud = _sample(shift=0.01)
    rows = [scoring.score_sample("s1", target, cloudy, target, cloud)]
    res = {"summary": scoring.summarise(rows), "per_sample": rows}
    text = markdown_tables({"real": res, "synthetic": res})
    real, synthetic = text.split("**synthetic**")
    header = next(line for line in real.splitlines() if line.startswith("| method"))
    assert "band r in" in header and "NDVI r in" in header and "off-gamut in" in header
    ref_share = 100 * res["summary"]["reference_offgamut_in"]
    assert f"| {ref_share:.1f} % |" in next(line for line in real.splitlines() if line.startswith("| reference"))
    assert f"{CEILING_LABEL}: **40.00 dB**" in real
    assert "ceiling (dB)" in real and real.rstrip().endswith("| 40.00 |")
    assert CEILING_LABEL not in synthetic and "ceiling (dB)" not in synthetic
