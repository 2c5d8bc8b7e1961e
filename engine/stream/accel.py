"""The inference runner: device placement, mixed precision, channels_last, optional torch.compile, OOM halving.

Why a separate runner: the pipeline only knows "predict this batch of tiles"; how fast that happens depends on
the device, and every speed trick here has a failure mode that must not turn into a failed run:

* ``dtype``: ``auto`` is bf16 autocast on a CUDA GPU that supports it (Ampere and later: the network's convs and
  attention run on tensor cores; bf16 has fp32's exponent range, so no loss scaling or overflow care is needed at
  inference), bf16 on a CPU with native bf16 instructions (AVX-512-BF16 or AMX: oneDNN's bf16 convs there ran
  ``aligncr-lite`` 1.6–1.8× faster than fp32, and the bundled weights' output on the real M3R-CR quartet moved by
  MAE 1.5·10⁻⁴ reflectance, max 2.5·10⁻³ — see benchmarks/README.md), and fp32 everywhere else (emulated bf16 is
  slower than fp32). ``fp32`` runs the module exactly as the plain pipeline did: no autocast context, same memory
  format, so results are bit-identical; tests that assert exactness ask for it. ``fp16`` is CUDA-only (CPU fp16
  kernels are slower than fp32).
* ``channels_last``: NHWC tensors let cuDNN pick tensor-core conv kernels without transposes. ``auto`` enables it
  on CUDA only: on the CPU it changes oneDNN's kernel choice (not bit-identical) and measured no gain for
  ``aligncr-lite`` (see benchmarks/README.md).
* ``compile``: ``torch.compile`` with inductor's on-disk FX-graph cache (``TORCHINDUCTOR_CACHE_DIR``, default
  ``~/.cache/aligncr/inductor``) so the minutes-long first compile is paid once per machine. Compilation happens
  lazily at the first call; if it fails (no C++ compiler, an unsupported op, an old GPU) the runner logs one
  warning and continues eagerly — a slower run, never a failed one. Partial last batches are padded to the batch
  size with copies of their last tile so the compiled graph sees one shape (no recompiles); the padded outputs are
  dropped, and batch items are independent (no BatchNorm statistics at inference), so results do not change.
* CUDA out-of-memory: the batch is split in halves and retried (the cache emptied in between), down to one tile;
  the smaller batch size is kept for the rest of the run and logged once. Out of memory with a single tile is a
  :class:`~engine.errors.ModelError` telling the user to lower ``--tile``.
* Threads: the CPU path uses every core (``torch.set_num_threads(os.cpu_count())``) unless ``threads`` is given
  (Dask workers give each worker its share).
* CPU micro-batches: on the CPU a forward over several tiles is slower per tile than one tile at a time (the
  feature maps of a batch overflow the caches: ``aligncr-lite`` 256² bf16 ran 0.24 Mpix/s at batch 1 and 0.14 at
  batch 4), so the runner feeds the CPU ``cpu_microbatch`` tiles per forward (default 1) whatever ``--batch`` says;
  ``--batch`` still sets how many tiles the pipeline reads and blends at once. Compiled graphs keep the full batch.
* CPU workers: those one-tile forwards run on ``cpu_workers`` Python threads at once (default: one per torch
  thread, at most 4), the torch threads split between them, so each forward runs on its own core(s) instead of
  every forward spreading its many small ops over all cores. torch releases the GIL inside its kernels, and
  ``inference_mode``/``autocast`` are entered per thread. On two AMD EPYC cores a 2048² ``aligncr-lite`` run went
  from 28.8 s (55.8 CPU s) to 22.2 s (41.0 CPU s): less OpenMP synchronisation, and the prefetch threads' work
  fits between the forwards. Tiles are independent, so the output is the same up to float rounding (other
  oneDNN kernels for 1 vs 2 threads: at most 1 DN; identical on that 2048² run); ``cpu_workers=1`` restores the
  single-forward path.
* TF32 for the fp32 islands of a bf16/fp16 CUDA run: autocast leaves some work in fp32 — above all the deformable
  convolutions (torchvision's kernel, and ours, compute in fp32 by design: sampling positions need it), whose
  column GEMMs are 4 % of ``aligncr``'s FLOPs but would run at plain fp32 speed, several times below the tensor
  cores. The runner sets ``torch.set_float32_matmul_precision("high")`` (TF32: 10-bit mantissa, finer than
  bf16's 7) for such runs and restores the previous setting in :meth:`InferenceRunner.close`. ``--dtype fp32``
  keeps full fp32 (the exact reference), and the CPU is untouched. (Not measured yet: no GPU so far.)
* ``backend``: on the CPU the network may run in ONNX Runtime or OpenVINO instead (:mod:`engine.stream.backends`,
  issue 30: their native deformable convolution and fused fp32 graphs run ``aligncr-lite``/``aligncr-res`` tiles
  1.4–1.6× faster on an AVX2 CPU). ``auto`` picks one only where measured to pay (fp32 CPU, a measured network,
  a scene of enough tiles: the pipeline says how many with ``tiles``); ``torch`` keeps this module's path. A
  backend that fails to convert or run is one warning and the rest of the run is PyTorch's.
* Freed memory: on the CPU the runner keeps glibc from unmapping and trimming the forward's 1–30 MB temporaries
  between tiles (:func:`engine.stream.malloc.keep_freed_memory`, ``keep_freed_memory``): ≈ 8 % faster end to end with
  one thread, neutral with two workers. :meth:`InferenceRunner.close` restores glibc's defaults and trims.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.errors import EngineError, ModelError
from engine.stream import backends
from engine.stream.malloc import keep_freed_memory

log = logging.getLogger("engine")

DTYPES = ("auto", "fp32", "bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")
COMPILE_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
DEFAULT_COMPILE_CACHE = Path.home() / ".cache" / "aligncr" / "inductor"

MAX_AUTO_CPU_WORKERS = 4  # more concurrent tiles hold more activations for little gain (measured on 2 cores only)
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Pending:
    """A prediction started by :meth:`InferenceRunner.submit`: ``result()`` waits for it; ``cancel()`` drops the
    tiles not yet started (a failed or cancelled run does not wait for them)."""

    def __init__(self, done: np.ndarray | None = None, futures: list[Future] | None = None) -> None:
        self._done = done
        self._futures = futures or []

    def result(self) -> np.ndarray:
        if self._done is None:
            parts = [f.result() for f in self._futures]
            self._done = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return self._done

    def cancel(self) -> None:
        for f in self._futures:
            f.cancel()


class AccelError(EngineError):
    """A speed option that this machine cannot honour (e.g. ``--dtype fp16`` without a GPU)."""


@dataclass(frozen=True)
class AccelConfig:
    """How to run the network; none of these change the result in fp32 (see the module docstring)."""

    dtype: str = "auto"  # auto | fp32 | bf16 | fp16
    channels_last: str = "auto"  # auto (CUDA only) | on | off
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    compile_cache: Path | None = None  # inductor's on-disk cache; None = $TORCHINDUCTOR_CACHE_DIR or the default
    threads: int | None = None  # CPU threads for torch; None = every core
    prefetch: bool = True  # pipeline: background reader/writer threads (engine.stream.prefetch); False = the naive loop
    cpu_microbatch: int = 1  # tiles per forward on the CPU (see the module docstring); 0 = the whole batch
    cpu_workers: int = 0  # CPU forwards run at once, threads split between them; 0 = auto (min(threads, 4))
    keep_freed_memory: bool = True  # CPU: glibc keeps freed blocks for the next tile (stream.malloc) until close()
    tf32: bool = True  # CUDA bf16/fp16 runs: fp32 islands (deformable conv GEMMs) in TF32; False for the ablation
    backend: str = "auto"  # CPU: auto | torch | onnxruntime | openvino (engine.stream.backends)

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise AccelError(f"--dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.channels_last not in CHANNELS_LAST:
            raise AccelError(f"channels_last must be one of {', '.join(CHANNELS_LAST)}, got '{self.channels_last}'")
        if self.threads is not None and self.threads < 1:
            raise AccelError(f"--threads must be at least 1, got {self.threads}")
        if self.cpu_workers < 0:
            raise AccelError(f"cpu_workers must be 0 (auto) or more, got {self.cpu_workers}")
        if self.backend not in backends.BACKENDS:
            raise AccelError(f"--backend must be one of {', '.join(backends.BACKENDS)}, got '{self.backend}'")
        if self.cpu_microbatch < 0:
            raise AccelError(f"cpu_microbatch must be 0 (whole batch) or more, got {self.cpu_microbatch}")


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 in hardware (AVX-512-BF16 or AMX); False when unknown.

    torch's own probes are private (``torch.cpu._is_avx512_bf16_supported``), so a torch without them simply
    keeps fp32: a missed speed-up, never a slow emulated bf16 path.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(bool(getattr(torch.cpu, p)()) for p in probes if hasattr(torch.cpu, p))
    except Exception:  # a probe that fails means "unknown"
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for ``--dtype name`` on ``device``; raises :class:`AccelError` when it cannot run there."""
    if name not in DTYPES:
        raise AccelError(f"--dtype must be one of {', '.join(DTYPES)}, got '{name}'")
    cuda = device.type == "cuda"
    if name == "auto":
        if cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else torch.float32
    if name == "fp16" and not cuda:
        raise AccelError("--dtype fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise AccelError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16 support; use --dtype fp16")
    return _TORCH_DTYPES[name]


