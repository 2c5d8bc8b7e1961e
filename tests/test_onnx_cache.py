"""The on-disk cache of exported ONNX graphs (engine.stream.onnx_cache, issue 30): the key changes with anything
that changes the graph and nothing else, a second backend takes the cached graph (no export) and gives the same
output, a damaged file is exported again, ``off`` keeps nothing, and the cache keeps only the newest graphs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from engine.align.inputs import PackedInputsAdapter
from engine.models import build_model
from engine.stream import backends, onnx_cache

needs_ort = pytest.mark.skipif(backends.installed("onnxruntime") is None, reason="onnxruntime not installed")
pytestmark = pytest.mark.usefixtures("one_thread")


def _adapter(dates: dict[str, float] | None = None, seed: int = 0) -> PackedInputsAdapter:
    torch.manual_seed(seed)
    model = build_model("aligncr-res", num_blocks=1).eval()
    return PackedInputsAdapter(model, 2, ["prior"], [5], dates or {}).eval()


def _inputs(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(1, 4, size, size), torch.rand(1, 7, size, size)


def _key(module: torch.nn.Module, size: int = 32) -> str:
    return onnx_cache.graph_key(module, _inputs(size), backends.OPSET)


def test_the_key_follows_what_the_graph_depends_on():
    base = _adapter()
    assert _key(base) == _key(copy.deepcopy(base)) == _key(_adapter())  # same weights, same settings
    moved = copy.deepcopy(base)
    with torch.no_grad():
        next(moved.parameters()).view(-1)[0] += 1e-3
    assert _key(moved) != _key(base)  # one weight
    assert _key(base, size=48) != _key(base)  # the tile shape
    assert _key(_adapter({"date_prev": -3.0})) != _key(_adapter({"date_prev": -4.0}))  # a date baked into the graph
    assert _key(copy.deepcopy(base).train()) != _key(base)  # train/eval mode
    other = _adapter()
    other.module.cfg = dataclasses.replace(other.module.cfg, use_align=False)  # a setting, weights unchanged
    assert _key(other) != _key(base)


def _backend_output(module: torch.nn.Module) -> torch.Tensor:
    optical, packed = _inputs()
    return backends.open_backend("onnxruntime", module, 1, 1).run(optical, packed)


@needs_ort
def test_a_second_backend_takes_the_cached_graph(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_cache.ENV, str(tmp_path))
    module = _adapter()
    first = _backend_output(module)
    assert len(list(tmp_path.glob("*.onnx"))) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported although the graph was cached")

    monkeypatch.setattr(backends, "export_onnx", no_export)
    second = _backend_output(_adapter())  # a new run: a new module with the same weights
    assert torch.equal(first, second)
    with torch.no_grad():
        reference = module.module(*_split(_inputs()))
    assert (second - reference).abs().max() < 1e-4


def _split(inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    optical, packed = inputs
    return optical, packed[:, :2], packed[:, 2:]


@needs_ort
def test_a_damaged_cached_graph_is_exported_again(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_cache.ENV, str(tmp_path))
    module = _adapter()
    key = _key(module)
    (tmp_path / f"{key}.onnx").write_bytes(b"not an onnx graph")
    out = _backend_output(module)
    assert out.shape == (1, 4, 32, 32)
    assert onnx_cache.read(key) != b"not an onnx graph"  # replaced by the fresh export
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary left


def test_off_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_cache.ENV, "off")
    assert onnx_cache.cache_dir() is None
    onnx_cache.store("abc", b"graph")
    assert onnx_cache.read("abc") is None


def test_the_cache_keeps_the_newest_graphs(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_cache.ENV, str(tmp_path / "cache"))
    import os

    for i in range(onnx_cache.KEEP):
        onnx_cache.store(f"k{i}", b"x")
        os.utime(tmp_path / "cache" / f"k{i}.onnx", (1000 + i, 1000 + i))
    onnx_cache.read("k0")  # used again: the most recent now
    for name in ("new1", "new2"):
        onnx_cache.store(name, b"x")
    kept = {p.stem for p in (tmp_path / "cache").glob("*.onnx")}
    assert len(kept) == onnx_cache.KEEP
    assert {"k0", "new1", "new2"} <= kept and not {"k1", "k2"} & kept


def test_an_unwritable_cache_does_not_fail_the_run(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(onnx_cache.ENV, str(blocker / "cache"))
    onnx_cache.store("abc", b"graph")  # logged, not raised
    assert onnx_cache.read("abc") is None
