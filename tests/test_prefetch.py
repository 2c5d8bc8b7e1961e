"""Background reader/writer threads: order, real overlap, bounded look-ahead, errors surface, aborts stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from engine.prefetch import BackgroundWriter, Prefetcher, pinned


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
