"""Weight files: round trip, cards, every refusal, and the official-checkpoint importer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import ModelError
from engine.models import ModelCard, build_model, import_official, load, read_card, save
from engine.models.weights import CARD_KEY, map_official_state_dict

SMALL = {"num_blocks": 1, "fe_blocks": 1}


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    model = build_model("aligncr-lite", **SMALL).eval()
    # Non-trivial offsets so the round trip exercises the deformable path, not just a zero-offset conv.
    for m in model.modules():
        if hasattr(m, "conv_offset"):
            torch.nn.init.normal_(m.conv_offset.weight, std=0.01)
    return model


@pytest.fixture()
def saved(tmp_path, small_model) -> Path:
    return save(small_model, tmp_path / "m.safetensors", {"training_data": "synthetic", "metrics": {"psnr": 1.5}})


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 4, 21, 26, generator=g), torch.rand(1, 2, 7, 9, generator=g)


def test_round_trip_is_bit_exact(saved, small_model):
    model, card = load(saved)
    assert not model.training
    optical, sar = _inputs()
    with torch.no_grad():
        assert torch.equal(model(optical, sar), small_model(optical, sar))
    assert card.arch == "aligncr-lite"
    assert card.config["num_blocks"] == 1 and card.config["pyramid_channels"] == [32, 48, 64]
    assert card.metrics == {"psnr": 1.5} and card.training_data == "synthetic"
    assert card.engine_version and card.created


def test_read_card_needs_no_tensors(saved):
    card = read_card(saved)
    assert isinstance(card, ModelCard)
    assert card.bands == ["blue", "green", "red", "nir"] and card.sar_bands == ["VV", "VH"]
    assert card.sar_units == "db"
    assert card.normalisation_config().vh_range == (-32.5, 0.0)


def test_dsen2cr_round_trip(tmp_path):
    model = build_model("dsen2cr-lite").eval()
    path = save(model, tmp_path / "d.safetensors")
    loaded, card = load(path)
    optical, sar = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(optical, sar), model(optical, sar))
    assert card.arch == "dsen2cr-lite"


def _rewrite(src: Path, dst: Path, tensors=None, card=None, drop_card=False) -> Path:
    t = load_file(str(src)) if tensors is None else tensors
    meta = {"format": "pt"}
    if not drop_card:
        meta[CARD_KEY] = json.dumps(card if card is not None else read_card(src).to_dict())
    save_file(t, str(dst), metadata=meta)
    return dst


def test_refuses_non_safetensors_and_pickles(tmp_path, small_model):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage, not a header")
    with pytest.raises(ModelError, match="not a readable .safetensors"):
        load(junk)
    pth = tmp_path / "model.pth"
    torch.save(small_model.state_dict(), pth)
    with pytest.raises(ModelError, match="not a readable .safetensors"):
        load(pth)
    with pytest.raises(ModelError, match="not found"):
        load(tmp_path / "absent.safetensors")


def test_refuses_missing_card_and_bad_cards(tmp_path, saved):
    with pytest.raises(ModelError, match="no model card"):
        load(_rewrite(saved, tmp_path / "a.safetensors", drop_card=True))
    card = read_card(saved).to_dict()
    with pytest.raises(ModelError, match="unknown model 'nonsense'"):
        load(_rewrite(saved, tmp_path / "b.safetensors", card={**card, "arch": "nonsense"}))
    with pytest.raises(ModelError, match="no config option"):
        load(_rewrite(saved, tmp_path / "c.safetensors", card={**card, "config": {**card["config"], "zzz": 1}}))
    bad_json = tmp_path / "d.safetensors"
    save_file(load_file(str(saved)), str(bad_json), metadata={CARD_KEY: "{not json"})
    with pytest.raises(ModelError, match="not valid JSON"):
        read_card(bad_json)


def test_refuses_missing_extra_and_misshapen_tensors(tmp_path, saved):
    tensors = load_file(str(saved))
    key = "UPNet.2.weight"
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(ModelError, match=r"missing.*UPNet\.2\.weight"):
        load(_rewrite(saved, tmp_path / "a.safetensors", tensors=missing))
    with pytest.raises(ModelError, match=r"unexpected.*extra\.weight"):
        load(_rewrite(saved, tmp_path / "b.safetensors", tensors={**tensors, "extra.weight": torch.zeros(1)}))
    with pytest.raises(ModelError, match="wrong shape"):
        load(_rewrite(saved, tmp_path / "c.safetensors", tensors={**tensors, key: torch.zeros(4, 32, 1, 1)}))
    # A card saying "paper config" over lite tensors: the mismatch is caught, not silently half-loaded.
    card = read_card(saved).to_dict()
    with pytest.raises(ModelError):
        load(_rewrite(saved, tmp_path / "d.safetensors", card={**card, "config": {**card["config"], "num_feat": 48,
                                                                                       "pyramid_channels": [48, 64]}}))


def test_giant_card_over_small_file_is_refused_before_allocating(tmp_path, saved):
    # ~10^11 parameters if materialised; refused from the header (meta-device skeleton), instantly.
    card = read_card(saved).to_dict()
    card["config"] = {**card["config"], "num_feat": 65536, "pyramid_channels": [65536, 65536, 65536],
                      "num_heads": 8, "deformable_groups": 8}
    with pytest.raises(ModelError, match="wrong shape"):
        load(_rewrite(saved, tmp_path / "g.safetensors", card=card))


def test_float_parameters_stored_as_integers_are_refused(tmp_path, saved):
    tensors = load_file(str(saved))
    tensors["UPNet.2.weight"] = tensors["UPNet.2.weight"].to(torch.int32)
    with pytest.raises(ModelError, match="non-float"):
        load(_rewrite(saved, tmp_path / "i.safetensors", tensors=tensors))


def test_save_needs_a_registry_name(tmp_path):
    model = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ModelError, match="registry name"):
        save(model, tmp_path / "x.safetensors")


# --- official checkpoints ----------------------------------------------------------------------------------------


def _officialise(model: torch.nn.Module, feat_hw: int = 80) -> dict[str, torch.Tensor]:
    """A state dict as the official training code writes it (facts read from zhu-xlab/M3R-CR): DataParallel
    ``module.`` prefix, ``torch.nn.utils.weight_norm``'s ``weight_g``/``weight_v``, persistent
    ``relative_position_index`` buffers and, on odd (shifted) blocks, a size-specific ``attn_mask``."""
    out = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"\.parametrizations\.weight\.original0$", ".weight_g", k)
        k = re.sub(r"\.parametrizations\.weight\.original1$", ".weight_v", k)
        out["module." + k] = v.clone()
    cfg = model.cfg
    n_win = (feat_hw // cfg.window_size) ** 2
    for i in range(cfg.num_blocks):
        p = f"module.RDBs.{i}.SwinTransformerBlock"
        out[f"{p}.attn.relative_position_index"] = torch.zeros(cfg.window_size**2, cfg.window_size**2,
                                                               dtype=torch.long)
        if i % 2 == 1:
            out[f"{p}.attn_mask"] = torch.zeros(n_win, cfg.window_size**2, cfg.window_size**2)
    return out


def test_official_names_and_shapes_of_the_paper_network_map_onto_ours():
    with torch.device("meta"):
        model = build_model("aligncr")
    official = _officialise(model)
    # Anchors read from the official code: names and shapes we must accept verbatim.
    anchors = {
        "module.SFE_conv.weight": (96, 16, 3, 3),
        "module.SFE_conv_SAR.weight": (96, 8, 3, 3),
        "module.SFE_module.0.body.0.weight_g": (576, 1, 1, 1),
        "module.SFE_module.4.body.3.weight_v": (96, 76, 3, 3),
        "module.SFAlign.5.src_L3_conv1.weight": (384, 192, 3, 3),
        "module.SFAlign.0.ref_latlayer1.weight": (96, 192, 1, 1),
        "module.SFAlign.0.pcd_align.dcn_pack.l3.conv_offset.weight": (216, 96, 3, 3),
        "module.SFAlign.0.pcd_align.cas_dcnpack.weight": (96, 96, 3, 3),
        "module.RDBs.0.convs.4.conv_SAR.0.weight": (48, 96 + 4 * 48, 3, 3),
        "module.RDBs.0.LFF.weight": (96, 336, 3, 3),
        "module.RDBs.0.SwinTransformerBlock.attn.relative_position_bias_table": (225, 8),
        "module.RDBs.0.SwinTransformerBlock.attn.attn_fuse_1x1conv.weight": (8, 8, 1, 1),
        "module.RDBs.1.SwinTransformerBlock.attn_mask": (100, 64, 64),
        "module.RDBs.3.SwinTransformerBlock.mlp_SAR.fc1.weight": (384, 96),
        "module.DF.0.fac_warp.3.0.weight": (2400, 96, 1, 1),
        "module.sar_fuse_1x1conv.5.weight": (96, 96, 1, 1),
        "module.GFF.0.weight": (96, 576, 1, 1),
        "module.UPNet.0.weight": (256, 96, 3, 3),
        "module.UPNet.2.weight": (4, 64, 3, 3),
    }
    for k, shape in anchors.items():
        assert tuple(official[k].shape) == shape, k
    mapped = map_official_state_dict(official, model)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def _official_checkpoint(tmp_path: Path, model: torch.nn.Module) -> Path:
    path = tmp_path / "30_net_CR.pth"
    torch.save({"network": _officialise(model, feat_hw=16), "optimizer": {}, "epoch": 30, "lr_scheduler": {}}, path)
    return path


def test_import_official_reproduces_the_network(tmp_path, small_model):
    src = _official_checkpoint(tmp_path, small_model)
    out = import_official(src, tmp_path / "imported.safetensors", arch="aligncr-lite",
                          card={"config": {**SMALL}})
    model, card = load(out)
    optical, sar = _inputs()
    with torch.no_grad():
        assert torch.equal(model(optical, sar), small_model(optical, sar))
    assert "epoch 30" in card.notes and "M3R-CR" in card.training_data


def test_import_official_folds_weight_norm_when_the_target_has_none(tmp_path, small_model):
    src = _official_checkpoint(tmp_path, small_model)
    out = import_official(src, tmp_path / "folded.safetensors", arch="aligncr-lite",
                          card={"config": {**SMALL, "weight_norm": False}})
    model, _ = load(out)
    assert not [k for k in model.state_dict() if "parametrizations" in k]
    optical, sar = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(optical, sar), small_model(optical, sar), rtol=1e-5, atol=1e-5)


def test_import_official_refusals(tmp_path, small_model):
    not_ckpt = tmp_path / "x.pth"
    torch.save({"something": "else"}, not_ckpt)
    with pytest.raises(ModelError, match="no 'network'"):
        import_official(not_ckpt, tmp_path / "o.safetensors", arch="aligncr-lite")
    wrong_arch = _official_checkpoint(tmp_path, small_model)
    with pytest.raises(ModelError, match="missing"):
        import_official(wrong_arch, tmp_path / "o.safetensors", arch="aligncr-lite")  # default D=3 ≠ checkpoint's 1


def test_models_command_lists_counts_and_bundled_weights(tmp_path, saved, capsys):
    from engine.cli import main
    from engine.commands.models import collect

    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "aligncr-lite.safetensors").write_bytes(saved.read_bytes())
    (folder / "broken.safetensors").write_bytes(b"nope")
    report = collect(folder)
    by_name = {m["name"]: m for m in report["models"]}
    assert by_name["aligncr"]["params_paper_convention"] == pytest.approx(43.53e6, rel=0.03)
    assert by_name["aligncr-lite"]["bundled_weights"] == [str(folder / "aligncr-lite.safetensors")]
    assert by_name["dsen2cr"]["bundled_weights"] == []
    broken = [w for w in report["weights"] if w["file"].endswith("broken.safetensors")]
    assert broken and "not a readable" in broken[0]["error"]
    assert main(["models", "--weights-dir", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "aligncr-lite" in text and "bundled weights" in text and "UNUSABLE" in text


def test_models_command_imports_official(tmp_path, small_model, capsys):
    from engine.cli import main

    src = _official_checkpoint(tmp_path, small_model)
    # The CLI imports with the arch's default config: a D=1 checkpoint for default aligncr-lite (D=3) is refused.
    assert main(["models", "--import-official", str(src), "--out", str(tmp_path / "o.safetensors"),
                 "--arch", "aligncr-lite"]) == 2
    assert "missing" in capsys.readouterr().err
    full = build_model("aligncr-lite")
    src = _official_checkpoint(tmp_path, full)
    assert main(["models", "--import-official", str(src), "--out", str(tmp_path / "o.safetensors"),
                 "--arch", "aligncr-lite"]) == 0
    assert read_card(tmp_path / "o.safetensors").arch == "aligncr-lite"


@pytest.mark.parametrize("name", ["aligncr", "aligncr-lite", "aligncr-res"])
def test_the_meta_skeleton_has_the_real_models_keys_and_shapes(name):
    # The header check builds on the meta device with a shape-only weight norm (engine.models.arch_util._maybe_wn,
    # ≈ 1.9 s less per engine process); it must expect exactly what a real model stores.
    with torch.device("meta"):
        skeleton = build_model(name)
    real = build_model(name)
    assert {k: tuple(v.shape) for k, v in skeleton.state_dict().items()} == {
        k: tuple(v.shape) for k, v in real.state_dict().items()
    }
