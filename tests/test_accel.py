"""The inference runner: dtype choice, exact fp32, bf16 autocast on the CPU, channels_last, compile padding and
fallback, CUDA-OOM halving (with an injected OOM, since there is no GPU in CI)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from engine.errors import ModelError
from engine.models import build_model
from engine.stream import accel
from engine.stream.accel import AccelConfig, AccelError, InferenceRunner, resolve_dtype

CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """Optical + SAR → optical, with a conv (autocast-eligible) and a residual, like the real contract."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(6, 4, 3, padding=1)
        self.seen: list[tuple[int, ...]] = []
        self.conv_dtypes: list[torch.dtype] = []
        self.conv.register_forward_hook(lambda m, i, o: self.conv_dtypes.append(o.dtype))

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(optical.shape))
        return optical + 0.1 * self.conv(torch.cat([optical, sar], 1))


class OomAbove(TinyNet):
    """Raises the CUDA out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        if optical.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(optical, sar)


def _batch(n: int = 5, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0, 1, (n, 4, size, size)).astype(np.float32),
        rng.uniform(0, 1, (n, 2, size, size)).astype(np.float32),
    )


def _reference(model: nn.Module, o: np.ndarray, s: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(o), torch.from_numpy(s)).float().clamp_(0, 1).numpy()


def test_dtype_choice_on_cpu(monkeypatch) -> None:
    import engine.stream.accel as accel

    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", CPU) == torch.float32  # emulated bf16 is slower than fp32
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", CPU) == torch.bfloat16  # AVX-512-BF16 / AMX
    assert resolve_dtype("fp32", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(AccelError, match="fp16 needs a CUDA GPU"):
        resolve_dtype("fp16", CPU)
    with pytest.raises(AccelError, match="--dtype must be one of"):
        resolve_dtype("int8", CPU)
    with pytest.raises(AccelError, match="--threads"):
        AccelConfig(threads=0).validate()


def test_tf32_only_for_low_precision_cuda_runs() -> None:
    from engine.stream.accel import matmul_precision_for

    cuda = torch.device("cuda")
    assert matmul_precision_for(cuda, torch.bfloat16) == "high" and matmul_precision_for(cuda, torch.float16) == "high"
    assert matmul_precision_for(cuda, torch.float32) is None  # --dtype fp32 stays the exact reference
    assert matmul_precision_for(CPU, torch.bfloat16) is None  # the CPU is untouched
    assert matmul_precision_for(cuda, torch.bfloat16, tf32=False) is None  # the ablation
    before = torch.get_float32_matmul_precision()
    runner = InferenceRunner(nn.Identity(), CPU, AccelConfig(dtype="bf16"))
    assert torch.get_float32_matmul_precision() == before and runner.describe()["fp32_matmul"] == before
    runner.close()


def test_fp32_is_bit_identical_to_the_plain_call() -> None:
    model = build_model("aligncr-lite", num_blocks=1, fe_blocks=1).eval()
    o, s = _batch(2, 32)
    accel = AccelConfig(dtype="fp32", threads=torch.get_num_threads(), cpu_microbatch=0)  # one forward, as plain
    runner = InferenceRunner(model, CPU, accel)
    assert runner.dtype == torch.float32 and not runner.channels_last and not runner.compiled
    np.testing.assert_array_equal(runner.predict(o, s), _reference(model, o, s))


def test_bf16_autocast_on_cpu_runs_convs_in_bf16_and_returns_fp32() -> None:
    model = TinyNet()
    o, s = _batch(3)
    runner = InferenceRunner(model, CPU, AccelConfig(dtype="bf16", threads=torch.get_num_threads()))
    out = runner.predict(o, s)
    assert model.conv_dtypes[-1] == torch.bfloat16
    assert out.dtype == np.float32 and out.shape == o.shape
    ref = _reference(model, o, s)
    assert np.abs(out - ref).max() < 0.02  # bf16 has 8 mantissa bits
    assert runner.describe()["dtype"] == "bfloat16"


def test_channels_last_on_cpu_matches_fp32_closely() -> None:
    model = TinyNet()
    o, s = _batch(2)
    runner = InferenceRunner(model, CPU, AccelConfig(channels_last="on", threads=torch.get_num_threads()))
    assert runner.channels_last
    assert runner.module.conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(runner.predict(o, s), _reference(model, o, s), atol=1e-5)


def test_cuda_oom_halves_the_batch_and_keeps_it(caplog: pytest.LogCaptureFixture) -> None:
    model = OomAbove(limit=2)
    o, s = _batch(5)
    runner = InferenceRunner(model, CPU, AccelConfig(threads=torch.get_num_threads(), cpu_microbatch=0))
    with caplog.at_level(logging.WARNING, logger="engine"):
        out = runner.predict(o, s)
    assert runner.max_batch == 2 and runner.oom_events == 1  # 5 → 2, 2, 1
    assert "out of GPU memory at batch 5; retrying with batch 2" in caplog.text
    # Same weights; oneDNN may pick another kernel for batch 2 than for 5, hence not bit-equal.
    np.testing.assert_allclose(out, _reference(TinyNet(), o, s), atol=1e-6)
    model.seen.clear()
    runner.predict(*_batch(4, seed=1))  # later batches start at the reduced size: no new OOM
    assert model.seen == [(2, 4, 24, 24), (2, 4, 24, 24)] and runner.oom_events == 1


def test_cpu_feeds_one_tile_per_forward_by_default() -> None:
    model = OomAbove(limit=99)
    o, s = _batch(3)
    out = InferenceRunner(model, CPU, AccelConfig(threads=torch.get_num_threads())).predict(o, s)
    assert model.seen == [(1, 4, 24, 24)] * 3 and out.shape == o.shape
    np.testing.assert_allclose(out, _reference(TinyNet(), o, s), atol=1e-6)
    model.seen.clear()
    InferenceRunner(model, CPU, AccelConfig(threads=torch.get_num_threads(), cpu_microbatch=2)).predict(o, s)
    assert model.seen == [(2, 4, 24, 24), (1, 4, 24, 24)]
    with pytest.raises(AccelError, match="cpu_microbatch"):
        AccelConfig(cpu_microbatch=-1).validate()


def test_cpu_workers_run_tiles_concurrently_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import engine.stream.accel as accel

    class Recorder(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.threads: set[str] = set()
            self.grad_enabled: set[bool] = set()

        def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
            self.threads.add(threading.current_thread().name)
            self.grad_enabled.add(torch.is_grad_enabled())
            return super().forward(optical, sar)

    model = Recorder()
    o, s = _batch(6)
    before = torch.get_num_threads()
    runner = InferenceRunner(model, CPU, AccelConfig(threads=2, cpu_workers=2))
    try:
        assert runner.describe()["cpu_workers"] == 2 and torch.get_num_threads() == 1  # 2 threads split in 2
        out = runner.predict(o, s)
    finally:
        runner.close()
        torch.set_num_threads(before)
    assert all(name.startswith("aligncr-cpu") for name in model.threads) and model.grad_enabled == {False}
    # same tiles in the same order; one tile per forward on one thread: float rounding may differ from a batch of 6
    np.testing.assert_allclose(out, _reference(TinyNet(), o, s), atol=1e-6)
    monkeypatch.setattr(accel, "MAX_AUTO_CPU_WORKERS", 4)
    auto = InferenceRunner(TinyNet(), CPU, AccelConfig(threads=3))
    auto.close()
    torch.set_num_threads(before)
    assert auto.cpu_workers == 3  # auto: one per thread, at most MAX_AUTO_CPU_WORKERS
    with pytest.raises(AccelError, match="cpu_workers"):
        AccelConfig(cpu_workers=-1).validate()


def test_oom_with_one_tile_is_a_clear_model_error() -> None:
    runner = InferenceRunner(OomAbove(limit=0), CPU, AccelConfig(threads=torch.get_num_threads()))
    with pytest.raises(ModelError, match="single .* tile: use a smaller --tile"):
        runner.predict(*_batch(2))


def test_non_oom_errors_propagate_unchanged() -> None:
    class Broken(TinyNet):
        def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
            raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        InferenceRunner(Broken(), CPU, AccelConfig(threads=torch.get_num_threads())).predict(*_batch(2))


def test_compiled_path_pads_partial_batches_to_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []

    def fake_compile(module: nn.Module, **kwargs: object):  # stands in for inductor (minutes on 2 cores)
        def compiled(o: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(o.shape))
            return module(o, s)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = TinyNet()
    runner = InferenceRunner(model, CPU, AccelConfig(compile=True, threads=torch.get_num_threads()))
    assert runner.compiled
    o, s = _batch(4)
    ref = _reference(model, o, s)
    np.testing.assert_array_equal(runner.predict(o, s), ref)
    np.testing.assert_array_equal(runner.predict(o[:3], s[:3]), ref[:3])  # padded to 4, extra output dropped
    assert calls == [(4, 4, 24, 24), (4, 4, 24, 24)]


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def failing_compile(module: nn.Module, **kwargs: object):
        def compiled(o: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor: C++ compiler not found")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = TinyNet()
    runner = InferenceRunner(model, CPU, AccelConfig(compile=True, threads=torch.get_num_threads()))
    o, s = _batch(3)
    with caplog.at_level(logging.WARNING, logger="engine"):
        out = runner.predict(o, s)
    assert not runner.compiled and "torch.compile failed" in caplog.text
    np.testing.assert_array_equal(out, _reference(model, o, s))


def test_compile_setup_failure_runs_eagerly(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def broken(*args: object, **kwargs: object):
        raise RuntimeError("Python 3.14 is not supported by torch.compile")

    monkeypatch.setattr(torch, "compile", broken)
    runner = InferenceRunner(TinyNet(), CPU, AccelConfig(compile=True, compile_cache=tmp_path / "cache"))
    assert not runner.compiled and (tmp_path / "cache").is_dir()


def test_threads_default_to_every_core(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(accel.os, "cpu_count", lambda: 1)
        assert accel.set_threads(None) == 1 and torch.get_num_threads() == 1
        assert accel.set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_deformable_sampling_positions_stay_fp32_under_bf16_autocast() -> None:
    """In bf16 a position near 150 px has a 1 px step: the DCN must sample at fp32 positions under autocast."""
    from engine.models.ops.deform_conv import deform_conv2d, deform_conv2d_pure

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 200, generator=g).bfloat16().float()  # values exactly representable in bf16
    offset = torch.full((1, 18, 6, 200), 0.37)  # sub-pixel shifts everywhere
    weight = (0.2 * torch.randn(4, 4, 3, 3, generator=g)).bfloat16().float()
    ref = deform_conv2d_pure(x, offset, weight, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(x.bfloat16(), offset.bfloat16(), weight, padding=1, use_torchvision=False)
    naive = deform_conv2d_pure(x.bfloat16(), offset.bfloat16(), weight.bfloat16(), padding=1).float()
    err, naive_err = (out.float() - ref).abs()[..., 128:].max(), (naive - ref).abs()[..., 128:].max()
    assert out.dtype == torch.bfloat16
    assert err < 0.05 < naive_err  # only the output's bf16 rounding remains


def test_pipeline_restores_the_callers_torch_threads(tmp_path) -> None:
    from helpers_rasters import write_optical, write_sar

    from engine.config import RunConfig
    from engine.stream.pipeline import run

    opt = write_optical(tmp_path / "o.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s.tif", like=opt)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cfg = RunConfig(optical=opt, sar=sar, out=tmp_path / "out.tif", model="identity", tile=32, overlap=8)
        result = run(cfg, accel=AccelConfig(threads=2))
        assert result.accel["threads"] == 2 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_submitted_batches_queue_on_the_workers_and_cancel_drops_unstarted_tiles() -> None:
    """``submit`` (the pipeline queues the next chunk's tiles before blending this one) gives predict's result; a
    cancelled submission does not run the tiles no worker has started."""
    import threading

    gate = threading.Event()

    class Gated(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.lock = threading.Lock()

        def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
            with self.lock:
                self.calls += 1
            gate.wait(10)
            return super().forward(optical, sar)

    before = torch.get_num_threads()
    model = Gated()
    runner = InferenceRunner(model, CPU, AccelConfig(threads=2, cpu_workers=2))
    try:
        gate.set()
        o, s = _batch(5)
        first, second = runner.submit(o[:3], s[:3]), runner.submit(o[3:], s[3:])
        out = np.concatenate([first.result(), second.result()])
        np.testing.assert_allclose(out, runner.predict(o, s), atol=1e-6)
        gate.clear()
        model.calls = 0
        blocked = runner.submit(o[:2], s[:2])  # both workers wait in the gate
        queued = runner.submit(o[2:], s[2:])
        while model.calls < 2:
            threading.Event().wait(0.01)
        queued.cancel()
        gate.set()
        assert blocked.result().shape == (2, 4, 24, 24)
    finally:
        runner.close()
        torch.set_num_threads(before)
    assert model.calls == 2  # the three queued tiles never ran
