"""``python -m engine env [--json]``: what this interpreter can run the engine with.

The QGIS plugin's "Check environment" button runs this in the interpreter the user picked, because QGIS's own
Python usually lacks torch and rasterio and the user needs to know *which* interpreter is missing *what*, and the
exact command that fixes it. Every probe is wrapped: a missing or broken package is reported, never raised, so the
report itself always comes out. The CUDA devices listed here are what the plugin offers in its device picker.

No Qt here (the engine never imports Qt), and nothing heavier than the imports being probed. Run it as
``python -m engine.commands.env --json`` when the interpreter may lack rasterio/torch (see :func:`main`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

NAME = "env"
HELP = "report Python, torch, CUDA devices, rasterio/GDAL and numpy versions (for the QGIS plugin)"

# What `python -m engine run` needs, as pip requirement strings (numpy<2: numpy 2 breaks Debian's osgeo bindings).
REQUIRED: dict[str, str] = {
    "torch": "torch",
    "numpy": "numpy<2",
    "rasterio": "rasterio",
    "skimage": "scikit-image",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
}


# Without the trained cloud detector (a run says so once as well).
CLOUD_RULE = "hand-made brightness rule (no trained detector installed: pip install 'aligncr[masks]')"


@dataclass
class CudaDevice:
    index: int
    name: str
    total_mb: int
    free_mb: int | None  # None when the driver refuses mem_get_info (e.g. busy MIG slice)


@dataclass
class EnvReport:
    python: str
    executable: str
    platform: str
    packages: dict[str, str | None] = field(default_factory=dict)  # import name → version, None if missing
    errors: dict[str, str] = field(default_factory=dict)  # import name → one-line import error
    torch_threads: int | None = None
    cuda_available: bool = False
    cuda_version: str | None = None
    cuda_devices: list[CudaDevice] = field(default_factory=list)
    gdal: str | None = None  # GDAL bundled with rasterio (not QGIS's system GDAL)
    # the trained cloud detector a run without a mask uses ("ukis-csmask 1.0.0"); None: the hand-made rule
    cloud_detector: str | None = None
    ok: bool = False
    install_command: str | None = None
    # issue 30: the CPU inference backends installed here, and what a run of the default model on a large scene will
    # use (backend, precision, why, the CPU's vector instructions); None where torch or the engine does not import
    backends: dict[str, str | None] = field(default_factory=dict)
    inference: dict[str, str] | None = None


def _probe(name: str) -> tuple[Any | None, str | None]:
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # noqa: BLE001 - any import failure is reportable (ImportError, OSError from .so, ...)
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def collect() -> EnvReport:
    """Probe the current interpreter; never raises for a missing or broken package."""
    rep = EnvReport(
        python=platform.python_version(),
        executable=sys.executable,
        platform=platform.platform(terse=True),
    )
    modules: dict[str, Any] = {}
    for name in REQUIRED:
        mod, err = _probe(name)
        if mod is None:
            rep.packages[name] = None
            rep.errors[name] = err or "not importable"
        else:
            modules[name] = mod
            rep.packages[name] = str(getattr(mod, "__version__", "unknown"))
    torch = modules.get("torch")
    if torch is not None:
        rep.torch_threads = int(torch.get_num_threads())
        try:
            rep.cuda_available = bool(torch.cuda.is_available())
            rep.cuda_version = torch.version.cuda
            if rep.cuda_available:
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    try:
                        free, _total = torch.cuda.mem_get_info(i)
                        free_mb: int | None = int(free // 2**20)
                    except RuntimeError:
                        free_mb = None
                    rep.cuda_devices.append(CudaDevice(i, props.name, int(props.total_memory // 2**20), free_mb))
        except Exception as exc:  # noqa: BLE001 - a broken driver must not hide the rest of the report
            rep.errors["cuda"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if torch is not None:
        _inference(rep)
    rasterio = modules.get("rasterio")
    if rasterio is not None:
        rep.gdal = str(getattr(rasterio, "__gdal_version__", None))
    numpy = modules.get("numpy")
    if numpy is not None and int(str(numpy.__version__).split(".")[0]) >= 2:
        rep.errors["numpy"] = f"numpy {numpy.__version__} is too new (numpy 2 breaks the GDAL Python bindings)"
    rep.cloud_detector = _cloud_detector()
    missing = [REQUIRED[name] for name in REQUIRED if name in rep.errors]
    rep.ok = not missing
    if missing:
        reqs = " ".join(shlex.quote(req) for req in missing)
        if _externally_managed():
            # Debian's /usr/bin/python3 refuses pip (PEP 668): a venv that still sees QGIS's packages is the fix.
            rep.install_command = (
                f"{shlex.quote(sys.executable)} -m venv --system-site-packages ~/aligncr-venv && "
                f"~/aligncr-venv/bin/python -m pip install {reqs}   "
                "(then pick ~/aligncr-venv/bin/python in the Align-CR dialog's Python field, or press its "
                "Install engine…)"
            )
        else:
            rep.install_command = f"{shlex.quote(sys.executable)} -m pip install {reqs}"
    return rep


def _cloud_detector() -> str | None:
    """"ukis-csmask VERSION" when the optional ``masks`` extra is installed, else None."""
    from engine.config import trained_detector_version

    version = trained_detector_version()
    return None if version is None else f"ukis-csmask {version}"


def _inference(rep: EnvReport) -> None:
    """``rep.backends`` and ``rep.inference``: which backend and precision ``engine run`` will use here and why
    (:func:`engine.stream.accel.backend_plan`, for the default model on a scene large enough for a backend to pay)."""
    try:
        from engine.stream import accel, backends, mode

        rep.backends = {name: backends.installed(name) for name in backends.AUTO_ORDER}
        model = mode.default_model("best")
        choice = accel.backend_plan(model, backends.MIN_TILES)
        rep.inference = {"model": model, "backend": choice.backend, "precision": choice.precision,
                         "reason": choice.reason, "cpu": backends.cpu_kind(), "sentence": choice.sentence()}
    except Exception as exc:  # noqa: BLE001 - the report must come out whatever is broken
        rep.errors["inference"] = f"{type(exc).__name__}: {exc}".splitlines()[0]


def _externally_managed() -> bool:
    """PEP 668: a system interpreter whose pip refuses to install packages."""
    import sysconfig
    from pathlib import Path

    return sys.prefix == sys.base_prefix and (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").exists()


def format_text(rep: EnvReport) -> str:
    lines = [f"Python {rep.python} ({rep.executable}) on {rep.platform}"]
    for name, version in rep.packages.items():
        lines.append(f"  {name:<12} {version or 'MISSING: ' + rep.errors.get(name, '')}")
        if version and name in rep.errors:
            lines.append(f"  {'':<12} problem: {rep.errors[name]}")
    if rep.gdal:
        lines.append(f"  GDAL (rasterio) {rep.gdal}")
    if rep.packages.get("torch"):
        lines.append(f"  CPU threads  {rep.torch_threads}")
        if rep.cuda_devices:
            for d in rep.cuda_devices:
                free = f"{d.free_mb} MiB free of " if d.free_mb is not None else ""
                lines.append(f"  cuda:{d.index}       {d.name}, {free}{d.total_mb} MiB")
        else:
            lines.append("  CUDA         no usable GPU (the engine will run on the CPU)")
        if "cuda" in rep.errors:
            lines.append(f"  CUDA error   {rep.errors['cuda']}")
        for name, version in rep.backends.items():
            lines.append(f"  {name:<12} {version or 'not installed (optional: faster CPU runs)'}")
        if rep.inference:
            inf = rep.inference
            lines.append(f"  network      {inf['model']} on this {inf['cpu']} CPU: {inf['sentence']}")
    lines.append(f"  clouds       {'trained detector, ' + rep.cloud_detector if rep.cloud_detector else CLOUD_RULE}")
    if rep.ok:
        lines.append("OK: this interpreter can run the engine.")
    else:
        lines.append("NOT READY: install the missing packages with")
        lines.append(f"  {rep.install_command}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (what the QGIS plugin reads)")


def run(args: argparse.Namespace) -> int:
    rep = collect()
    if args.json:
        print(json.dumps(asdict(rep)))
    else:
        print(format_text(rep))
    # Exit 0 even when packages are missing: the report *is* the answer, and the caller reads `ok`.
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.commands.env [--json]``: the same report without going through :mod:`engine.cli`.

    ``engine.cli`` imports every sub-command module to build its parser, and some import rasterio or torch at
    module level — so in exactly the interpreter this report is for (one lacking them), ``python -m engine env``
    dies with an ImportError before it can explain anything. This entry point imports nothing but the standard
    library; the QGIS plugin's "Check environment" uses it.
    """
    parser = argparse.ArgumentParser(prog="python -m engine.commands.env", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