def backend_plan(model: str | None, tiles: int | None, backend: str = "auto", dtype: str = "auto",
                 device: torch.device | None = None) -> backends.Choice:  # fmt: skip
    """Which backend and precision a run of ``model`` over ``tiles`` tiles will use here, and why (``engine info``,
    ``engine env``): the same rules as the runner's."""
    device = device or torch.device("cpu")
    return backends.choose(backend, device, resolve_dtype(dtype, device), model, tiles)


def matmul_precision_for(device: torch.device, dtype: torch.dtype, tf32: bool = True) -> str | None:
    """The float32 matmul precision a run should use (see the module docstring), or None to leave it alone."""
    return "high" if tf32 and device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) else None


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    """``threads`` (None: every core) must be 1 to this machine's core count (issue 25: ``--threads 100000`` aborted
    the process in OpenMP and left its temporary file); one-line :class:`AccelError` before any work. Checked on the
    command line (``run``, ``batch``, ``finetune``); the Python API may oversubscribe on purpose (tests do)."""
    cores = os.cpu_count() or 1
    if threads is not None and not 1 <= threads <= cores:
        raise AccelError(f"{flag} must be 1 to {cores} (the CPU cores of this machine), got {threads}")


def set_threads(threads: int | None) -> int:
    """Give torch ``threads`` CPU threads (default: every core); returns the number set."""
    n = threads or os.cpu_count() or 1
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA (or any torch) out-of-memory error, whichever class this torch version raises."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _compile_cache_dir(config: AccelConfig) -> Path:
    if config.compile_cache is not None:
        return Path(config.compile_cache)
    env = os.environ.get(COMPILE_CACHE_ENV)
    return Path(env) if env else DEFAULT_COMPILE_CACHE


