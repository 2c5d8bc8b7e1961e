"""Fingerprint the engine's outputs on fixed runs, to prove a refactor changed no pixel.

Why: moving modules (issue 27) or reorganising the per-chunk code must leave every output bit-identical. This runs a
fixed set of ``python -m engine`` commands on the bundled sample (every stage: tiles, mask, QA, TTA, colour anchor,
adaptation, scene check, report, NDVI), then prints one SHA-256 per output raster over what matters to a user: the
pixel bytes of every band, dtype, nodata, size, transform and CRS (not the file's bytes: the settings tag records the
engine's paths/time).

    .venv/bin/python scripts/fingerprint_runs.py > before.json   # on the old tree
    .venv/bin/python scripts/fingerprint_runs.py > after.json    # on the new tree
    diff before.json after.json                                  # no output means bit-identical
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import rasterio

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "sample"
BASE = ["--optical", str(SAMPLE / "cloudy.tif"), "--sar", str(SAMPLE / "s1.tif"), "--threads", "1"]
MASKED = BASE + ["--mask", str(SAMPLE / "cloud_mask.tif")]

# name → (engine command and arguments, output files the run writes, relative to its folder)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "default": (["run", *BASE, "--out", "out.tif"], ["out.tif"]),
    "only_cloudy_masked": (["run", *MASKED, "--only-cloudy", "--out", "out.tif", "--qa", "qa.tif"],
                           ["out.tif", "qa.tif"]),
    "confidence": (["run", *BASE, "--confidence", "conf.tif", "--out", "out.tif"], ["out.tif", "conf.tif"]),
    "colour_anchor": (["run", *MASKED, "--colour-anchor", "--only-cloudy", "--out", "out.tif"], ["out.tif"]),
    "adapt_check": (["run", *MASKED, "--adapt", "4", "--scene-check", "--out", "out.tif"], ["out.tif"]),
    "report": (["run", *MASKED, "--reference", str(SAMPLE / "cloudfree.tif"), "--landcover",
                str(SAMPLE / "landcover.tif"), "--report", "rep", "--out", "out.tif"], ["out.tif"]),
    "ndvi": (["ndvi", "--input", str(SAMPLE / "cloudfree.tif"), "--out", "ndvi.tif"], ["ndvi.tif"]),
}


def raster_digest(path: Path) -> str:
    """SHA-256 of the pixels, dtype, nodata, size, transform and CRS of a raster."""
    h = hashlib.sha256()
    with rasterio.open(path) as ds:
        h.update(repr((ds.dtypes, ds.nodata, ds.width, ds.height, tuple(ds.transform), ds.crs.to_wkt())).encode())
        h.update(ds.read().tobytes())
    return h.hexdigest()


def run_case(name: str, argv: list[str], outputs: list[str], work: Path) -> dict[str, str]:
    folder = work / name
    folder.mkdir()
    proc = subprocess.run([sys.executable, "-m", "engine", *argv], cwd=folder, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # fmt: skip
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    digests = {out: raster_digest(folder / out) for out in outputs}
    report = folder / "rep" / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        metrics = json.dumps(data.get("metrics"), sort_keys=True).encode()
        digests["report.json:metrics"] = hashlib.sha256(metrics).hexdigest()
    return digests


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        result = {name: run_case(name, argv, outs, Path(tmp)) for name, (argv, outs) in CASES.items()}
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
