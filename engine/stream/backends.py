"""CPU inference backends beside PyTorch: ONNX Runtime and OpenVINO, each with its native deformable convolution.

Why (issue 30): on a CPU without native bf16 (AVX2 only, most analysts' laptops and desktops) the engine ran fp32
PyTorch, whose eager kernels for ``aligncr``'s many small-channel layers are far from the CPU's peak, and whose
deformable convolution is our pure-torch sampling (:mod:`engine.models.ops.deform_conv`). Both runtimes below load
the network as one graph, fuse its layers in their blocked memory layouts and run the modulated deformable
convolution as one native kernel (ONNX ``DeformConv``, opset 19; OpenVINO ``DeformableConvolution``). Measured end
to end on an AVX2-only 2-core EPYC (benchmarks/README.md, "CPU backends and AVX2-only CPUs", 2048², loaded machine):
PyTorch 33.0, OpenVINO 31.3, ONNX Runtime 27.6 CPU s per output Mpix; outputs within 1e-6 of fp32 PyTorch.

The rules, each a measured fact or a safety net:

* PyTorch stays the reference and the fallback: ``--backend torch`` runs exactly what ran before. A backend that
  is not installed, fails to convert the network or fails at run time is one warning line, and the run goes on
  with PyTorch (a slower run, never a failed one).
* ``auto`` uses a backend only where it was measured to pay: the CPU, fp32 (a CPU with native bf16 keeps
  PyTorch's bf16, which was measured there; the backends' bf16 was not), the networks in :data:`MEASURED`, and a
  scene of at least :data:`MIN_TILES` tiles — converting the network costs 5–25 s the first time, which a small
  scene would not earn back (ONNX Runtime's exported graph is then kept on disk, :mod:`engine.stream.onnx_cache`,
  and a later run of the same weights and tile shape builds its session in ≈ 0.3 s).
* ONNX Runtime before OpenVINO under ``auto``: as fast on ``aligncr-lite``, faster on ``aligncr-res``, a quarter
  of the conversion time (export 4–8 s vs 22–30 s) and the smaller wheel.
* One converted graph per input shape (the tiles of a run share one shape; a scene smaller than a tile has its
  own), converted at the first tile of that shape, under a lock.
* Threads: each of the runner's CPU workers calls the backend with its share of the threads, as it does torch.
"""

from __future__ import annotations

import importlib
import io
import logging
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.errors import EngineError
from engine.models.ops.deform_conv import DCNv2Pack, ModulatedDeformConv2d, deform_conv2d_pure
from engine.stream import onnx_cache

log = logging.getLogger("engine")

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
AUTO_ORDER = ("onnxruntime", "openvino")  # auto's preference among the installed ones (see the module docstring)
MEASURED = frozenset({"aligncr-lite", "aligncr-res"})  # networks whose backends were measured against PyTorch
MIN_TILES = 16  # auto: fewer tiles than this and conversion costs more than the faster tiles save
OPSET = 19  # the first ONNX opset with DeformConv
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # import name → pip name
REQUIRES = {"onnxruntime": ("onnx",)}  # what converting the network for a backend imports besides it (torch.onnx)
LABELS = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


class BackendError(EngineError):
    """A backend that could not load, convert or run the network; the runner falls back to PyTorch."""


@dataclass(frozen=True)
class Choice:
    """Which backend runs the network, at which precision, and why (``engine info``, ``engine env``, the log)."""

    backend: str
    precision: str
    reason: str

    def sentence(self) -> str:
        return f"{LABELS.get(self.backend, self.backend)} {self.precision}: {self.reason}"


def installed(name: str) -> str | None:
    """The version of backend ``name`` when it and what its conversion needs import here, else None (never
    raises)."""
    if name == "torch":
        return torch.__version__
    try:
        module = importlib.import_module(PACKAGES[name])
        for needed in REQUIRES.get(name, ()):
            importlib.import_module(needed)
    except Exception:  # noqa: BLE001 - missing, or a broken install: not usable either way
        return None
    return str(getattr(module, "__version__", "unknown"))


