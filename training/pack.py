"""``python -m training.pack``: write a recipe's training data into one compressed file, for a machine without it.

Why: the GPU the device tool lends gets a copy of the working tree of at most 64 MiB, without ``../shared/data``
(~130 MB of 13-band files, of which a recipe reads four bands of a few dozen images) and without rasterio. The pack
holds exactly what the recipe's readers return — every ``[[data.train]]`` and ``[[data.val]]`` sample — and, for a
recipe with ``real_clouds``, the cloud bank's train and select layers; ``python -m training.train --pack FILE`` then
trains from it alone (:mod:`training.datasets.packed` says how it is stored). Build it here, where the data is::

    python -m training.pack --config training/configs/aligncr_res.toml --out .training-pack/aligncr_res.npz

The pack is data of the sources' licences (training/README.md): it lives in a git-ignored folder, travels with the
device tool's ``carry`` and is never committed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import EngineError
from engine.names import temporary_name
from training.datasets import packed


def reader_arrays(r: int, reader: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The index entry and the stored arrays of the ``r``-th reader of a recipe."""
    from training.datasets.cloud_bank import source_of

    arrays: dict[str, np.ndarray] = {}
    ids: list[str | None] = []
    for i in range(len(reader)):
        sample = reader.read(i)
        ids.append(sample.get("id"))
        clear_pair = sample["optical"] is sample["target"] or np.array_equal(sample["optical"], sample["target"])
        for name, value in sample.items():
            if name == "id" or (name == "optical" and clear_pair):
                continue
            arrays[f"r{r}/{i}/{name}"] = packed.encode(name, value)
    entry = {
        "kind": getattr(reader, "kind", "real"),
        "synthetic": getattr(reader, "synthetic", None),
        "source": source_of(reader),
        "names": [reader.sample_id(i) for i in range(len(reader))],
        "ids": ids,
    }
    return entry, arrays


def bank_arrays(split: str) -> tuple[list[dict[str, str]], dict[str, np.ndarray]]:
    """The index entries and stored arrays of the cloud bank's ``split``."""
    from training.datasets.cloud_bank import bank

    metas, arrays = [], {}
    for n, layer in enumerate(bank(split)):
        metas.append({"id": layer.id, "scene": layer.scene, "source": layer.source})
        for field in packed.LAYER_FIELDS:
            arrays[f"bank/{split}/{n}/{field}"] = packed.encode(field, getattr(layer, field))
    return metas, arrays


def build(config: Path, out: Path) -> dict[str, Any]:
    """Write the pack of the recipe at ``config`` to ``out`` (atomically: a temporary beside it, then renamed);
    returns its index."""
    from training.config import load_config
    from training.datasets import build_reader

    if packed.active():
        raise EngineError("a training pack is open: a pack is built from the data's own files")
    cfg = load_config(config)
    index: dict[str, Any] = {"config": str(config), "readers": [], "bank": {}}
    arrays: dict[str, np.ndarray] = {}
    for spec in [*cfg.data.train, *cfg.data.val]:
        entry, own = reader_arrays(len(index["readers"]), build_reader(spec, cache=False))
        index["readers"].append({"key": packed.spec_key(spec), **entry})
        arrays.update(own)
        print(f"{spec.get('kind')} {spec.get('root')}: {len(entry['ids'])} sample(s)", flush=True)
    if cfg.data.real_clouds:
        for split in ("train", "select"):
            index["bank"][split], own = bank_arrays(split)
            arrays.update(own)
            print(f"cloud bank {split}: {len(index['bank'][split])} layer(s)", flush=True)
    _write(out, {"index.json": np.array(json.dumps(index)), **arrays})
    return index


def _write(out: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tmp = out.with_name(temporary_name(out.name, str(os.getpid()), "pack"))
    try:
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="TOML recipe (training/configs/*.toml)")
    parser.add_argument("--out", required=True, type=Path, help="the pack to write (.npz)")
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        print(f"error: the folder of --out does not exist: {args.out.parent}", file=sys.stderr)
        return 2
    try:
        index = build(args.config, args.out)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    samples = sum(len(r["ids"]) for r in index["readers"])
    layers = sum(len(v) for v in index["bank"].values())
    print(f"wrote {args.out}: {samples} samples, {layers} cloud layers, {args.out.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
