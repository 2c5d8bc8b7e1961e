"""What the mask source does to the default run (``engine run``, ``--mode best``: only the cloud replaced) on real
cloudy scenes: the same scene run with the mask shipped with the data, the trained detector and the hand-made rule.

Why: in the default run the mask decides which pixels change, so a mask that misses cloud fringes leaves them in
the output, and one that flags clear ground replaces it. Per scene and source:

* **PSNR / SAM inside the shipped cloud** against the cloud-free reference (another date: see docs/measurements.md on
  what that caps), the same pixels for every source;
* **leftover cloud**: the share of the output's pixels brighter than the reference's 99.5th percentile in all of B,
  G and R (a cloud or its fringe still there), beside the cloudy input's share;
* **replaced**: the share of the pixels the run changed (its QA layer > 0).

The scenes are the report split's real SEN12MS-CR triplets and M3R-CR's PlanetScope quartet, written as small
georeferenced GeoTIFFs (a made-up UTM grid) so that ``engine run`` takes them as a user's files.
``.venv/bin/python benchmarks/masks_downstream.py --data ../shared/data --out runs/masks_downstream`` (CPU, one thread:
about 15 minutes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from engine.cli import main as engine_main

SOURCES = {"shipped": None, "trained": "detect", "rule": "rule"}
TRIPLETS = ("6553", "4438", "5278", "746", "4065", "6317")  # the report split's real SEN12MS-CR scenes
S2_BGRN = [1, 2, 3, 7]
EXTRA: list[str] = []  # --adapt 0 (--no-adapt): the default run without its scene adaptation, for a loaded machine


def _write(path: Path, data: np.ndarray, res: float, dtype: str, nodata: float | None = None) -> str:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[-1], height=data.shape[-2], count=data.shape[0],
                       dtype=dtype, crs="EPSG:32632", transform=from_origin(500000.0, 5000000.0, res, res),
                       nodata=nodata) as ds:  # fmt: skip
        ds.write(data.astype(dtype))
    return str(path)


def scenes(root: Path, folder: Path) -> dict[str, dict[str, str]]:
    """Each scene's cloudy image, SAR, shipped mask and reference as files in ``folder``."""
    out = {}
    trip = root / "sen12mscr_triplets"
    for sid in TRIPLETS:
        kinds = ("s2_cloudy", "s2_cloudfree", "s1", "cloudmask")
        read = {k: rasterio.open(trip / k / f"{sid}.tif").read() for k in kinds}
        d = folder / sid
        d.mkdir(parents=True, exist_ok=True)
        out[sid] = {"optical": _write(d / "cloudy.tif", np.maximum(read["s2_cloudy"][S2_BGRN], 1), 10, "uint16", 0),
                    "reference": _write(d / "reference.tif", np.maximum(read["s2_cloudfree"][S2_BGRN], 1), 10,
                                        "uint16", 0),
                    "sar": _write(d / "s1.tif", read["s1"], 10, "float32"),
                    "mask": _write(d / "mask.tif", read["cloudmask"][:1] > 0, 10, "uint8")}  # fmt: skip
    m3 = root / "m3rcr_sample" / "train"
    d = folder / "m3rcr"
    d.mkdir(parents=True, exist_ok=True)
    mask = np.load(next(m3.glob("cloudmask_fall/*/*.npy")))[None]
    out["m3rcr"] = {"optical": str(next(m3.glob("planet_cloudy_fall/*/*.tif"))),
                    "reference": str(next(m3.glob("planet_cloudfree_fall/*/*.tif"))),
                    "sar": str(next(m3.glob("S1_fall/*/*.tif"))),
                    "mask": _write(d / "mask.tif", mask > 0, 3, "uint8")}  # fmt: skip
    if out["m3rcr"]["mask"]:  # M3R-CR's grid is real: the mask takes the optical file's
        with rasterio.open(out["m3rcr"]["optical"]) as ds:
            profile = {**ds.profile, "count": 1, "dtype": "uint8", "nodata": None}
        with rasterio.open(d / "mask.tif", "w", **profile) as ds:
            ds.write(mask.astype("uint8"))
    return out


def scores(out: np.ndarray, ref: np.ndarray, cloudy: np.ndarray, cloud: np.ndarray, qa: np.ndarray) -> dict:
    """PSNR and SAM inside the shipped cloud, leftover-cloud shares, replaced share (reflectance inputs)."""
    mse = float(((out[:, cloud] - ref[:, cloud]) ** 2).mean())
    dot = (out[:, cloud] * ref[:, cloud]).sum(0)
    norms = np.linalg.norm(out[:, cloud], axis=0) * np.linalg.norm(ref[:, cloud], axis=0)
    sam = float(np.degrees(np.arccos(np.clip(dot / np.maximum(norms, 1e-8), -1, 1))).mean())
    p995 = np.percentile(ref[:3].reshape(3, -1), 99.5, axis=1)[:, None, None]
    return {"psnr_in": 10 * np.log10(1.0 / max(mse, 1e-10)), "sam_in": sam,
            "leftover": float((out[:3] > p995).all(0).mean()),
            "leftover_input": float((cloudy[:3] > p995).all(0).mean()),
            "replaced": float((qa > 0).mean())}  # fmt: skip


def run_one(paths: dict[str, str], source: str, folder: Path) -> dict:
    out, qa = folder / f"{source}.tif", folder / f"{source}_qa.tif"
    args = ["run", "--optical", paths["optical"], "--sar", paths["sar"], "--out", str(out), "--qa", str(qa),
            "--mask", SOURCES[source] or paths["mask"], "--threads", "1", "--device", "cpu", *EXTRA]  # fmt: skip
    if engine_main(args) != 0:
        raise RuntimeError(" ".join(args))
    read = {k: rasterio.open(p).read().astype(np.float32) for k, p in
            (("out", out), ("ref", paths["reference"]), ("cloudy", paths["optical"]), ("qa", qa))}  # fmt: skip
    cloud = rasterio.open(paths["mask"]).read(1) > 0
    qa_band = np.where(read["qa"][0] == 255, 0, read["qa"][0])
    return scores(read["out"][:4] / 1e4, read["ref"][:4] / 1e4, read["cloudy"][:4] / 1e4, cloud, qa_band)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/masks_downstream"))
    parser.add_argument("--no-adapt", action="store_true", help="--adapt 0: skip the default run's scene adaptation")
    parser.add_argument("--scenes", help="comma-separated scene ids (default: all)")
    args = parser.parse_args(argv)
    EXTRA[:] = ["--adapt", "0"] if args.no_adapt else []
    rows = {}
    for sid, paths in scenes(args.data, args.out).items():
        if args.scenes and sid not in args.scenes.split(","):
            continue
        rows[sid] = {source: run_one(paths, source, args.out / sid) for source in SOURCES}
        print(sid, json.dumps({s: {k: round(v, 4) for k, v in r.items()} for s, r in rows[sid].items()}), flush=True)
        (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    for source in SOURCES:
        mean = {k: float(np.mean([rows[s][source][k] for s in rows])) for k in rows[next(iter(rows))][source]}
        print(source, {k: round(v, 4) for k, v in mean.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
