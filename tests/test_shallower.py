"""training.shallower: a network cut to its first AlignFuse blocks keeps every tensor it shares with the deeper one,
and the global fusion reads only those blocks' outputs."""

from __future__ import annotations

import pytest
import torch

from engine.models import build_model, load, read_card, save
from training.shallower import make_shallower


@pytest.fixture()
def deeper(tmp_path):
    torch.manual_seed(0)
    model = build_model("aligncr-res", num_blocks=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model, save(model, tmp_path / "deep.safetensors", {"training_data": "synthetic", "sar_units": "db"})


def test_the_first_blocks_and_the_shared_parts_are_copied(tmp_path, deeper):
    model, path = deeper
    out = make_shallower(path, 2, tmp_path / "shallow.safetensors")
    shallow, card = load(out)
    assert shallow.cfg.num_blocks == 2 and len(shallow.RDBs) == 2
    assert card.training_data == "synthetic" and "first 2 of 3" in card.notes
    deep_state, state = model.state_dict(), shallow.state_dict()
    g0 = model.cfg.num_feat
    for key, value in state.items():
        if key == "GFF.0.weight":
            assert torch.equal(value, deep_state[key][:, : 2 * g0])  # the fusion reads blocks 0 and 1 only
        else:
            assert torch.equal(value, deep_state[key]), key
    assert not any(k.startswith(("RDBs.2.", "SFAlign.2.", "DF.2.")) for k in state)
    assert read_card(out).config["num_blocks"] == 2


def test_the_block_count_must_be_smaller(tmp_path, deeper):
    _, path = deeper
    with pytest.raises(SystemExit, match="between 1 and 2"):
        make_shallower(path, 3, tmp_path / "same.safetensors")
