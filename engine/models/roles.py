"""The inputs a model takes besides the cloudy optical image, declared as *roles*.

Why roles: the pipeline must open, check and align exactly what the network consumes, and nothing else. Each
registered model declares its inputs through its class (and config), and :func:`inputs_of` reads that declaration
into one frozen :class:`ModelInputs` — the only place the engine (:mod:`engine.stream.pipeline`), training
(:mod:`training.inputs`), ``engine models --json`` and ``engine batch`` learn what a model needs:

* ``uses_sar`` (class attribute, default True): the Sentinel-1 VV/VH image at the cloudy date, role ``sar``;
* ``temporal_inputs`` (class attribute, e.g. ``("prev", "next")``): the images acquired before and after, roles
  ``optical_prev``, ``sar_prev`` (only when ``uses_sar``), ``optical_next``, ``sar_next``;
* ``needs_dates`` (class attribute): the acquisition times ``t_prev, t, t_next`` (:mod:`engine.align.temporal`);
* ``dem`` (config field): a one-band elevation raster, role ``dem`` (:mod:`engine.align.dem`);
* ``fill_only_cloudy`` (config field): with ``--mask``, only the cloud takes the model's output;
* ``prior`` (config field): the engine's non-learned estimate of the ground under the cloud and the distance to
  clear ground (:mod:`engine.refine.prior`), computed from the optical image and its cloud — not a file role.

A role (:class:`Role`) is a :class:`~engine.config.RunConfig` field, the model's ``forward`` keyword and the key the
pipeline packs it under, all with one name; its *kind* (``optical``, ``sar``, ``dem``) says how it is checked,
aligned, normalised and gap-filled (:data:`engine.align.inputs.KINDS`). The order of :attr:`ModelInputs.roles` is the
order the inputs are opened, read and packed in: ``sar``, the extra dates, ``dem``.

Adding an input role: one :data:`ROLES` entry (a new kind also needs its class in :mod:`engine.align.inputs`), the
``RunConfig`` field and flag of the same name, and the declaration read in :func:`inputs_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import DATE_FIELDS, RunConfig, flag
from engine.errors import EngineError, InputError

EXTRA_DATES = {"prev": "t-1", "next": "t+1"}  # temporal_inputs suffix → how messages name that date


@dataclass(frozen=True)
class Role:
    """One input a model can take: its name (``RunConfig`` field = ``forward`` keyword), its kind and how messages
    name it."""

    name: str
    kind: str  # "optical" | "sar" | "dem": how it is checked, aligned and read (engine.align.inputs.KINDS)
    label: str  # errors: "SAR image", "optical image at t-1 (--optical-prev)"
    short: str = ""  # opening errors and the coverage warning (default: label)
    without: str = "it"  # "pixels without <without> are left as the input"
    date_gap: bool = False  # warn when acquired far (in days) from the optical image (the main SAR)

    @property
    def name_in_warnings(self) -> str:
        return self.short or self.label


def _extra_date_roles() -> dict[str, Role]:
    out: dict[str, Role] = {}
    for suffix, when in EXTRA_DATES.items():
        for kind, what in (("optical", "optical"), ("sar", "SAR")):
            name = f"{kind}_{suffix}"
            out[name] = Role(name, kind, f"{what} image at {when} ({flag(name)})")
    return out


ROLES: dict[str, Role] = {
    "sar": Role("sar", "sar", "SAR image", short="SAR", without="SAR", date_gap=True),
    **_extra_date_roles(),
    "dem": Role("dem", "dem", "DEM (--dem)", without="elevation"),
}


@dataclass(frozen=True)
class ModelInputs:
    """What a model takes besides the cloudy optical image, as declared by its class and config."""

    name: str
    roles: tuple[str, ...] = ("sar",)  # in opening, reading and packing order
    needs_dates: bool = False  # acquisition times t_prev, t, t_next (gapfill)
    fill_only_cloudy: bool = False  # with --mask, only the cloud takes the model's output (gapfill)
    # the engine's own estimate of the ground and the distance to clear ground (engine.refine.prior.channels),
    # computed from the optical image and its cloud, packed after every file role (aligncr-res: config prior=True)
    prior: bool = False

    @property
    def uses_sar(self) -> bool:
        return "sar" in self.roles

    @property
    def uses_dem(self) -> bool:
        return "dem" in self.roles

    @property
    def temporal_keys(self) -> tuple[str, ...]:
        """The extra-date roles (``optical_prev``, ``sar_prev``, …), in order."""
        return tuple(r for r in self.roles if r.rsplit("_", 1)[-1] in EXTRA_DATES)

    @property
    def extra_dates(self) -> tuple[str, ...]:
        """The extra dates' suffixes (``("prev", "next")``), as ``engine models --json`` reports them."""
        return tuple(dict.fromkeys(k.rsplit("_", 1)[-1] for k in self.temporal_keys))


