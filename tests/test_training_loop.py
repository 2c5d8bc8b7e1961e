"""The training loop: overfitting lowers the loss, resume is exact, DDP (world size 1, gloo), divergence guard."""

from __future__ import annotations

import csv
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from torch import nn

from engine.models import MODEL_REGISTRY, build_model, register_model
from engine.models import weights as model_weights
from engine.models.ops.deform_conv import DCNv2Pack
from training.config import ConfigError, config_from_dict
from training.train import TrainingDiverged, build_views, load_state, main, train

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@dataclass(frozen=True)
class TinyConfig:
    in_bands: int = 4
    sar_bands: int = 2
    width: int = 6
    offset_bias: float = 0.0  # > 0: the DCN starts with huge offsets (divergence-guard test)


class TinyAlign(nn.Module):
    """Stands in for an alignment block: a DCN warping SAR features guided by optical ones."""

    def __init__(self, width: int, offset_bias: float) -> None:
        super().__init__()
        self.dcn = DCNv2Pack(width, width, 3, 1, deformable_groups=1)
        nn.init.constant_(self.dcn.conv_offset.bias, offset_bias)

    def forward(self, sar: torch.Tensor, opt: torch.Tensor) -> torch.Tensor:
        return self.dcn(sar, torch.cat([opt], 1))


if "test-tiny" not in MODEL_REGISTRY:

    @register_model("test-tiny", TinyConfig(), "throwaway model of the training tests")
    class Tiny(nn.Module):
        def __init__(self, cfg: TinyConfig) -> None:
            super().__init__()
            self.cfg = cfg
            self.opt = nn.Conv2d(cfg.in_bands, cfg.width, 3, padding=1)
            self.sar = nn.Conv2d(cfg.sar_bands, cfg.width, 3, padding=1)
            self.align = TinyAlign(cfg.width, cfg.offset_bias)
            self.out = nn.Conv2d(2 * cfg.width, cfg.in_bands, 3, padding=1)

        def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
            sar = F.interpolate(sar, size=optical.shape[-2:], mode="nearest")
            fo = torch.relu(self.opt(optical))
            fs = self.align(torch.relu(self.sar(sar)), fo)
            return optical + self.out(torch.cat([fo, fs], 1))


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype) as ds:
        ds.write(array)