def _compile(module: nn.Module, config: AccelConfig) -> Callable[..., torch.Tensor] | None:
    """``torch.compile(module)`` with the on-disk cache, or None (logged) when compile is unavailable here."""
    if not hasattr(torch, "compile"):
        log.warning("torch.compile is not available in torch %s; running eagerly", torch.__version__)
        return None
    cache = _compile_cache_dir(config)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault(COMPILE_CACHE_ENV, str(cache))
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        return torch.compile(module, mode=config.compile_mode, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - any failure to set up compile means: run eagerly
        log.warning("torch.compile unavailable (%s); running eagerly", exc)
        return None


class InferenceRunner:
    """Runs a model on batches of tiles with the options of an :class:`AccelConfig`.

    ``predict(optical, sar)`` takes (N, B, H, W) and (N, 2, h, w) float32 arrays (or CPU tensors, pinned ones
    are copied asynchronously) and returns (N, B, H, W) float32 numpy predictions clipped to [0, 1], with any
    non-finite value of the network's (NaN, ±inf) as NaN.
    """

    def __init__(self, module: nn.Module, device: torch.device, config: AccelConfig | None = None,
                 tiles: int | None = None) -> None:  # fmt: skip
        self.config = config or AccelConfig()
        self.config.validate()
        self.device = device
        self.dtype = resolve_dtype(self.config.dtype, device)
        self.threads = set_threads(self.config.threads) if device.type == "cpu" else torch.get_num_threads()
        cl = self.config.channels_last
        self.channels_last = cl == "on" or (cl == "auto" and device.type == "cuda")
        self.module = module.eval().to(device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self._eager: Callable[..., torch.Tensor] = self.module
        self._forward: Callable[..., torch.Tensor] = self.module
        self.compiled = False
        if self.config.compile:
            compiled = _compile(self.module, self.config)
            if compiled is not None:
                self._forward = compiled
                self.compiled = True
        self.max_batch: int | None = None  # lowered by OOM halving; None = whatever the caller passes
        self._pool: ThreadPoolExecutor | None = None
        self.cpu_workers = 1
        if device.type == "cpu" and not self.compiled:
            workers = self.config.cpu_workers or min(self.threads, MAX_AUTO_CPU_WORKERS)
            self.cpu_workers = max(1, min(workers, self.threads))
        if self.cpu_workers > 1:
            torch.set_num_threads(max(1, self.threads // self.cpu_workers))
            self._pool = ThreadPoolExecutor(self.cpu_workers, thread_name_prefix="aligncr-cpu")
        self.oom_events = 0
        # tiles: how many tiles the run has (None: unknown, the Python API), for the backend's cost rule
        self.backend = backends.choose(self.config.backend, device, self.dtype, backends.model_name(module), tiles,
                                       self.compiled)  # fmt: skip
        self._backend: backends.Backend | None = None
        self._backend_lock = threading.Lock()
        if self.backend.backend != "torch":
            share = max(1, self.threads // self.cpu_workers)
            self._backend = backends.open_backend(self.backend.backend, self.module, share, self.cpu_workers)
        log.info("network: %s", self.backend.sentence())
        self._previous_matmul_precision: str | None = None
        precision = matmul_precision_for(device, self.dtype, self.config.tf32)
        if precision is not None and torch.get_float32_matmul_precision() != precision:
            self._previous_matmul_precision = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision(precision)
        self._malloc = contextlib.ExitStack()
        self.keeps_freed_memory = device.type == "cpu" and self._malloc.enter_context(
            keep_freed_memory(self.config.keep_freed_memory)
        )

    def describe(self) -> dict[str, object]:
        """What the runner decided, for logs and benchmark records."""
        return {
            "backend": self.backend.backend,
            "backend_reason": self.backend.reason,
            "dtype": "float32" if self._backend is not None else str(self.dtype).removeprefix("torch."),
            "channels_last": self.channels_last,
            "compiled": self.compiled,
            "threads": self.threads,
            "max_batch": self.max_batch,
            "cpu_workers": self.cpu_workers,
            "keep_freed_memory": self.keeps_freed_memory,
            "fp32_matmul": torch.get_float32_matmul_precision(),
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
        non_blocking = self.device.type == "cuda" and t.is_pinned()
        t = t.to(self.device, non_blocking=non_blocking)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _run(self, o: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n = o.shape[0]
        pad = (self.max_batch or n) - n if self.compiled else 0
        if pad > 0:  # one shape for the compiled graph: repeat the last tile, drop its outputs below
            o = torch.cat([o, o[-1:].expand(pad, *o.shape[1:])])
            s = torch.cat([s, s[-1:].expand(pad, *s.shape[1:])])
        backend = self._backend
        if backend is not None:
            try:
                return self._finish(backend.run(o, s), o)
            except backends.BackendError as exc:
                self._fall_back(backend, exc)
        with self._autocast():
            try:
                out = self._forward(o, s)
            except Exception as exc:
                if not self.compiled or is_oom(exc) or isinstance(exc, EngineError):
                    raise
                log.warning("torch.compile failed (%s: %s); running eagerly", type(exc).__name__, exc)
                self._forward, self.compiled = self._eager, False
                out = self._forward(o[:n], s[:n])
        return self._finish(out[:n], o[:n])

    def _finish(self, out: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """The checked, float32, [0, 1]-clipped output of a forward on ``o`` (NaN for any non-finite value)."""
        n = o.shape[0]
        if out.shape != o[:n].shape:
            raise ModelError(f"model returned shape {tuple(out.shape)} for an input of shape {tuple(o[:n].shape)}")
        out = out.float()
        out.masked_fill_(~torch.isfinite(out), float("nan"))  # inf too: the clamp would hide it as 0 or 1
        return out.clamp_(0.0, 1.0)  # NaN stays NaN: the pipeline names the tile that produced it

    def _fall_back(self, backend: backends.Backend, exc: backends.BackendError) -> None:
        """A backend failed: one warning, and PyTorch runs this tile and the rest of the run."""
        with self._backend_lock:
            if self._backend is backend:
                log.warning("%s; running PyTorch instead", exc)
                self._backend = None
                reason = f"{backends.LABELS[self.backend.backend]} failed ({exc}); PyTorch ran instead"
                self.backend = backends.Choice("torch", backends.precision_name(self.dtype), reason)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        """One forward pass on tensors already on the device (no OOM handling, no copy back): for benchmarks."""
        with torch.inference_mode():
            return self._run(self._to_device(optical), self._to_device(sar))

    def _pieces(self, n: int) -> Iterator[slice]:
        step = min(n, self.max_batch or n)
        if self.device.type == "cpu" and not self.compiled and self.config.cpu_microbatch:
            step = min(step, self.config.cpu_microbatch)
        for i in range(0, n, step):
            yield slice(i, min(i + step, n))

    def predict(self, optical: np.ndarray | torch.Tensor, sar: np.ndarray | torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            o_all, s_all = self._to_device(optical), self._to_device(sar)
            if self.compiled and self.max_batch is None:
                self.max_batch = o_all.shape[0]  # the first batch fixes the compiled shape
            outs: list[np.ndarray] = []
            pending = list(self._pieces(o_all.shape[0]))
            if self._pool is not None and len(pending) > 1:  # CPU: no OOM to handle, pieces are independent
                return self._queue(o_all, s_all, pending).result()
            while pending:
                sl = pending.pop(0)
                try:
                    outs.append(self._run(o_all[sl], s_all[sl]).cpu().numpy())
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    size = sl.stop - sl.start
                    if size <= 1:
                        raise ModelError(
                            f"out of GPU memory with a single {tuple(o_all.shape[-2:])} tile: use a smaller --tile"
                        ) from None
                    self._release_cached()
                    half = size // 2
                    self.max_batch = half
                    self.oom_events += 1
                    log.warning("out of GPU memory at batch %d; retrying with batch %d", size, half)
                    pending[:0] = [slice(i, min(i + half, sl.stop)) for i in range(sl.start, sl.stop, half)]
            return np.concatenate(outs) if len(outs) > 1 else outs[0]

    def submit(self, optical: np.ndarray | torch.Tensor, sar: np.ndarray | torch.Tensor) -> Pending:
        """:meth:`predict` started now, its result taken later: with CPU workers each tile is queued on them at once,
        so the pipeline can queue the next chunk's tiles before it blends this one's and no worker waits at a
        batch's or a chunk's end (the last odd tile of each batch left one of two workers idle: ≈ 10 % of a run).
        Elsewhere (one worker, a GPU with its out-of-memory halving) it runs here and now."""
        if self._pool is None:
            return Pending(done=self.predict(optical, sar))
        with torch.inference_mode():
            o_all, s_all = self._to_device(optical), self._to_device(sar)
            return self._queue(o_all, s_all, list(self._pieces(o_all.shape[0])))

    def _queue(self, o_all: torch.Tensor, s_all: torch.Tensor, pieces: list[slice]) -> Pending:
        """Each piece queued on the CPU workers."""
        assert self._pool is not None
        return Pending(futures=[self._pool.submit(self._work, o_all[sl], s_all[sl]) for sl in pieces])

    def _work(self, o: torch.Tensor, s: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():  # thread-local, like autocast (entered in _run)
            return self._run(o, s).numpy()

    def close(self) -> None:
        """Stop the CPU worker threads (if any), give malloc its defaults and torch its matmul precision back."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._malloc.close()
        if self._previous_matmul_precision is not None:
            torch.set_float32_matmul_precision(self._previous_matmul_precision)
            self._previous_matmul_precision = None

    def _release_cached(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