def inputs_of(model: Any, name: str, config: object | None = None) -> ModelInputs:
    """The :class:`ModelInputs` of a built module, or of a model class and its ``config`` (dataclass or dict)."""
    cfg = config if config is not None else getattr(model, "cfg", None)

    def setting(key: str) -> bool:
        return bool(cfg.get(key, False) if isinstance(cfg, dict) else getattr(cfg, key, False))

    uses_sar = bool(getattr(model, "uses_sar", True))
    kinds = ("optical", "sar") if uses_sar else ("optical",)
    dates = [f"{kind}_{suffix}" for suffix in getattr(model, "temporal_inputs", None) or () for kind in kinds]
    unknown = [k for k in dates if k not in ROLES]
    if unknown:
        raise InputError(f"this engine cannot supply the model's extra input(s) {', '.join(unknown)}")
    roles = (["sar"] if uses_sar else []) + dates + (["dem"] if setting("dem") else [])
    return ModelInputs(name=name, roles=tuple(roles), needs_dates=bool(getattr(model, "needs_dates", False)),
                       fill_only_cloudy=setting("fill_only_cloudy"), prior=setting("prior"))  # fmt: skip


def model_inputs(model: str | None, weights: Path | None, default_model: str) -> ModelInputs | None:
    """The inputs of a model given as a registry name and/or a weights file (as ``--model`` / ``--weights``), from
    the registry or the weights file's card header (no tensor read); ``None`` when that cannot be told (unknown
    name, unreadable weights): the full checks report it."""
    from dataclasses import asdict

    from engine.models import get_spec

    try:
        name = model or default_model
        model_config: object = get_spec(name).config if weights is None else None
        if weights is not None:
            from engine.models.weights import read_card

            card = read_card(weights)
            name = card.arch or name
            card_config = card.config if isinstance(card.config, dict) else {}
            model_config = {**asdict(get_spec(name).config), **card_config}
        cls = get_spec(name).cls
    except (EngineError, OSError, ValueError, TypeError):
        return None
    return inputs_of(cls, name, model_config)


def require_roles(inputs: ModelInputs, config: RunConfig) -> None:
    """Raise the one-line :class:`InputError` naming what the model declares and ``config`` lacks: the extra dates
    (all their flags at once), then the SAR, then the DEM."""
    keys = list(inputs.temporal_keys)
    missing = [k for k in keys if getattr(config, k) is None]
    if missing:
        raise InputError(
            f"model '{inputs.name}' needs {_join([flag(k) for k in keys])} (the images before and after the cloudy "
            f"one); missing {', '.join(flag(k) for k in missing)}"
        )
    if inputs.uses_sar and config.sar is None:
        raise InputError(
            f"model '{inputs.name}' needs --sar (the Sentinel-1 VV/VH image); only models without SAR input "
            "(gapfill) run without it"
        )
    if inputs.uses_dem and config.dem is None:
        raise InputError(
            f"model '{inputs.name}' was built with a DEM input (dem=True): pass --dem FILE (elevation in metres)"
        )


def ignored_inputs(inputs: ModelInputs, config: RunConfig) -> list[str]:
    """One warning per group of given inputs the model does not take (they are never opened)."""
    out = []
    if not inputs.uses_sar and config.sar is not None:
        out.append(f"model '{inputs.name}' takes no SAR: --sar ignored")
    given = [k for k in ROLES if k not in ("sar", "dem") and getattr(config, k) is not None]
    given_dates = [d for d in DATE_FIELDS if getattr(config, d) is not None]
    if not inputs.temporal_keys and given + given_dates:
        out.append(f"model '{inputs.name}' is not temporal: {', '.join(flag(k) for k in given + given_dates)} ignored")
    elif inputs.temporal_keys:
        unused = [k for k in given if k not in inputs.roles] + ([] if inputs.needs_dates else given_dates)
        if unused:
            out.append(f"model '{inputs.name}' does not use {', '.join(flag(k) for k in unused)}: ignored")
    if not inputs.uses_dem and config.dem is not None:
        out.append(f"model '{inputs.name}' takes no DEM: --dem ignored")
    return out


def precheck(config: RunConfig, default_model: str) -> ModelInputs | None:
    """Fail in milliseconds, before any raster is opened, when the chosen model lacks a declared input.

    Only the model's class is looked at (registry name, or the weights file's card header); anything unclear here
    (unknown name, unreadable weights) is left for the full checks to report in their usual order. Returns the
    model's inputs (``None`` when they cannot be told yet)."""
    inputs = model_inputs(config.model, config.weights, default_model)
    if inputs is not None:
        require_roles(inputs, config)
    return inputs


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
