"""``engine finetune`` (issue 14): archive → samples → a short fine-tune that improves the held-out block →
weights ``engine run --weights`` loads; cancel keeps the best weights; bad inputs stop before any training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio

from engine.errors import EngineError, OutputError
from engine.models.weights import read_card
from engine.progress import Progress
from tests.helpers_finetune import disk, ssl4eo_archive, synthetic_archive
from training.datasets import LayoutSplit
from training.finetune.config import FinetuneConfig
from training.finetune.run import finetune
from training.finetune.samples import build_samples, index_archive, write_splits
from training.layout.split import block_of

ROOT = Path(__file__).resolve().parents[1]
# a tiny, fast run: 16-px patches of a 64-px archive, batch 2, a high LR so 30 steps show a gain
FAST = dict(patch_size=16, block_cells=2, batch_size=2, steps=30, minutes=0, val_every=10, lr=1e-3,
            alignment_lr=1e-4, threads=1, patience=0)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_archive(tmp_path_factory.mktemp("finetune") / "area")


def config(archive: Path, out: Path, **kw) -> FinetuneConfig:
    return FinetuneConfig(archive=archive, out=out, **(FAST | kw))


def test_index_pairs_and_spatial_holdout(archive: Path, tmp_path: Path) -> None:
    cfg = config(archive, tmp_path / "w.safetensors")
    idx = index_archive(cfg, Progress())
    assert idx.grid.crs == "EPSG:32631"
    assert len(idx.notices) == 1 and "4 scene(s) not in EPSG:32631" in idx.notices[0]  # S1 in EPSG:4326
    samples = build_samples(idx, cfg)
    n = samples.summary["samples"]
    assert min(n["real"]["train"], n["real"]["val"], n["synthetic"]["train"], n["synthetic"]["val"]) > 0
    val_blocks = {tuple(b) for b in samples.summary["held_out_blocks"]}
    for kind in ("real", "synthetic"):
        for split in ("train", "val"):
            for s in samples.splits[kind][split]:
                assert (block_of(s.col, s.row, 2) in val_blocks) == (split == "val")
    for s in samples.splits["real"]["train"]:  # a cloudy t, a clear target of another date, S1 within 3 days
        t, target = s.items["t"], s.items["target"]
        assert t.cloud >= 2.0 and target.cloud <= 1.0 and t.optical != target.optical
        assert abs((t.sar.when - t.optical.when).total_seconds()) <= 3 * 86400
    for s in samples.splits["synthetic"]["train"]:
        assert s.items["t"].optical == s.items["target"].optical and s.items["t"].cloud <= 1.0
    work = tmp_path / "work"
    work.mkdir()
    paths = write_splits(work, idx, samples, cfg)
    sample = LayoutSplit(work, csv_file=paths["real"]["val"], archive=archive).read(0)
    assert sample["optical"].shape == (4, 16, 16) and sample["sar"].shape == (2, 16, 16)
    assert np.isfinite(sample["sar"]).all() and sample["sar"].std() > 0  # the reprojected S1 window is real data
    assert sample["mask"].any()


def test_short_finetune_improves_holdout_and_loads_in_engine_run(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "my_area.safetensors"
    result = finetune(config(archive, out))
    assert result.steps == 30 and result.best_step > 0 and out.is_file()
    syn = result.table["holdout_synthetic"]
    assert syn["model_psnr_in"] > syn["before_psnr_in"]  # the held-out inside-cloud PSNR went up
    assert {"flat_psnr_in", "fill_psnr_in", "identity_psnr_in", "model_psnr_out"} <= set(syn)
    card = read_card(out)
    assert card.arch == "aligncr-lite" and set(card.metrics) == {"holdout_real", "holdout_synthetic"}
    assert "EPSG:32631" in card.training_data and "real and" in card.training_data
    info = json.loads(card.notes.split("finetune: ", 1)[1])
    assert info["base"]["file"] == "aligncr-lite.safetensors" and info["stop_reason"] == "budget"
    assert info["archive"]["samples"] == result.summary["samples"]
    log = [ln for ln in (out.parent / "my_area.safetensors.finetune" / "val_log.csv").read_text().splitlines()]
    assert len(log) == 4  # header + 3 validations (steps 10, 20, 30): resumable state beside them
    assert (out.parent / "my_area.safetensors.finetune" / "state_last.pt").is_file()
    assert (out.parent / "my_area.safetensors.finetune" / "holdout.png").stat().st_size > 1000
    listed = subprocess.run([sys.executable, "-m", "engine", "models", "--json", "--weights-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    entry = next(w for w in json.loads(listed.stdout)["weights"] if w["file"] == str(out))
    assert entry["arch"] == "aligncr-lite" and "holdout_real" in entry["metrics"]  # `engine models` shows it
    scene = sorted((archive / "optical").glob("S2_*0606.tif"))[0]
    run = subprocess.run([sys.executable, "-m", "engine", "run", "--optical", str(scene), "--sar",
                          str(archive / "sar" / "S1_20210607.tif"), "--weights", str(out), "--out",
                          str(tmp_path / "declouded.tif"), "--device", "cpu"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with rasterio.open(tmp_path / "declouded.tif") as ds:
        assert ds.crs == "EPSG:32631" and ds.count == 4


def test_cancel_keeps_the_best_weights_so_far(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.safetensors"
    progress = Progress()
    # cancel as soon as a validation has written better weights than the base's
    progress.callback = lambda f, m: progress.cancel() if out.is_file() and m.startswith("step") else None
    result = finetune(config(archive, out, steps=300), progress)
    assert result.cancelled and 0 < result.best_step == result.steps < 300
    card = read_card(out)
    assert json.loads(card.notes.split("finetune: ", 1)[1])["stop_reason"] == "requested"


def test_sigint_from_the_plugin_keeps_the_best_weights_and_says_so(archive: Path, tmp_path: Path) -> None:
    """What the plugin's cancel does: SIGINT to the child; the best weights stay, the result event says so."""
    out = tmp_path / "s.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "finetune", "--archive", str(archive), "--out", str(out), "--patch-size",
         "16", "--batch", "2", "--steps", "500", "--minutes", "0", "--val-every", "5", "--threads", "1",
         "--lr", "1e-3", "--patience", "0", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events, sent = [], False
    for line in proc.stdout:
        events.append(json.loads(line))
        if not sent and out.is_file():  # a validation beat the base model: cancel now
            proc.send_signal(signal.SIGINT)
            sent = True
    assert proc.wait(timeout=120) == 130
    result = events[-1]
    assert result["event"] == "result" and result["cancelled"] and 0 < result["best_step"] <= result["steps"] < 500
    assert f"are kept in {out}" in result["message"] and out.is_file()


