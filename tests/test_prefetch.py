"""Background reader/writer threads: order, real overlap, bounded look-ahead, errors surface, aborts stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from engine.stream.prefetch import BackgroundWriter, Prefetcher, pinned


def test_prefetcher_yields_every_result_in_order() -> None:
    with Prefetcher(range(20), lambda i: i * i, depth=2) as results:
        assert list(results) == [i * i for i in range(20)]


def test_prefetcher_overlaps_production_with_consumption() -> None:
    delay, n = 0.15, 5

    def slow(i: int) -> int:
        time.sleep(delay)
        return i

    t0 = time.perf_counter()
    with Prefetcher(range(n), slow, depth=1) as results:
        for _ in results:
            time.sleep(delay)  # the "compute"
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.8 * 2 * n * delay  # serial would be 2·n·delay; overlapped ≈ (n + 1)·delay


def test_prefetcher_look_ahead_is_bounded() -> None:
    produced = 0
    lead: list[int] = []
    lock = threading.Lock()

    def produce(i: int) -> int:
        nonlocal produced
        with lock:
            produced += 1
        return i

    with Prefetcher(range(30), produce, depth=2) as results:
        for consumed, _ in enumerate(results, start=1):
            time.sleep(0.005)
            with lock:
                lead.append(produced - consumed)
    assert max(lead) <= 3  # depth queued + one being produced


def test_prefetcher_reraises_the_producers_error_at_its_item() -> None:
    def produce(i: int) -> int:
        if i == 3:
            raise OSError("read failed at chunk 3")
        return i

    got = []
    with pytest.raises(OSError, match="chunk 3"), Prefetcher(range(10), produce) as results:
        for r in results:
            got.append(r)
    assert got == [0, 1, 2]


def test_prefetcher_stops_when_the_consumer_leaves_early() -> None:
    produced: list[int] = []

    def produce(i: int) -> int:
        produced.append(i)
        return i

    p = Prefetcher(range(10_000), produce, depth=1)
    with p as results:
        for r in results:
            if r == 2:
                break
    assert not p._thread.is_alive()
    assert len(produced) <= 5


class _Interrupted(Exception):
    """What engine.cli's SIGTERM handler raises in the main thread."""


def test_prefetcher_closes_cleanly_when_a_signal_interrupts_its_thread_start(monkeypatch) -> None:
    """SIGTERM landing while ``Thread.start`` waits for the new thread's handshake: the exception must come out of
    the ``with`` block as raised (it came out as "cannot join thread before it is started", exit code 1)."""
    real_start = threading.Thread.start

    def interrupted_start(self: threading.Thread) -> None:
        threading.Timer(0.05, real_start, args=(self,)).start()  # the thread comes up a moment later
        raise _Interrupted

    p = Prefetcher(range(100), lambda i: i, depth=1)
    monkeypatch.setattr(p._thread, "start", interrupted_start.__get__(p._thread))
    with pytest.raises(_Interrupted), p as results:
        next(iter(results))
    assert not p._thread.is_alive()


def test_prefetcher_close_gives_up_on_a_thread_that_never_came_up(monkeypatch) -> None:
    def failed_start(self: threading.Thread) -> None:
        raise _Interrupted

    p = Prefetcher(range(100), lambda i: i, depth=1)
    monkeypatch.setattr(p._thread, "start", failed_start.__get__(p._thread))
    t0 = time.monotonic()
    with pytest.raises(_Interrupted), p as results:
        next(iter(results))
    assert time.monotonic() - t0 < 5.0


def test_writer_writes_everything_in_order_before_close_returns() -> None:
    written: list[int] = []

    def write(i: int, arr: np.ndarray) -> None:
        time.sleep(0.002)
        written.append(i)

    with BackgroundWriter(write, depth=2) as w:
        for i in range(25):
            w.submit(i, np.zeros(3))
    assert written == list(range(25))


def test_writer_error_is_raised_in_the_submitting_thread() -> None:
    def write(i: int) -> None:
        if i == 1:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), BackgroundWriter(write, depth=1) as w:
        for i in range(50):
            w.submit(i)
            time.sleep(0.005)


