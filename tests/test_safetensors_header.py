"""The one safetensors header reader (engine.models.safetensors_header): torch-free, and what both the engine's weights
loader and the plugin's model-card box read a file through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ModelError
from engine.models import build_model, read_card, save
from engine.models.safetensors_header import HeaderError, read_header

REPO = Path(__file__).resolve().parent.parent


def test_reader_imports_without_torch() -> None:
    code = ("import sys, engine.models.safetensors_header\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_engine_and_plugin_read_the_same_header(tmp_path: Path) -> None:
    from aligncr_qgis.model_cards import read_card as plugin_card

    model = build_model("aligncr-lite")
    path = save(model, tmp_path / "m.safetensors")
    header = read_header(path)
    state = model.state_dict()
    assert {k: v.shape for k, v in header.tensors.items()} == {k: tuple(v.shape) for k, v in state.items()}
    assert header.parameters == sum(v.numel() for v in state.values())
    card = plugin_card(path)
    assert (card.tensors, card.parameters) == (len(state), header.parameters)
    assert card.card["arch"] == read_card(path).arch == "aligncr-lite"


def test_one_error_for_a_file_that_is_not_safetensors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage, not a header")
    with pytest.raises(HeaderError, match="not a safetensors file"):
        read_header(junk)
    with pytest.raises(ModelError, match="junk.safetensors is not a readable .safetensors weights file"):
        read_card(junk)