def test_resume_continues_the_checkpoint(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.safetensors"
    first = finetune(config(archive, out, steps=10))
    assert first.steps == 10
    again = finetune(config(archive, out, steps=20, resume=True))
    assert again.steps == 20  # 10 more, not 20 from scratch
    steps = [ln.split(",")[0] for ln in (tmp_path / "r.safetensors.finetune" / "val_log.csv").read_text().splitlines()]
    assert steps == ["step", "10", "20"]


def test_dates_from_file_names(tmp_path: Path) -> None:
    """Without date tags or dates.csv, finetune dates the scenes from their names; build_dataset still refuses."""
    from training.layout.archive import scan_archive

    root = synthetic_archive(tmp_path / "a", tags=False)
    with pytest.raises(EngineError, match="no acquisition date"):
        scan_archive(root)
    cfg = config(root, tmp_path / "n.safetensors")
    samples = build_samples(index_archive(cfg, Progress()), cfg)
    t = samples.splits["real"]["train"][0].items["t"]
    assert t.optical.when.isoformat() == "2021-06-06T00:00:00+00:00" and t.sar.name == "S1_20210607"


def test_sentinel2_scl_sidecar_is_the_cloud_mask(tmp_path: Path) -> None:
    """A 20 m SCL sidecar (NAME_scl.tif) gives the cloud cover of the index and the mask of the samples."""
    root = synthetic_archive(tmp_path / "a", scl=True)
    cfg = config(root, tmp_path / "s.safetensors")
    idx = index_archive(cfg, Progress())
    assert [s.mask.name for s in idx.scenes if s.mask is not None] == ["S2_20210606_scl.tif", "S2_20210616_scl.tif"]
    assert {s.name for s in idx.scenes if s.kind == "optical"} == {"S2_20210601", "S2_20210606", "S2_20210611",
                                                                   "S2_20210616"}
    scl_mask = np.repeat(np.repeat(disk(64, 20, 18, 15)[::2, ::2], 2, 0), 2, 1)  # 20 m classes, nearest at 10 m
    for p in idx.patches:
        if p.scene.name == "S2_20210606":
            want = 100.0 * scl_mask[16 * p.row:16 * p.row + 16, 16 * p.col:16 * p.col + 16].mean()
            assert p.cloud == pytest.approx(want)
    samples = build_samples(idx, cfg)
    work = tmp_path / "w"
    work.mkdir()
    paths = write_splits(work, idx, samples, cfg)
    reader = LayoutSplit(work, csv_file=paths["real"]["train"], archive=root)
    for i in range(len(reader)):
        row, sample = reader.rows[i], reader.read(i)
        col, r = int(row["col"]), int(row["row"])
        disk_mask = disk(64, 20, 18, 15) if "0606" in row["t_optical"] else disk(64, 44, 42, 13)
        scl_mask = np.repeat(np.repeat(disk_mask[::2, ::2], 2, 0), 2, 1)  # the 20 m classes, nearest at 10 m
        assert np.array_equal(sample["mask"][0] > 0, scl_mask[16 * r:16 * r + 16, 16 * col:16 * col + 16])


def _nothing_written(out: Path) -> bool:
    return not out.exists() and not out.with_name(out.name + ".finetune").exists()


@pytest.mark.parametrize("case, message", [
    ("no_clear", "no clear acquisition"),
    ("no_s1_in_limit", "no Sentinel-1 scene within 3 days"),
    ("one_scene", "one optical scene only"),
])
def test_bad_archives_fail_before_training(tmp_path: Path, case: str, message: str) -> None:
    cloud = disk(64, 30, 30, 40)
    clouds = {"no_clear": {0: cloud, 5: cloud}, "one_scene": {0: None}}.get(case)
    sar_days = (20, 30) if case == "no_s1_in_limit" else None
    root = synthetic_archive(tmp_path / "a", clouds=clouds, sar_days=sar_days)
    out = tmp_path / "o.safetensors"
    with pytest.raises(EngineError, match=message):
        finetune(config(root, out))
    assert _nothing_written(out)


def test_unwritable_output_fails_before_training(archive: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores permissions: a read-only file system then
        folder = Path("/proc")
    out = folder / "o.safetensors"
    with pytest.raises(OutputError, match="cannot write into"):
        finetune(config(archive, out))
    assert _nothing_written(out)
    with pytest.raises(OutputError, match="does not exist"):
        finetune(config(archive, tmp_path / "missing" / "o.safetensors"))
    with pytest.raises(OutputError, match=".safetensors"):
        finetune(config(archive, tmp_path / "o.tif"))


def test_unavailable_device_fails_before_anything_is_written(archive: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "o.safetensors"
    with pytest.raises(EngineError, match="CUDA is not available"):
        finetune(config(archive, out, device="cuda"))
    assert _nothing_written(out)


def test_cli_one_line_error(tmp_path: Path) -> None:
    root = synthetic_archive(tmp_path / "a", clouds={0: None})
    proc = subprocess.run([sys.executable, "-m", "engine", "finetune", "--archive", str(root), "--out",
                           str(tmp_path / "o.safetensors"), "--steps", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "one optical scene only" in proc.stderr


def test_real_ssl4eo_archive(tmp_path: Path) -> None:
    """The real SSL4EO-S12 scenes (L1C 2020-06-04 clear, 08-23 real clouds; S1 06-07, 09-03; EPSG:4326, S1 on
    another grid): indexed into real and synthetic pairs with a held-out block, and a 3-step fine-tune runs."""
    root = ssl4eo_archive(tmp_path / "ssl4eo")
    if root is None:
        pytest.skip("../shared/data/ssl4eo_s12_sample is absent")
    cfg = FinetuneConfig(archive=root, out=tmp_path / "p.safetensors", patch_size=64, pair_days=90, sar_days=12,
                         steps=3, minutes=0, val_every=3, threads=1)
    samples = build_samples(index_archive(cfg, Progress()), cfg)
    n = samples.summary["samples"]
    assert samples.summary["crs"] == "EPSG:4326" and 9 < samples.summary["pixel_m"] < 11
    assert n["real"]["val"] > 0 and n["real"]["train"] > 0 and n["synthetic"]["val"] > 0
    assert all(s.items["t"].optical.name == "S2_20200823" for s in samples.splits["real"]["train"])
    result = finetune(replace(cfg))
    assert result.steps == 3 and read_card(cfg.out).arch == "aligncr-lite"
    assert result.table["holdout_real"]["scored_samples"] > 0


def test_installed_plugin_can_run_finetune(tmp_path: Path) -> None:
    """The plugin zip carries ``training`` beside ``engine``; from the unzipped plugin alone (no repository on the
    path) ``engine finetune`` imports its whole chain and reaches its checks."""
    import zipfile

    from aligncr_qgis.installer import REQUIREMENTS
    from aligncr_qgis.package import build

    assert any(r.startswith("rtree") for r in REQUIREMENTS)  # the archive index's R-tree
    with zipfile.ZipFile(build(tmp_path / "plugin.zip")) as zf:
        assert "aligncr_qgis/training/finetune/run.py" in zf.namelist()
        zf.extractall(tmp_path / "unzipped")
    plugin = tmp_path / "unzipped" / "aligncr_qgis"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(plugin)}
    proc = subprocess.run([sys.executable, "-m", "engine", "finetune", "--archive", str(tmp_path / "none"), "--out",
                           str(tmp_path / "o.safetensors"), "--steps", "1"],
                          cwd=plugin, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "archive folder" in proc.stderr and "does not exist" in proc.stderr


def test_plugin_request_round_trips_through_the_cli_parser(tmp_path: Path) -> None:
    """The plugin's FinetuneRequest (no torch) builds arguments the engine's parser reads back as the same settings."""
    from aligncr_qgis.finetune_request import FinetuneRequest
    from engine.cli import build_parser
    from engine.commands.finetune import config_from_args

    req = FinetuneRequest(archive=str(tmp_path), out=str(tmp_path / "o.safetensors"), base="/w/b.safetensors",
                          minutes=12.5, steps=40, patch_size=64, val_fraction=0.3, pair_days=90, sar_days=12,
                          device="cpu", lr=5e-4, val_every=7)
    cfg = config_from_args(build_parser().parse_args([*req.to_args(), "--json"]))
    assert (cfg.archive, cfg.out, cfg.weights) == (tmp_path, tmp_path / "o.safetensors", Path("/w/b.safetensors"))
    assert (cfg.minutes, cfg.steps, cfg.patch_size, cfg.val_fraction) == (12.5, 40, 64, 0.3)
    assert (cfg.pair_days, cfg.sar_days, cfg.device, cfg.lr, cfg.val_every) == (90, 12, "cpu", 5e-4, 7)
    assert config_from_args(build_parser().parse_args(FinetuneRequest("a", "b.safetensors").to_args())).base == \
        "aligncr-lite"
