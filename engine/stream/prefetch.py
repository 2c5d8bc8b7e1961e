"""Background reader and writer threads, so raster I/O overlaps the network's compute.

Why threads (not processes): GDAL reads/decompression, numpy normalisation and GeoTIFF DEFLATE encoding all
release the GIL, as does torch's compute, so a reader thread preparing chunk *k+1* and a writer thread encoding
chunk *k−1* run truly in parallel with the network on chunk *k* — without pickling arrays between processes.

Memory stays flat: both queues are bounded (``depth`` items), so at most ``depth`` chunks wait on each side
whatever the scene size. Each rasterio dataset is used by one thread only (the reader thread owns the inputs,
the writer thread the output), which is what GDAL's thread-safety rules ask for.

Errors never get lost: an exception in the reader is re-raised in the consumer at the item it failed on; an
exception in the writer is re-raised at the next :meth:`BackgroundWriter.submit` or at :meth:`~BackgroundWriter
.close`. Leaving the ``with`` block on an error (or a user cancel) stops both threads without waiting for the
remaining work, so a cancel still takes effect within one tile batch.

:func:`pinned` gives page-locked host tensors when the target is a CUDA device, so the host→GPU copy of a batch
is asynchronous (``non_blocking=True``) and overlaps the previous batch's kernels.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np
import torch

A = TypeVar("A")
T = TypeVar("T")

_DONE = object()
_POLL_S = 0.1
_START_GRACE_S = 1.0  # how long close() waits for a thread whose start() was interrupted to say it started


class _Failure:
    """Carries an exception from a worker thread to the consumer."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """``q.put`` that gives up when ``stop`` is set (the consumer went away); returns False then."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _join(thread: threading.Thread) -> None:
    """``thread.join()``, also when the ``start()`` that launched it was interrupted before the new thread said it
    had started — a signal handler raising in the waiting caller (``engine.cli`` turns SIGTERM into an exception)
    left ``join`` refusing with "cannot join thread before it is started", which hid the signal behind a traceback
    and exit code 1. The thread exists and says so within moments; if it never does, there is nothing to wait for."""
    deadline = time.monotonic() + _START_GRACE_S
    while True:
        try:
            thread.join()
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


class Prefetcher(Generic[A, T]):
    """Iterate ``produce(item)`` over ``items``, computed up to ``depth`` items ahead in a background thread.

    ``with Prefetcher(chunks, read_chunk, depth=1) as results: for r in results: ...`` yields results in order.
    """

    def __init__(self, items: Iterable[A], produce: Callable[[A], T], depth: int = 1, name: str = "reader") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._items = items
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"aligncr-{name}", daemon=True)
        self._started = False

    def _work(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                if not _put(self._queue, self._produce(item), self._stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            _put(self._queue, _Failure(exc), self._stop)
            return
        _put(self._queue, _DONE, self._stop)

    def __iter__(self) -> Iterator[T]:
        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item

    def close(self) -> None:
        """Stop the thread (abandoning work not yet consumed) and wait for it."""
        self._stop.set()
        if self._started:
            _join(self._thread)

    def __enter__(self) -> Prefetcher[A, T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BackgroundWriter:
    """Calls ``write(*args)`` for each :meth:`submit` in a background thread, in submission order.

    ``close()`` (or a clean exit of the ``with`` block) waits until everything submitted is written and re-raises
    a write error; an exit by exception abandons what is still queued.
    """

    def __init__(self, write: Callable[..., Any], depth: int = 2, name: str = "writer") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"aligncr-{name}", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            if self._error is not None or self._stop.is_set():
                continue  # drain without writing after a failure or an abort
            try:
                self._write(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the submitting thread
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, *args: Any) -> None:
        self._raise_if_failed()
        if not self._thread.is_alive():
            raise RuntimeError("background writer is closed")
        _put(self._queue, args, self._stop)
        self._raise_if_failed()

    def close(self) -> None:
        """Finish every submitted write, stop the thread, re-raise a write error."""
        if self._thread.is_alive():
            _put(self._queue, _DONE, self._stop)
            self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without finishing queued writes (the output is being discarded anyway)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def pinned(array: np.ndarray, device: torch.device) -> np.ndarray | torch.Tensor:
    """``array`` as a page-locked CPU tensor when ``device`` is CUDA (for async copies), else unchanged."""
    if device.type != "cuda":
        return array
    return torch.from_numpy(np.ascontiguousarray(array)).pin_memory()
