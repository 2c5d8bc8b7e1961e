"""``python -m engine ndvi --optical F --out F [--bands 1,2,3,4]``: NDVI GeoTIFF of a 4-band optical raster.

The QGIS plugin's ``aligncr:ndvi`` Processing algorithm runs this. ``--bands`` lists the 1-based positions of
B, G, R, NIR in the input (the same flag as ``run`` and ``evaluate``), so red and NIR are its 3rd and 4th entries.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.commands import add_clobber_argument, add_renamed_argument
from engine.config import as_source
from engine.outputs.ndvi import NDVI_NODATA, write_ndvi
from engine.progress import Progress

NAME = "ndvi"
HELP = "write the NDVI of an optical raster (B,G,R,NIR) as a float32 GeoTIFF (nodata -9999)"


def parse_bands(text: str) -> tuple[int, int, int, int]:
    """``"1,2,3,4"`` → (1, 2, 3, 4): 1-based indices of B, G, R, NIR."""
    try:
        bands = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands must be 4 comma-separated integers, got {text!r}") from None
    if len(bands) != 4 or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"--bands must be 4 positive integers B,G,R,NIR, got {text!r}")
    return bands  # type: ignore[return-value]


@contextmanager
def terminal_progress(desc: str) -> Iterator[Progress]:
    """A :class:`Progress` drawing a tqdm bar on stderr when it is a terminal (silent under the QGIS plugin)."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", disable=None, file=sys.stderr, leave=False)

    def update(fraction: float, message: str) -> None:
        bar.n = int(round(fraction * 1000))
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield Progress(callback=update)
    finally:
        bar.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_renamed_argument(parser, "--optical", "--input", required=True, type=as_source, dest="input",
                         help="optical raster with B, G, R, NIR bands (a file or any GDAL dataset name)")
    parser.add_argument("--out", required=True, type=Path, help="output NDVI GeoTIFF")
    parser.add_argument(
        "--bands", type=parse_bands, default=(1, 2, 3, 4), help="1-based band indices of B,G,R,NIR (default 1,2,3,4)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    add_clobber_argument(parser)


def run(args: argparse.Namespace) -> int:
    _, _, red, nir = args.bands
    with terminal_progress("NDVI") as progress:
        out = write_ndvi(args.input, args.out, red_band=red, nir_band=nir, progress=progress, clobber=args.clobber)
    if args.json:
        json.dump({"output": str(out), "red_band": red, "nir_band": nir, "nodata": NDVI_NODATA}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"NDVI written to {out}")
    return 0

