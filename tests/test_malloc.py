"""glibc malloc settings for CPU inference: in effect inside the block, defaults back after, re-entrant."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from engine.stream import malloc
from engine.stream.accel import AccelConfig, InferenceRunner


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_bytes() -> int:
    lib = malloc._glibc()
    if lib is None or not hasattr(lib, "mallinfo2"):
        pytest.skip("needs glibc ≥ 2.33 (mallinfo2)")
    lib.mallinfo2.restype = _Mallinfo2
    return int(lib.mallinfo2().hblkhd)


def _mmapped_while_holding(nbytes: int) -> int:
    before = _mmapped_bytes()
    block = np.ones(nbytes, dtype=np.uint8)  # numpy takes large buffers from malloc
    grown = _mmapped_bytes() - before
    del block
    return grown


def test_large_blocks_come_from_the_heap_inside_the_block():
    # (After the block a 20 MB block is usually mmapped again, but may legitimately reuse a free heap hole left
    # by earlier tests, so the restoring of the defaults is checked on the calls below instead.)
    with malloc.keep_freed_memory() as active:
        assert active
        assert _mmapped_while_holding(20 * 2**20) < 20 * 2**20


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


def test_nested_and_threaded_blocks_restore_the_defaults_once(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(malloc, "_libc", fake)
    with malloc.keep_freed_memory(), malloc.keep_freed_memory():
        assert fake.calls == [("mallopt", malloc.M_MMAP_THRESHOLD, malloc.RUN_MMAP_THRESHOLD),
                              ("mallopt", malloc.M_TRIM_THRESHOLD, malloc.RUN_TRIM_THRESHOLD)]
    assert fake.calls[2:] == [("mallopt", malloc.M_MMAP_THRESHOLD, malloc.DEFAULT_THRESHOLD),
                              ("mallopt", malloc.M_TRIM_THRESHOLD, malloc.DEFAULT_THRESHOLD), ("trim", 0)]
    fake.calls.clear()
    with malloc.keep_freed_memory(enabled=False) as active:
        assert not active
    assert fake.calls == []


def test_not_glibc_is_a_no_op(monkeypatch):
    monkeypatch.setattr(malloc, "_libc", None)
    with malloc.keep_freed_memory() as active:
        assert not active


def test_cpu_runner_keeps_freed_memory_until_closed(monkeypatch):
    fake = _FakeLibc()
    monkeypatch.setattr(malloc, "_libc", fake)
    model = torch.nn.Conv2d(4, 4, 1)
    runner = InferenceRunner(model, torch.device("cpu"), AccelConfig(dtype="fp32", threads=1))
    assert runner.describe()["keep_freed_memory"] is True
    assert len(fake.calls) == 2
    runner.close()
    assert fake.calls[-1] == ("trim", 0)
    off = InferenceRunner(model, torch.device("cpu"), AccelConfig(dtype="fp32", threads=1, keep_freed_memory=False))
    assert off.describe()["keep_freed_memory"] is False
    off.close()
    assert fake.calls[-1] == ("trim", 0) and len(fake.calls) == 5


def test_refused_settings_are_reported_and_not_undone_twice(monkeypatch):
    fake = _FakeLibc()
    fake.mallopt = lambda param, value: fake.calls.append(("mallopt", param, value)) or 0  # glibc said no
    monkeypatch.setattr(malloc, "_libc", fake)
    with malloc.keep_freed_memory() as active:
        assert not active
        n = len(fake.calls)
    assert len(fake.calls) == n and ("trim", 0) not in fake.calls