def precision_name(dtype: torch.dtype) -> str:
    """``fp32`` / ``bf16`` / ``fp16``: the names ``--dtype`` takes."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def cpu_kind() -> str:
    """The vector instructions torch's CPU kernels use here (``AVX2``, ``AVX512``, …; ``ATEN_CPU_CAPABILITY`` caps
    it), with ``+bf16`` where bf16 is native; what the backend rules and the benchmarks are keyed on."""
    try:
        kind = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - an old torch: unknown
        kind = "unknown"
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return kind + ("+bf16" if probe is not None and probe() else "")
    except Exception:  # noqa: BLE001
        return kind


def model_name(module: nn.Module) -> str | None:
    """The registry name of ``module`` or of the network a packed-inputs adapter wraps (None: not a registry
    model, e.g. the guard's estimate)."""
    for candidate in (module, getattr(module, "module", None)):
        name = getattr(candidate, "model_name", None)
        if isinstance(name, str):
            return name
    return None


def choose(requested: str, device: torch.device, dtype: torch.dtype, model: str | None, tiles: int | None,
           compile: bool = False) -> Choice:  # fmt: skip
    """The backend for a run (see the module docstring for the rules); ``tiles`` None: not known (the Python API
    outside a pipeline run), where ``auto`` keeps PyTorch."""
    precision = precision_name(dtype)
    if requested not in BACKENDS:
        raise BackendError(f"--backend must be one of {', '.join(BACKENDS)}, got '{requested}'")
    if requested == "torch":
        return Choice("torch", precision, "asked for (--backend torch)")
    if device.type != "cpu":
        return Choice("torch", precision, f"the {device.type.upper()} device runs PyTorch's kernels")
    if compile:
        return Choice("torch", precision, "--compile asks for torch.compile")
    if requested != "auto":
        if installed(requested) is None:
            log.warning("--backend %s: %s is not installed here (pip install %s); running PyTorch",
                        requested, LABELS[requested], PACKAGES[requested])  # fmt: skip
            return Choice("torch", precision, f"{LABELS[requested]} is not installed")
        return Choice(requested, "fp32", "asked for (--backend)")
    if dtype != torch.float32:
        return Choice("torch", precision, "this CPU computes bf16 natively, measured with PyTorch")
    if model not in MEASURED:
        return Choice("torch", precision, "the backends were measured for " + ", ".join(sorted(MEASURED)) + " only")
    if tiles is None or tiles < MIN_TILES:
        return Choice("torch", precision, f"fewer than {MIN_TILES} tiles: converting would cost more than it saves")
    for name in AUTO_ORDER:
        if installed(name) is not None:
            return Choice(name, "fp32", "no native bf16 on this CPU, so fp32, where it measured faster than PyTorch "
                          "(benchmarks/README.md, CPU backends)")  # fmt: skip
    return Choice("torch", precision, "no CPU backend installed (pip install 'aligncr[cpu]' makes CPU runs faster)")


class Backend(ABC):
    """One backend's converted graphs, one per input shape, each built once under a lock; a subclass says how a
    graph is built (:meth:`_build`) and run (:meth:`_infer`)."""

    label = "backend"

    def __init__(self, module: nn.Module, threads: int, workers: int) -> None:
        self.module = module
        self.threads = max(1, threads)
        self.workers = max(1, workers)
        self._graphs: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    @abstractmethod
    def _build(self, optical: torch.Tensor, packed: torch.Tensor) -> Any:
        """The backend's compiled graph of ``self.module`` for inputs of these shapes."""

    @abstractmethod
    def _infer(self, graph: Any, optical: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """``graph`` run on one batch of tiles."""

    def run(self, optical: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        """The network's output for one batch of tiles (CPU float32 tensors in, a float32 tensor out)."""
        key = (tuple(optical.shape), tuple(packed.shape))
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    graph = self._graphs[key] = self._convert(optical, packed)
        try:
            out = self._infer(graph, _numpy(optical), _numpy(packed))
        except Exception as exc:  # noqa: BLE001 - any runtime failure: the runner falls back to PyTorch
            raise BackendError(f"{self.label} failed to run the network: {_first_line(exc)}") from exc
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def _convert(self, optical: torch.Tensor, packed: torch.Tensor) -> Any:
        shape = "×".join(map(str, optical.shape))
        log.info("preparing the network for %s (%s tiles, once per run)", self.label, shape)
        try:
            # the runner predicts in inference mode, whose tensors the tracer cannot record: plain copies
            with torch.inference_mode(False), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the tracer warns at each Python-level shape check (hundreds)
                return self._build(optical.float().clone(), packed.float().clone())
        except Exception as exc:  # noqa: BLE001 - unsupported op, missing library, ...: fall back to PyTorch
            raise BackendError(f"{self.label} could not convert the network: {_first_line(exc)}") from exc


def _numpy(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().numpy())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def export_onnx(module: nn.Module, optical: torch.Tensor, packed: torch.Tensor) -> bytes:
    """``module(optical, packed)`` as ONNX (opset 19, static shapes) by the tracing exporter; each deformable
    convolution is one ``DeformConv`` node (``engine.models.ops.deform_conv._OnnxDeformConv``)."""
    buffer = io.BytesIO()
    torch.onnx.export(module, (optical, packed), buffer, dynamo=False, opset_version=OPSET,
                      input_names=["optical", "packed"], output_names=["out"],
                      autograd_inlining=False)  # fmt: skip  (inlining the DCN's Function broke the exporter)
    return buffer.getvalue()


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime's CPU execution provider, all graph optimisations (its NCHWc layouts included)."""

    label = "ONNX Runtime"

    def _build(self, optical: torch.Tensor, packed: torch.Tensor) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads  # per call: each CPU worker calls with its own share
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared cores: no busy waits
        options.log_severity_level = 3

        def session(data: bytes) -> Any:
            return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

        key = onnx_cache.graph_key(self.module, (optical, packed), OPSET)
        cached = onnx_cache.read(key)
        if cached is not None:
            try:
                graph = session(cached)
                log.info("the network's ONNX graph came from the cache (%s)", onnx_cache.cache_dir())
                return graph
            except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: export again
                log.info("the cached ONNX graph did not load (%s); exporting again", _first_line(exc))
                onnx_cache.forget(key)
        data = export_onnx(self.module, optical, packed)
        graph = session(data)
        onnx_cache.store(key, data)
        return graph

    def _infer(self, graph: Any, optical: np.ndarray, packed: np.ndarray) -> np.ndarray:
        return graph.run(None, {"optical": optical, "packed": packed})[0]


def _dcn_arguments(module: ModulatedDeformConv2d, x: torch.Tensor, offset: torch.Tensor,
                   mask: torch.Tensor | None) -> tuple:  # fmt: skip
    """torchvision's ``deform_conv2d`` schema, which OpenVINO's PyTorch front end turns into its native op; the
    integers as constant tensors (a Python int would not reach the traced node)."""
    ints = (*module.stride, *module.padding, *module.dilation, module.groups, module.deformable_groups)
    flags = (*(torch.tensor(i) for i in ints), torch.tensor(mask is not None))
    return (x, module.weight, offset, mask, module.bias, *flags)


def _dcn_evaluate(module: nn.Module, x, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw, groups, dg,
                  use_mask) -> torch.Tensor:  # noqa: ANN001 - the traced op's arguments  # fmt: skip
    """What the traced op computes while OpenVINO traces (our pure convolution)."""
    pair = lambda a, b: (int(a), int(b))  # noqa: E731
    return deform_conv2d_pure(x, offset, weight, bias, pair(sh, sw), pair(ph, pw), pair(dh, dw),
                              mask if bool(use_mask) else None)  # fmt: skip


def _openvino_extensions() -> list:
    from openvino.frontend.pytorch import ModuleExtension

    def plain(module: ModulatedDeformConv2d, op: Callable, x: torch.Tensor, offset: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        return op(*_dcn_arguments(module, x, offset, mask))

    def packed(module: DCNv2Pack, op: Callable, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        o1, o2, m = torch.chunk(module.conv_offset(feat), 3, dim=1)
        return op(*_dcn_arguments(module, x, torch.cat((o1, o2), 1), torch.sigmoid(m)))

    target = "torchvision::deform_conv2d"
    return [ModuleExtension(DCNv2Pack, target, convert=packed, evaluate=_dcn_evaluate),
            ModuleExtension(ModulatedDeformConv2d, target, convert=plain, evaluate=_dcn_evaluate)]  # fmt: skip


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin: the network converted from PyTorch (its deformable convolutions mapped to the native
    op), static shapes, fp32 inference precision; one stream per CPU worker, one infer request per thread."""

    label = "OpenVINO"

    def __init__(self, module: nn.Module, threads: int, workers: int) -> None:
        super().__init__(module, threads, workers)
        self._local = threading.local()

    def _build(self, optical: torch.Tensor, packed: torch.Tensor) -> Any:
        import openvino as ov

        model = ov.convert_model(self.module, example_input=(optical, packed), extension=_openvino_extensions())
        model.reshape({model.inputs[0]: list(optical.shape), model.inputs[1]: list(packed.shape)})
        config = {"INFERENCE_NUM_THREADS": self.threads * self.workers, "NUM_STREAMS": self.workers,
                  "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}  # fmt: skip
        return ov.Core().compile_model(model, "CPU", config)

    def _infer(self, graph: Any, optical: np.ndarray, packed: np.ndarray) -> np.ndarray:
        per_graph = getattr(self._local, "infer_requests", None)  # one OpenVINO infer request per graph and thread
        if per_graph is None:
            per_graph = self._local.infer_requests = {}
        request = per_graph.get(id(graph))
        if request is None:
            request = per_graph[id(graph)] = graph.create_infer_request()
        request.infer([optical, packed])
        return request.get_output_tensor(0).data.copy()


def open_backend(name: str, module: nn.Module, threads: int, workers: int) -> Backend:
    """Backend ``name`` for ``module`` (called as ``module(optical, packed)``); converts lazily, at the first tile."""
    kinds = {"onnxruntime": OnnxRuntimeBackend, "openvino": OpenVinoBackend}
    if name not in kinds:
        raise BackendError(f"no CPU backend named '{name}'")
    return kinds[name](module, threads, workers)
