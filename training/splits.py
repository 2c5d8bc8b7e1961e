"""``python -m training.splits --train RECIPE --report REPORT --out F``: the split manifest a model card records.

Lists, for each split (``train``, ``select`` — the recipe's validation, which chooses the checkpoint — and the report
split's ``real`` / ``synthetic``), every sample with its source, kind (real triplet or clear pair with synthetic
clouds), scene and licence, plus counts per source; and refuses splits that share a scene.

Scenes: a sample's scene is what makes two samples not independent (adjacent patches of one acquisition, or two
dates of one place). SEN12MS-CR names carry it (``ROIs1970_fall_139_p839`` → ``ROIs1970_fall_139``); BigEarthNet
patches of one Sentinel-2 product share it (``…_4_55`` and ``…_36_85`` are one scene); an M3R-CR area, an SSL4EO-S12
location, a Sen1Floods11 chip and a TerraMesh id are one scene each, whatever the date. The 16 numbered SEN12MS-CR
triplets carry no scene name: each number is taken as its own scene (an assumption the manifest states).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

from engine.errors import InputError
from training.datasets import build_reader

# kind → (source name, licence as the shared data README gives it)
SOURCES: dict[str, tuple[str, str]] = {
    "sen12mscr": ("SEN12MS-CR (Ebel et al. 2020)", "CC-BY-4.0; contains modified Copernicus Sentinel data"),
    "sen12mscr_pairs": ("SEN12MS-CR sea pairs (via dSen2CR_DSP)", "CC-BY-4.0"),
    "m3rcr": ("M3R-CR (Xu et al. 2023)", "Planet Education & Research: academic research use only"),
    "bigearthnet": ("BigEarthNet-MM", "CDLA-Permissive-1.0"),
    "terramind": ("TerraMesh (TerraMind examples)", "CC-BY-SA-4.0 (share-alike)"),
    "ssl4eo": ("SSL4EO-S12", "CC-BY-4.0"),
    "sen1floods11": ("Sen1Floods11", "no licence statement (internal testing only)"),
}


def scene_of(kind: str, sample_id: str, reader: Any) -> str:
    """The scene a sample belongs to (see the module docstring)."""
    sid = sample_id.removesuffix(":clear")
    m = re.match(r"(ROIs\d+_[a-z]+_\d+)_", sid)
    if m:
        return m.group(1)
    if kind == "bigearthnet":
        item = dict(reader.items)[sid] if hasattr(reader, "items") else None
        if item is not None:
            return "_".join(item[1].name.split("_")[:3])  # S2 product: mission, level, date-time
    if kind == "ssl4eo":
        return "ssl4eo_" + sid.split("_")[0]
    if kind == "sen12mscr" and sid.isdigit():
        return f"sen12mscr_triplet_{sid}"
    return f"{kind}_{sid}"


def _entries(specs: list[dict[str, Any]], split: str, synthetic_default: bool) -> list[dict[str, Any]]:
    out = []
    for spec in specs:
        reader = build_reader(spec, cache=False)
        inner = getattr(reader, "reader", reader)
        kind = spec["kind"]
        synthetic = getattr(reader, "synthetic", 1.0 if synthetic_default else 0.0) > 0 or synthetic_default
        source, licence = SOURCES.get(kind, (kind, "unknown"))
        for i in range(len(reader)):
            sid = reader.sample_id(i)
            out.append({"split": split, "id": sid, "kind": kind, "source": source, "licence": licence,
                        "sample": "clear pair + synthetic clouds" if synthetic else "real triplet",
                        "scene": scene_of(kind, sid, inner), "root": spec["root"]})
    return out


def manifest(train_recipe: str | Path, report_recipe: str | Path) -> dict[str, Any]:
    """The split manifest of a training recipe and its report split; raises if two splits share a scene."""
    train = tomllib.loads(Path(train_recipe).read_text())
    report = tomllib.loads(Path(report_recipe).read_text()).get("report", {})
    data = train.get("data", {})
    rows = (_entries(data.get("train", []), "train", False) + _entries(data.get("val", []), "select", False)
            + _entries(report.get("real", []), "report_real", False)
            + _entries(report.get("synthetic", []), "report_synthetic", True))
    check_scene_disjoint(rows)
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["split"], Counter())[f"{r['source']} — {r['sample']}"] += 1
    return {"train_recipe": str(train_recipe), "report_recipe": str(report_recipe),
            "scene_rule": __doc__.split("Scenes: ", 1)[1].strip(),
            "counts": {k: dict(v) for k, v in counts.items()}, "samples": rows}


def check_scene_disjoint(rows: list[dict[str, Any]]) -> None:
    """Training (train + select) and the report split must share no scene; train and select neither."""
    groups = {"train": {"train"}, "select": {"select"}, "report": {"report_real", "report_synthetic"}}
    scenes = {g: {r["scene"] for r in rows if r["split"] in splits} for g, splits in groups.items()}
    for a, b in (("train", "select"), ("train", "report"), ("select", "report")):
        shared = scenes[a] & scenes[b]
        if shared:
            raise InputError(f"the {a} and {b} splits share scene(s) {sorted(shared)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.splits", description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="training recipe (its [[data.train]] and [[data.val]])")
    parser.add_argument("--report", required=True, help="report split recipe ([[report.real]], [[report.synthetic]])")
    parser.add_argument("--out", help="write the manifest JSON here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        result = manifest(args.train, args.report)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
