"""Keep freed heap memory for reuse during CPU inference (glibc ``mallopt``), and give it back afterwards.

Why: a forward pass of ``aligncr-lite`` on a 256² tile allocates and frees dozens of 1–30 MB temporaries (the
SLFC filter taps, the deformable-conv columns, the window-attention logits). glibc serves blocks above its mmap
threshold from fresh ``mmap`` s and returns them on ``free`` (and trims the heap top), so a forward touches tens
of thousands of new pages that the kernel must fault in and zero. Measured (AMD EPYC, bf16, 2048² scene end to
end, ``benchmarks/bench_inference.py --no-keep-freed-memory`` as the ablation): with one torch thread (``--threads
1``, a Dask worker's setting) 0.119–0.128 vs 0.113–0.115 Mpix/s, ≈ 8 % more; with the default two single-threaded
CPU workers no difference (0.218–0.222 vs 0.218–0.227; why the worker threads' arenas fault less was not
investigated). PyTorch's CPU tuning guide reaches the same end by preloading jemalloc or tcmalloc; an
``LD_PRELOAD`` cannot be set from inside QGIS or a running Python, ``mallopt`` can.

What: while at least one :func:`keep_freed_memory` block is open, blocks up to 32 MiB (glibc's ceiling for the
mmap threshold on 64-bit) come from the heap and freed memory is not trimmed, so the next tile reuses the same
pages. On leaving the last block the defaults' values are restored (128 KiB for both; glibc's dynamic threshold
stays off, which only means it stays at 128 KiB) and ``malloc_trim(0)`` hands the retained memory back — a QGIS
session does not keep a run's peak. Peak RSS during a run is the working set's peak either way; it does not grow
with the scene. Not glibc (macOS, Windows, musl): nothing happens.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator

log = logging.getLogger("engine")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
RUN_MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
RUN_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: trim only above 2 GiB of free heap top, i.e. not in a run
DEFAULT_THRESHOLD = 128 * 2**10  # glibc's documented default for both

_lock = threading.Lock()
_depth = 0
_applied = False  # whether the open blocks' settings took effect
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        _libc = None
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name) if name else None
            if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") and hasattr(
                lib, "gnu_get_libc_version"
            ):
                lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                lib.mallopt.restype = ctypes.c_int
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.malloc_trim.restype = ctypes.c_int
                _libc = lib
        except OSError:
            _libc = None
    return _libc or None


def _set(lib: ctypes.CDLL, param: int, value: int) -> bool:
    return bool(lib.mallopt(param, value))


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, keep freed memory for reuse; yields whether the setting is in effect. Re-entrant and
    thread-safe: the defaults come back when the outermost open block closes."""
    global _depth, _applied
    lib = _glibc() if enabled else None
    if lib is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            _applied = _set(lib, M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD) and _set(
                lib, M_TRIM_THRESHOLD, RUN_TRIM_THRESHOLD
            )
            if not _applied:
                log.debug("mallopt refused the run settings; leaving malloc alone")
                _set(lib, M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
                _set(lib, M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
        _depth += 1
        applied = _applied
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _applied:
                _set(lib, M_MMAP_THRESHOLD, DEFAULT_THRESHOLD)
                _set(lib, M_TRIM_THRESHOLD, DEFAULT_THRESHOLD)
                lib.malloc_trim(0)