def test_writer_abort_discards_queued_writes() -> None:
    written: list[int] = []
    gate = threading.Event()

    def write(i: int) -> None:
        gate.wait(0.3)  # a slow write: the abort arrives while the first one is in progress
        written.append(i)

    with pytest.raises(KeyboardInterrupt), BackgroundWriter(write, depth=4) as w:
        for i in range(4):
            w.submit(i)
        raise KeyboardInterrupt
    assert len(written) <= 1  # at most the write already in progress


def test_pinned_is_a_no_op_on_the_cpu() -> None:
    a = np.ones((2, 3), dtype=np.float32)
    assert pinned(a, torch.device("cpu")) is a


# --- the pipeline with prefetching: same output as the plain loop, errors and cancels still clean ---------------


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory: pytest.TempPathFactory):
    from helpers_rasters import write_mask, write_optical, write_sar

    from engine.models import build_model
    from engine.models import weights as weights_io

    d = tmp_path_factory.mktemp("prefetch")
    opt = write_optical(d / "opt.tif", height=70, width=90)
    sar = write_sar(d / "s1.tif", like=opt)
    mask = write_mask(d / "mask.tif", like=opt, cloud_fraction=0.4)
    torch.manual_seed(0)
    tiny = {"num_blocks": 1, "fe_blocks": 1, "num_feat": 16, "pyramid_channels": (16, 16), "growth": 8,
            "rdb_layers": 2, "deformable_groups": 2, "num_heads": 2, "up_feat": 8}  # fmt: skip
    weights = weights_io.save(build_model("aligncr-lite", **tiny), d / "tiny.safetensors")
    return opt, sar, mask, weights


def _run(scene, out, **accel_kw):
    import rasterio

    from engine.config import RunConfig
    from engine.stream.accel import AccelConfig
    from engine.stream.pipeline import run

    opt, sar, mask, weights = scene
    cfg = RunConfig(optical=opt, sar=sar, out=out, mask=mask, weights=weights, tile=32, overlap=8, batch=2, chunk=48)
    result = run(cfg, accel=AccelConfig(threads=torch.get_num_threads(), **accel_kw))
    with rasterio.open(out) as ds:
        return result, ds.read()


def test_pipeline_prefetch_equals_the_plain_loop_bit_for_bit(tiny_scene, tmp_path) -> None:
    r_plain, plain = _run(tiny_scene, tmp_path / "plain.tif", prefetch=False)
    r_fast, fast = _run(tiny_scene, tmp_path / "fast.tif", prefetch=True)
    np.testing.assert_array_equal(fast, plain)
    assert r_fast.cloud_fraction == r_plain.cloud_fraction and r_fast.sar_coverage == r_plain.sar_coverage
    assert r_fast.accel["dtype"] == "float32"
    assert not np.array_equal(plain, _read(tiny_scene[0]))  # the network did change the image


def test_pipeline_bf16_on_cpu_is_close_to_fp32(tiny_scene, tmp_path) -> None:
    _, fp32 = _run(tiny_scene, tmp_path / "fp32.tif")
    result, bf16 = _run(tiny_scene, tmp_path / "bf16.tif", dtype="bf16")
    assert result.accel["dtype"] == "bfloat16"
    diff = np.abs(bf16.astype(np.int32) - fp32.astype(np.int32))
    assert diff.max() <= 200  # DN (×10⁴ reflectance): bf16 rounding of a [0, 1] output is ≤ 2⁻⁸ ≈ 39 DN per op
    assert diff.mean() < 20


def test_pipeline_reader_error_leaves_no_output(tiny_scene, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.stream import pipeline

    real = pipeline.read_chunk
    calls = []

    def failing(chunk, *args):
        calls.append(chunk.index)
        if len(calls) == 2:
            raise OSError("TIFFReadEncodedTile failed")
        return real(chunk, *args)

    monkeypatch.setattr(pipeline, "read_chunk", failing)
    with pytest.raises(OSError, match="TIFFReadEncodedTile"):
        _run(tiny_scene, tmp_path / "out.tif")
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_fp16_on_cpu_in_one_line(tiny_scene, tmp_path, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    opt, sar, _, _ = tiny_scene
    code = main(["run", "--optical", str(opt), "--sar", str(sar), "--out", str(tmp_path / "o.tif"),
                 "--model", "identity", "--device", "cpu", "--dtype", "fp16"])  # fmt: skip
    assert code == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def _read(path):
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()
