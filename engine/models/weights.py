"""Weight files: ``.safetensors`` + a JSON model card in its metadata — safe to open when they come from strangers.

Why safetensors: a ``.pth``/pickle file runs arbitrary code when loaded; a safetensors file is a JSON header and
raw tensor bytes, so opening one can at worst fail. The model card (``ModelCard``) travels inside the header
under the key ``"aligncr_card"`` and alone is enough to rebuild the network (registry name + config), to feed it
what it was trained on (bands, normalisation, SAR units) and to show the user where it came from.

Everything that can go wrong with a file (not safetensors, no/garbled card, unknown arch, config options the
arch lacks, missing/unexpected tensors, wrong shapes) raises :class:`~engine.errors.ModelError` with one line
naming the problem. Loading is strict: a file either reproduces the model exactly or is refused. The card is
checked against the file's tensor index (names, shapes, dtypes) on a ``meta``-device skeleton BEFORE any memory
is allocated, so a hostile card describing a gigantic network cannot exhaust memory.

:func:`import_official` converts a checkpoint of the official Align-CR code (zhu-xlab/M3R-CR, a pickled
``{'network': state_dict, ...}``) into our format. It is the one place a pickle is read, only on the user's
explicit request, and with ``torch.load(weights_only=True)`` (tensors and plain containers only, no code).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import __version__ as ENGINE_VERSION
from engine.errors import ModelError
from engine.models.registry import config_to_dict, get_spec
from engine.models.safetensors_header import HeaderError, SafetensorsHeader, read_header
from engine.names import temporary_stem
from engine.sources.normalise import NormalisationConfig

CARD_KEY = "aligncr_card"
CARD_FORMAT = "1"


def _default_normalisation() -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(NormalisationConfig()).items()}


@dataclass
class ModelCard:
    """What a weights file says about itself. ``arch`` is a registry name, ``config`` its config fields."""

    arch: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    bands: list[str] = field(default_factory=lambda: ["blue", "green", "red", "nir"])
    sar_bands: list[str] = field(default_factory=lambda: ["VV", "VH"])
    normalisation: dict[str, Any] = field(default_factory=_default_normalisation)
    sar_units: str = "db"
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = "1"
    created: str = ""
    engine_version: str = ""
    notes: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Build from a dict; unknown keys are kept in ``notes`` rather than silently lost or fatal (newer
        engines may add fields)."""
        if not isinstance(d, dict):
            raise ModelError(f"model card must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        card = cls(**{k: v for k, v in d.items() if k in known})
        extra = {k: v for k, v in d.items() if k not in known}
        if extra:
            card.notes = (card.notes + "\n" if card.notes else "") + "extra card fields: " + json.dumps(extra)
        return card

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def normalisation_config(self) -> NormalisationConfig:
        n = self.normalisation
        try:
            return NormalisationConfig(
                optical_scale=float(n.get("optical_scale", NormalisationConfig.optical_scale)),
                vv_range=tuple(n.get("vv_range", NormalisationConfig.vv_range)),
                vh_range=tuple(n.get("vh_range", NormalisationConfig.vh_range)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"model card has an invalid normalisation block: {n!r}") from exc


def _as_card(card: ModelCard | dict | None) -> ModelCard:
    if card is None:
        return ModelCard()
    if isinstance(card, ModelCard):
        return dataclasses.replace(card)
    return ModelCard.from_dict(dict(card))


def _config_from_card(card: ModelCard) -> Any:
    """The arch's config dataclass with the card's values (JSON lists back to tuples where the field is one)."""
    spec = get_spec(card.arch)
    if not isinstance(card.config, dict):
        raise ModelError(f"model card config for '{card.arch}' must be an object")
    defaults = spec.config
    overrides = {}
    for k, v in card.config.items():
        if isinstance(v, list) and isinstance(getattr(defaults, k, None), tuple):
            v = tuple(v)
        overrides[k] = v
    return spec.build_config(**overrides)


def _build(card: ModelCard) -> nn.Module:
    spec = get_spec(card.arch)
    cfg = _config_from_card(card)
    try:
        model = spec.cls(cfg)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad config value from a file is the user's problem, said in one line
        raise ModelError(f"cannot build '{card.arch}' from the card's config: {exc}") from exc
    model.model_name = card.arch
    return model


def save(model: nn.Module, path: str | os.PathLike, card: ModelCard | dict | None = None) -> Path:
    """Write ``model``'s weights and ``card`` to ``path`` (atomically). Returns the path.

    ``card.arch`` defaults to ``model.model_name`` (set by the registry) and ``card.config`` to the model's
    config dataclass, so a card passed by the caller only needs the facts the model cannot know (training data,
    metrics, notes).
    """
    from safetensors.torch import save_file

    path = Path(path)
    c = _as_card(card)
    if not c.arch:
        c.arch = getattr(model, "model_name", "") or ""
    if not c.arch:
        raise ModelError("cannot save weights: the model has no registry name (build it with build_model)")
    if not c.config:
        cfg = getattr(model, "cfg", None)
        if cfg is None or not dataclasses.is_dataclass(cfg):
            raise ModelError("cannot save weights: the card has no config and the model exposes no .cfg dataclass")
        c.config = config_to_dict(cfg)
    c.config = json.loads(json.dumps(c.config))  # tuples → lists, and proves it is JSON-serialisable
    c.created = c.created or datetime.now(UTC).isoformat(timespec="seconds")
    c.engine_version = c.engine_version or ENGINE_VERSION
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {CARD_KEY: json.dumps(c.to_dict(), sort_keys=True), "format": "pt", "card_format": CARD_FORMAT}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{temporary_stem(path.name)}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the weights from other users of a shared install
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_header(path: Path) -> SafetensorsHeader:
    """The file's header through the one (torch-free) reader the plugin uses too."""
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        return read_header(path)
    except HeaderError as exc:
        raise ModelError(f"{path.name} is not a readable .safetensors weights file ({exc})") from None


def read_card(path: str | os.PathLike) -> ModelCard:
    """The model card of a weights file, reading only its header (no tensors)."""
    path = Path(path)
    raw = _read_header(path).metadata.get(CARD_KEY)
    if raw is None:
        raise ModelError(f"{path.name} has no model card (metadata key '{CARD_KEY}'); not an Align-CR weights file")
    try:
        card = ModelCard.from_dict(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path.name}: model card is not valid JSON ({exc.msg})") from exc
    except TypeError as exc:
        raise ModelError(f"{path.name}: model card has fields of the wrong type ({exc})") from exc
    if not card.arch:
        raise ModelError(f"{path.name}: model card names no architecture ('arch')")
    return card


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def _compare(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], name: str) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        raise ModelError(f"{name}: {len(missing)} tensor(s) missing for this architecture: {_few(missing)}")
    if extra:
        raise ModelError(f"{name}: {len(extra)} unexpected tensor(s) for this architecture: {_few(extra)}")
    bad = [f"{k} {found[k]} != {v}" for k, v in expected.items() if found[k] != v]
    if bad:
        raise ModelError(f"{name}: {len(bad)} tensor(s) with the wrong shape: {_few(bad)}")


def _check_state(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    _compare(
        {k: tuple(v.shape) for k, v in model.state_dict().items()}, {k: tuple(v.shape) for k, v in state.items()}, name
    )


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _check_header(path: Path, card: ModelCard) -> None:
    """Compare the card's architecture (built on ``meta``: no memory) with the file's tensor names, shapes and
    dtypes, reading the header only. A card describing a gigantic network over a small file is refused here,
    before anything is allocated; floating parameters stored as integers are refused rather than cast."""
    with torch.device("meta"):
        skeleton = _build(card)
    expected = skeleton.state_dict()
    index = _read_header(path).tensors
    found = {k: info.shape for k, info in index.items()}
    dtypes = {k: info.dtype for k, info in index.items()}
    _compare({k: tuple(v.shape) for k, v in expected.items()}, found, path.name)
    bad = [
        f"{k} ({dtypes[k]})" for k, v in expected.items() if v.is_floating_point() and dtypes[k] not in _FLOAT_DTYPES
    ]
    if bad:
        raise ModelError(f"{path.name}: {len(bad)} floating-point tensor(s) stored as non-float: {_few(bad)}")


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Build the model the card describes, load its tensors strictly, and return it in eval mode."""
    from safetensors.torch import load_file

    path = Path(path)
    card = read_card(path)
    _check_header(path, card)
    model = _build(card)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path.name}: cannot read tensors ({exc})") from exc
    _check_state(model, state, path.name)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


# ---------------------------------------------------------------------------------------------------------------
# Official Align-CR checkpoints
# ---------------------------------------------------------------------------------------------------------------

# Buffers the official code saves that we derive at run time instead (size-dependent or constant).
_DERIVED_SUFFIXES = (".attn_mask", ".relative_position_index")


def _fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = g · v / ‖v‖ with the norm over every dim but 0 (``weight_norm(dim=0)``)."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
    return g * v / norm


def map_official_state_dict(official: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official Align-CR state-dict keys → ours (for ``model``, an :class:`AlignCR`).

    - ``module.`` (DataParallel) prefixes are stripped;
    - ``attn_mask`` and ``relative_position_index`` buffers are dropped (recomputed for the actual size);
    - weight-norm pairs ``X.weight_g``/``X.weight_v`` become ``X.parametrizations.weight.original0/1`` when the
      model keeps weight norm (lossless, training continues identically), or are folded into ``X.weight``
      (g·v/‖v‖) when it does not;
    - every other key is kept as is: our module names mirror the official ones.
    """
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in official.items():
        if not isinstance(t, torch.Tensor):
            raise ModelError(f"official checkpoint entry '{key}' is not a tensor")
        k = re.sub(r"^(module\.)+", "", key)
        if k.endswith(_DERIVED_SUFFIXES):
            continue
        m = re.match(r"^(.*)\.weight_([gv])$", k)
        if m:
            prefix, which = m.groups()
            if f"{prefix}.parametrizations.weight.original0" in ours:
                out[f"{prefix}.parametrizations.weight.original{0 if which == 'g' else 1}"] = t
            else:
                pending.setdefault(prefix, {})[which] = t
            continue
        out[k] = t
    for prefix, gv in pending.items():
        if set(gv) != {"g", "v"}:
            raise ModelError(f"official checkpoint has an incomplete weight-norm pair for '{prefix}'")
        out[f"{prefix}.weight"] = _fold_weight_norm(gv["g"], gv["v"])
    return out


def import_official(
    path_to_pth: str | os.PathLike,
    out_path: str | os.PathLike,
    arch: str = "aligncr",
    card: ModelCard | dict | None = None,
) -> Path:
    """Convert an official Align-CR ``.pth`` checkpoint into a ``.safetensors`` weights file with a card."""
    src = Path(path_to_pth)
    if not src.is_file():
        raise ModelError(f"official checkpoint not found: {src}")
    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything a restricted unpickler refuses or cannot read
        # one line, and not torch's advice to turn weights_only off (that would run the file's code; issue 25)
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(exc))
        why = f"it refers to {blocked.group(1)}" if blocked else type(exc).__name__
        raise ModelError(f"{src} is not a plain state dict of tensors ({why}); it was not loaded") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("network"), dict):
        state, epoch = ckpt["network"], ckpt.get("epoch")
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, epoch = ckpt, None
    else:
        raise ModelError(f"{src.name} has no 'network' state dict (not an official Align-CR checkpoint)")
    base = _as_card(card)
    base.arch = arch
    model = _build(dataclasses.replace(base, config=base.config or {}))
    mapped = map_official_state_dict(state, model)
    _check_state(model, mapped, src.name)
    model.load_state_dict(mapped, strict=True)
    if not base.training_data:
        base.training_data = "M3R-CR (official Align-CR checkpoint, zhu-xlab/M3R-CR)"
    note = f"imported from {src.name}" + (f" (epoch {epoch})" if isinstance(epoch, int) else "")
    base.notes = note + ("\n" + base.notes if base.notes else "")
    return save(model, out_path, base)
