"""``python -m engine models [--json]``: every registered model, its size, and the weights bundled for it.

The QGIS plugin fills its model picker from ``--json`` (and shows its "Extra dates" group for the models whose
``temporal_inputs`` is not empty, its DEM picker for those with ``uses_dem``); a user choosing between ``aligncr`` and
``aligncr-lite`` needs the parameter counts (a proxy for speed and memory) and whether trained weights ship with
the install. Counting builds each model on the ``meta`` device (no memory, no arithmetic). Weight files in the
weights folder are described from their model card only (header read, no tensors); a file that is not a valid
weights file is listed with its problem instead of stopping the listing.

``--import-official CKPT.pth --out FILE.safetensors`` converts a checkpoint of the authors' code into our format
(see :func:`engine.models.weights.import_official`), so released official weights become usable here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import RESOURCES
from engine.commands import add_clobber_argument

NAME = "models"
HELP = "list the available models, their parameter counts and the bundled weights"

WEIGHTS_DIR = RESOURCES / "weights"


@dataclass
class WeightsInfo:
    file: str
    arch: str | None = None
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    size_mb: float = 0.0
    error: str | None = None
    uses_dem: bool = False  # the card's config says dem=True: the run needs --dem


@dataclass
class ModelInfo:
    name: str
    arch: str
    description: str
    needs_weights: bool
    params: int | None
    params_paper_convention: int | None
    bundled_weights: list[str] = field(default_factory=list)
    error: str | None = None
    # temporal models (msop-unet, gapfill): the extra dates they take (``["prev", "next"]``), whether they need the
    # acquisition times and the SAR images; the plugin shows its "Extra dates" group from these.
    temporal_inputs: list[str] = field(default_factory=list)
    needs_dates: bool = False
    uses_sar: bool = True
    # the model's config says dem=True (a Cresson U-Net with the DEM branch): the run needs --dem; the plugin shows
    # its DEM picker from this (and, for a weights file, from the card's config)
    uses_dem: bool = False
    # every input the model takes besides the cloudy optical image, as the pipeline opens them (engine.models.roles):
    # "sar", "optical_prev", "sar_prev", "optical_next", "sar_next", "dem" — each also a `run` option of that name
    roles: list[str] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (for the QGIS plugin)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="folder of .safetensors files")
    parser.add_argument("--import-official", type=Path, metavar="CKPT",
                        help="convert an official Align-CR .pth checkpoint (needs --out)")
    parser.add_argument("--out", type=Path, help="output .safetensors for --import-official")
    parser.add_argument("--arch", default="aligncr", help="registry name of the checkpoint's network (default aligncr)")
    add_clobber_argument(parser)


def scan_weights(folder: Path) -> list[WeightsInfo]:
    from engine.errors import ModelError
    from engine.models.weights import read_card

    out = []
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        info = WeightsInfo(file=str(path), size_mb=round(path.stat().st_size / 1e6, 2))
        try:
            card = read_card(path)
            info.arch, info.training_data, info.metrics, info.created = (
                card.arch, card.training_data, card.metrics, card.created
            )
            info.uses_dem = bool(isinstance(card.config, dict) and card.config.get("dem", False))
        except ModelError as exc:
            info.error = str(exc)
        out.append(info)
    return out


def collect(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Any]:
    import torch

    from engine.models import list_models
    from engine.models.counting import count_params
    from engine.models.roles import inputs_of

    weights = scan_weights(weights_dir)
    models = []
    for spec in list_models():
        info = ModelInfo(spec.name, spec.arch, spec.description, spec.needs_weights, None, None)
        declared = inputs_of(spec.cls, spec.name, spec.config)  # the roles the pipeline opens for it
        info.temporal_inputs = list(declared.extra_dates)
        info.needs_dates, info.uses_sar, info.uses_dem = declared.needs_dates, declared.uses_sar, declared.uses_dem
        info.roles = list(declared.roles)
        try:
            with torch.device("meta"):
                model = spec.cls(spec.config)
            counts = count_params(model)
            info.params, info.params_paper_convention = counts.total, counts.paper_convention
        except Exception as exc:  # noqa: BLE001 - one unbuildable entry must not hide the others
            info.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        info.bundled_weights = [w.file for w in weights if w.arch == spec.name and w.error is None]
        models.append(info)
    return {
        "weights_dir": str(weights_dir),
        "models": [asdict(m) for m in models],
        "weights": [asdict(w) for w in weights],
    }


def _fmt_params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} M"


def run(args: argparse.Namespace) -> int:
    if args.import_official is not None:
        from engine.errors import EngineError
        from engine.models.weights import import_official

        if args.out is None:
            raise EngineError("--import-official needs --out FILE.safetensors")
        from engine.outputs.guard import check_output_path
        from engine.sources.footprint import input_footprint

        check_output_path(args.out, input_footprint({"checkpoint": args.import_official}), what="--out",
                          clobber=args.clobber)  # fmt: skip
        path = import_official(args.import_official, args.out, arch=args.arch)
        print(json.dumps({"written": str(path)}) if args.json else f"wrote {path}")
        return 0
    report = collect(args.weights_dir)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = []
    for m in report["models"]:
        params = _fmt_params(m["params"])
        if m["params"] is not None and m["params_paper_convention"] != m["params"]:
            params += f" ({_fmt_params(m['params_paper_convention'])} paper conv.)"
        if m["bundled_weights"]:
            status = "bundled weights"
        else:
            status = "needs --weights" if m["needs_weights"] else "no weights needed"
        rows.append((m["name"], params, status, m["description"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    print(f"\nweights folder: {report['weights_dir']}")
    if not report["weights"]:
        print("  (no .safetensors files)")
    for w in report["weights"]:
        name = Path(w["file"]).name
        if w["error"]:
            print(f"  {name}: UNUSABLE — {w['error']}")
        else:
            extra = f", trained on {w['training_data']}" if w["training_data"] else ""
            print(f"  {name}: {w['arch']}, {w['size_mb']} MB{extra}")
    return 0
