"""The plugin's torch-free model list (``aligncr_qgis.model_list``) against the engine's real registry."""

from __future__ import annotations

from pathlib import Path

from aligncr_qgis.model_list import DEFAULT, engine_default, has_weights, registry_models, scan_registry
from engine.stream.mode import default_model
from tests.helpers_models import engine_models


def test_scan_matches_the_engine_registry() -> None:
    """Names, descriptions and needs_weights read with ast are the ones the engine registers when imported."""
    found = {m.name: m for m in scan_registry()}
    assert sorted(found) == sorted(engine_models())
    for name, spec in engine_models().items():
        assert found[name].description == spec.description and found[name].needs_weights == spec.needs_weights


def test_one_entry_per_model_cache_first() -> None:
    """A cache listing a model twice, and the scan listing it again, still give one entry, with the cache's
    details; models the cache lacks come from the scan; the bundled card marks aligncr-lite as having weights."""
    cache = [{"name": "identity", "params": 0, "needs_weights": False}, {"name": "identity"},
             {"name": "aligncr", "params": 45_500_000, "needs_weights": True}]
    entries = registry_models(cache)
    names = [e["name"] for e in entries]
    assert names[:2] == ["identity", "aligncr"] and len(names) == len(set(names)) == len(engine_models())
    by_name = {e["name"]: e for e in entries}
    assert by_name["aligncr"]["params"] == 45_500_000 and not has_weights(by_name["aligncr"])
    assert has_weights(by_name["identity"]) and has_weights(by_name["gapfill"])
    assert by_name["aligncr-lite"]["bundled_weights"][0].endswith("aligncr-lite.safetensors")
    assert has_weights(by_name["aligncr-lite"])
    assert engine_default(entries) == default_model() and DEFAULT not in names


def test_without_engine_or_weights(tmp_path: Path) -> None:
    """No engine folder: only the cache; an entry without weights is not runnable; the default falls to identity."""
    assert scan_registry(tmp_path) == []
    entries = registry_models([{"name": "aligncr-lite", "needs_weights": True, "bundled_weights": []}], tmp_path)
    assert [e["name"] for e in entries] == ["aligncr-lite"]
    assert engine_default([{"name": "aligncr-lite"}]) == "identity"