@pytest.fixture(scope="module")
def sen12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 32×32 triplets: a smooth scene, a bright square cloud, SAR that sees the scene, given masks."""
    root = tmp_path_factory.mktemp("sen12")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    for k in range(4):
        scene = np.stack([0.05 + 0.1 * np.sin(3 * xx + k + b) ** 2 + 0.05 * yy for b in range(13)])
        cloudy = scene.copy()
        mask = np.zeros((32, 32), dtype=np.uint8)
        y0, x0 = rng.integers(0, 16, 2)
        cloudy[:, y0 : y0 + 14, x0 : x0 + 14] = 0.7
        mask[y0 : y0 + 14, x0 : x0 + 14] = 1
        _write(root / "s2_cloudfree" / f"{k}.tif", (scene * 10000).astype(np.uint16))
        _write(root / "s2_cloudy" / f"{k}.tif", (cloudy * 10000).astype(np.uint16))
        sar = np.stack([-20 + 40 * scene[7], -25 + 40 * scene[3]]).astype(np.float32)
        _write(root / "s1" / f"{k}.tif", sar)
        _write(root / "cloudmask" / f"{k}.tif", mask[None])
    return root


def _cfg(root: Path, out: Path, **sections: dict) -> object:
    raw = {
        "model": {"name": "test-tiny"},
        "data": {"train": [{"kind": "sen12mscr", "root": str(root), "exclude": ["3"]}],
                 "val": [{"kind": "sen12mscr", "root": str(root), "include": ["3"]}],
                 "crop": 16, "batch_size": 2, "samples_per_epoch": 4, "synthetic_clouds": 0.5},
        "optim": {"lr": 1e-3, "alignment_lr": 1e-4, "alignment_modules": [f"{TinyAlign.__module__}:TinyAlign"]},
        "schedule": {"epochs": 100, "start_epoch": 1, "step_size": 1, "gamma": 0.7},
        "run": {"seed": 3, "out_dir": str(out), "device": "cpu", "threads": 1, "log_every": 1, "val_every": 0,
                "ckpt_every_steps": 0, "ckpt_every_minutes": 0, "progress": False},
        "card": {"training_data": "synthetic test triplets"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def _losses(out: Path) -> list[float]:
    with open(out / "train_log.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


TINY_LITE = {"num_feat": 8, "num_blocks": 1, "rdb_layers": 2, "growth": 4, "fe_blocks": 1, "fe_expand": 2,
             "pyramid_channels": [8, 8], "deformable_groups": 2, "num_heads": 2, "window_size": 4, "up_feat": 8}


def test_overfit_aligncr_lite_lowers_the_loss(sen12: Path, tmp_path: Path) -> None:
    """30 steps of a tiny aligncr-lite config on the same 2 samples: the loss must fall clearly."""
    tiny = TINY_LITE
    cfg = _cfg(sen12, tmp_path,
               model={"name": "aligncr-lite", "overrides": tiny},
               data={"train": [{"kind": "sen12mscr", "root": str(sen12), "include": ["0", "1"]}],
                     "crop": 0, "flips": False, "rot90": False, "synthetic_clouds": 0.0, "samples_per_epoch": 0},
               optim={"lr": 2e-3, "alignment_lr": 2e-4,
                      "alignment_modules": ["engine.models.aligncr_arch:PCDAlignment"]},
               schedule={"epochs": 30, "start_epoch": 100},
               run={"val_every": 30})
    summary = train(cfg)
    losses = _losses(tmp_path)
    assert summary["steps"] == 30 and len(losses) == 30
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    model, card = model_weights.load(tmp_path / "last.safetensors")
    assert card.arch == "aligncr-lite" and card.config["num_feat"] == 8
    assert set(card.metrics["validation"]) >= {"psnr", "ssim", "mae", "sam", "identity_psnr"}
    assert "synthetic test triplets" in card.training_data
    assert (tmp_path / "best.safetensors").is_file() and (tmp_path / "val_log.csv").is_file()
    assert any((tmp_path / "tb").iterdir())


def test_resume_is_exact(sen12: Path, tmp_path: Path) -> None:
    """6 steps straight == 3 steps + resume + 3 steps (data order, augmentation, optimizer, LR schedule)."""
    straight = _cfg(sen12, tmp_path / "a", run={"max_steps": 6})
    train(straight)
    first = _cfg(sen12, tmp_path / "b", run={"max_steps": 3})
    train(first)
    state_mid = load_state(tmp_path / "b" / "state_last.pt")
    assert state_mid["step"] == 3
    second = _cfg(sen12, tmp_path / "b", run={"max_steps": 6})
    train(second, resume=tmp_path / "b" / "state_last.pt")
    with open(tmp_path / "a" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and all(float(r["offset_mean"]) > 0 for r in rows[1:])  # the DCN's offsets are logged
    a = load_state(tmp_path / "a" / "state_last.pt")
    b = load_state(tmp_path / "b" / "state_last.pt")
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], rtol=1e-5, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx([1e-3 * 0.7**3, 1e-4 * 0.7**3])  # epoch 3
    # a run without a resumable state is a clear error
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2


def test_ddp_world_size_one_gloo(sen12: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    try:
        summary = train(_cfg(sen12, tmp_path, run={"max_steps": 2}), init_method=f"tcp://127.0.0.1:{port}")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert summary["ddp"] and summary["world_size"] == 1 and summary["steps"] == 2
        assert (tmp_path / "last.safetensors").is_file()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_sigterm_stops_cleanly_with_a_checkpoint(sen12: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    import training.train as tt

    calls = {"n": 0}
    real = tt.offset_magnitudes

    def offsets_then_sigterm(model: nn.Module) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 2
        return real(model)

    monkeypatch.setattr(tt, "offset_magnitudes", offsets_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    summary = train(_cfg(sen12, tmp_path, run={"max_steps": 50}))
    assert summary["stopped_by_signal"] and summary["steps"] == 2
    assert load_state(tmp_path / "state_last.pt")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) == before  # our handler is removed again


def _ddp_worker(rank: int, world: int, init: str, root: str, out: str) -> None:
    import os

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    cfg = _cfg(Path(root), Path(out), model={"name": "aligncr-lite", "overrides": TINY_LITE},
               optim={"alignment_modules": ["engine.models.aligncr_arch:PCDAlignment"]},
               run={"max_steps": 2}, data={"val": []})
    summary = train(cfg, init_method=init)
    assert summary["ddp"] and summary["world_size"] == world and summary["steps"] == 2
    import torch.distributed as dist

    dist.destroy_process_group()


def test_ddp_two_processes_aligncr_lite(sen12: Path, tmp_path: Path) -> None:
    """Two gloo processes on aligncr-lite: DDP must cope with the parameters Align-CR leaves unused."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(sen12), str(tmp_path / "run")), nprocs=2, join=True)
    assert load_state(tmp_path / "run" / "state_last.pt")["step"] == 2


