"""Shared pytest fixtures: tiny synthetic rasters (torchgeo habit) and the optional ../shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the project; ALIGNCR_SHARED_DATA points elsewhere (the GPU machine gets a copy of the working
# tree only, so benchmarks/gpu_session.sh carries the small M3R-CR sample in an ignored folder and sets it).
SHARED_DATA = Path(os.environ.get("ALIGNCR_SHARED_DATA") or ROOT.parent / "shared" / "data")

# Two CPU cores in CI: keep torch from oversubscribing them — two threads in one pytest process, one in each of
# pytest-xdist's workers (scripts/test.sh runs one per core).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it are skipped (with the reason) when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (reference data lives beside the project, not in it)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _fp32_on_every_cpu(monkeypatch):
    """In-process runs use fp32 and one forward at a time on the CPU, whatever the CI machine is.

    ``--dtype auto`` picks bf16 on CPUs with native bf16 (engine.stream.accel); many tests assert bit-exact results
    against a plain fp32 call, and CI machines differ. The automatic choice itself is tested in test_accel.py.
    """
    import engine.stream.accel

    monkeypatch.setattr(engine.stream.accel, "cpu_has_native_bf16", lambda: False)
    # One CPU forward at a time, so test models that record their calls see them in order; the concurrent CPU
    # workers are tested explicitly (test_accel.py, test_pipeline.py).
    monkeypatch.setattr(engine.stream.accel, "MAX_AUTO_CPU_WORKERS", 1)


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache_in_a_temporary(tmp_path_factory):
    """Graphs exported by tests are cached in a folder of this test session, never in the user's ~/.cache
    (engine.stream.onnx_cache); tests of the cache itself point it elsewhere."""
    from engine.stream import onnx_cache

    before = os.environ.get(onnx_cache.ENV)
    os.environ[onnx_cache.ENV] = str(tmp_path_factory.mktemp("onnx-cache"))
    yield
    if before is None:
        os.environ.pop(onnx_cache.ENV, None)
    else:
        os.environ[onnx_cache.ENV] = before


@pytest.fixture(autouse=True)
def _rule_unless_asked(request, monkeypatch):
    """Runs without a mask take their cloud from the hand-made rule, as where the ``masks`` extra is absent, whether
    or not it is installed here: the many tests about something else keep their (synthetic) clouds and their speed.
    A test marked ``trained_detector`` sees the installed one (engine.sources.masks.trained_detector_version)."""
    if request.node.get_closest_marker("trained_detector"):
        return
    import engine.sources.masks

    monkeypatch.setattr(engine.sources.masks, "trained_detector_version", lambda: None)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny convs: on a shared 2-core box they run ~10x faster than with
    two contending threads. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