def test_exploding_offsets_stop_the_run(sen12: Path, tmp_path: Path) -> None:
    cfg = _cfg(sen12, tmp_path, model={"name": "test-tiny", "overrides": {"offset_bias": 300.0}},
               run={"max_steps": 3, "offset_abort": 100.0})
    with pytest.raises(TrainingDiverged, match="offset"):
        train(cfg)
    assert (tmp_path / "state_last.pt").is_file()  # kept for inspection


def test_a_teacher_pulls_the_student_towards_its_output(sen12: Path, tmp_path: Path) -> None:
    """loss.teacher (distillation): a teacher that returns the cloudy input unchanged, weighted ×50, keeps the
    student near the identity; without it the same run moves the cloud towards the truth."""
    teacher = build_model("test-tiny")
    nn.init.zeros_(teacher.out.weight)
    nn.init.zeros_(teacher.out.bias)
    model_weights.save(teacher, tmp_path / "identity.safetensors")
    moved = {}
    for name, loss in (("plain", {}), ("taught", {"teacher": str(tmp_path / "identity.safetensors"),
                                                  "teacher_weight": 50.0})):
        cfg = _cfg(sen12, tmp_path / name, loss=loss, schedule={"epochs": 20, "start_epoch": 100})
        train(cfg)
        model, _ = model_weights.load(tmp_path / name / "last.safetensors")
        _, val = build_views(cfg)
        sample = val[0]
        with torch.no_grad():
            out = model(sample["optical"][None], sample["sar"][None])
        moved[name] = float((out - sample["optical"][None]).abs().mean())
    assert moved["taught"] < 0.5 * moved["plain"]


@pytest.mark.parametrize("loss, words", [({"teacher_weight": 1.0}, "no loss.teacher"),
                                         ({"teacher": "t.safetensors"}, "teacher_weight is 0"),
                                         ({"teacher": "t.safetensors", "teacher_weight": -1.0}, "≥ 0")])
def test_a_half_named_teacher_is_refused(loss: dict, words: str) -> None:
    """Either half of distillation alone used to train without it, silently."""
    with pytest.raises(ConfigError, match=words):
        config_from_dict({"loss": loss})


def test_a_stop_signal_to_the_whole_process_group_still_ends_with_a_checkpoint(sen12: Path, tmp_path: Path) -> None:
    """``timeout`` and ``kill -- -PGID`` signal the data workers too: the run must still finish its step and write
    its checkpoint (a worker killed by the signal used to fail the step first)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    raw = {"model": {"name": "aligncr-lite", "overrides": TINY_LITE},
           "data": {"train": [{"kind": "sen12mscr", "root": str(sen12), "exclude": ["3"]}], "crop": 16,
                    "batch_size": 2, "samples_per_epoch": 400, "num_workers": 2},
           "optim": {"alignment_modules": ["engine.models.aligncr_arch:PCDAlignment"]},
           "run": {"out_dir": str(tmp_path), "device": "cpu", "threads": 1, "log_every": 1, "val_every": 0,
                   "ckpt_every_steps": 0, "ckpt_every_minutes": 0, "progress": False},
           "card": {"training_data": "synthetic test triplets"}}  # fmt: skip
    script = ("import json, sys\nfrom training.config import config_from_dict\nfrom training.train import train\n"
              "print(json.dumps(train(config_from_dict(json.loads(sys.argv[1]))), default=str))")  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(raw)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    log = tmp_path / "train_log.csv"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:  # a few steps first: the workers are running
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by_signal"] and summary["steps"] >= 2
    assert load_state(tmp_path / "state_last.pt")["step"] == summary["steps"]
