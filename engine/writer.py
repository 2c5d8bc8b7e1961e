"""Atomic, windowed GeoTIFF (and Cloud-Optimized GeoTIFF) writing.

The output is written block by block into a hidden temporary file *in the destination folder* (same file
system, so the final ``os.replace`` is an atomic rename) and renamed only when the run succeeded: a crash, an
error or a user cancel never leaves a half-written file under the requested name. The temporary name ends in
``.tmp.tif`` (git-ignored) and is removed on failure.

Layout: internal tiles 512 wide and 512 (or, to match the engine's chunk rows, slightly fewer, e.g. 448) rows
high, DEFLATE; predictor 2 (horizontal differencing) for integer data as asked for
PlanetScope DN, predictor 3 (floating-point) for float data, where GDAL/libtiff's predictor 2 gains little.
``cog=True`` writes the plain tiled GeoTIFF first, then lets GDAL's COG driver copy it with overviews
(averaged) into a second temporary file, since a COG must be written in one ordered pass with its overviews first.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from engine.errors import OutputError
from engine.provenance import RasterMetadata, folded
from engine.provenance import apply as apply_metadata

BLOCK = 512


@dataclass(frozen=True)
class OutputSpec:
    """Geometry and encoding of the output raster."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...]
    block_height: int = BLOCK  # see engine.tiling.output_block_height: chosen so chunk rows fill whole blocks
    metadata: RasterMetadata | None = None  # tags, band tags, scales/offsets, units (engine.provenance)


def check_output_path(out: Path, inputs: list[Path]) -> None:
    """Fail early (before any work) if ``out`` cannot be created or would overwrite an input."""
    out = Path(out)
    if out.exists() and out.is_dir():
        raise OutputError(f"output path is a folder, give a file name: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.exists():
        raise OutputError(f"output folder does not exist: {parent}")
    if not parent.is_dir():
        raise OutputError(f"output folder is not a folder: {parent}")
    resolved = out.resolve()
    for inp in inputs:
        if inp is None:
            continue
        same = resolved == Path(inp).resolve()
        if not same and out.exists() and Path(inp).exists():
            same = os.path.samefile(out, inp)
        if same:
            raise OutputError(f"output would overwrite an input file: {out}")
    probe = parent / f".{out.name}.{uuid.uuid4().hex[:8]}.probe.tmp.tif"
    try:
        probe.touch()
    except OSError as exc:
        raise OutputError(f"output folder is not writable: {parent} ({exc.strerror})") from None
    probe.unlink(missing_ok=True)


def compression_threads() -> int:
    """GDAL threads that compress the output's blocks (GTiff/COG ``NUM_THREADS``): up to 4 of this machine's cores.

    Why: DEFLATE was the slowest step of the raster path — with the identity model on 2 cores, 1.85 of 4.2 s for a
    4096² scene, the writer thread alone capping the run near 9 Mpix/s whatever the GPU does. Blocks compress
    independently, so the file's pixels are the same; 2 threads there took a 4096² identity run from 5.6 to
    6.5 Mpix/s. More than 4 gains little at the engine's block rate and would crowd the network's threads.
    """
    return max(1, min(4, os.cpu_count() or 1))


def _creation_options(dtype: str, block_height: int) -> dict:
    predictor = 3 if np.dtype(dtype).kind == "f" else 2
    return {
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": block_height,
        "compress": "deflate",
        "predictor": predictor,
        "num_threads": str(compression_threads()),
    }


class AtomicGeoTIFFWriter:
    """Context manager writing windows into a temporary GeoTIFF that becomes ``path`` only on a clean exit.

    ``with AtomicGeoTIFFWriter(path, spec, cog=False) as w: w.write(array, window)``. On an exception inside the
    ``with`` block the temporary file is deleted and the exception propagates; ``path`` is untouched.
    """

    def __init__(self, path: Path, spec: OutputSpec, cog: bool = False) -> None:
        self.path = Path(path)
        self.spec = spec
        self.cog = cog
        tag = uuid.uuid4().hex[:8]
        self.tmp = self.path.parent / f".{self.path.name}.{tag}.tmp.tif"
        self.tmp_cog = self.path.parent / f".{self.path.name}.{tag}.cog.tmp.tif"
        self._ds: rasterio.io.DatasetWriter | None = None

    def __enter__(self) -> AtomicGeoTIFFWriter:
        s = self.spec
        try:
            self._ds = rasterio.open(
                self.tmp,
                "w",
                driver="GTiff",
                width=s.width,
                height=s.height,
                count=s.count,
                dtype=s.dtype,
                crs=s.crs,
                transform=s.transform,
                nodata=s.nodata,
                BIGTIFF="IF_SAFER",
                **_creation_options(s.dtype, s.block_height),
            )
        except Exception as exc:
            self._cleanup()
            raise OutputError(f"cannot create the output file in {self.path.parent}: {exc}") from None
        for i, desc in enumerate(s.descriptions, start=1):
            if desc:
                self._ds.set_band_description(i, desc)
        if s.metadata is not None:  # the COG copy keeps only the default domain: fold the others into it
            apply_metadata(self._ds, folded(s.metadata) if self.cog else s.metadata)
        return self

    def write(self, data: np.ndarray, window: Window) -> None:
        assert self._ds is not None
        self._ds.write(data.astype(self.spec.dtype, copy=False), window=window)

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None
        if exc_type is not None:
            self._cleanup()
            return
        try:
            final = self.tmp
            if self.cog:
                rasterio.shutil.copy(
                    self.tmp,
                    self.tmp_cog,
                    driver="COG",
                    COMPRESS="DEFLATE",
                    PREDICTOR="YES",
                    BLOCKSIZE=BLOCK,
                    OVERVIEWS="AUTO",
                    OVERVIEW_RESAMPLING="AVERAGE",
                    NUM_THREADS=str(compression_threads()),
                    BIGTIFF="IF_SAFER",
                )
                self.tmp.unlink(missing_ok=True)
                final = self.tmp_cog
            os.replace(final, self.path)
        except OSError as err:
            self._cleanup()
            raise OutputError(f"cannot finish the output file {self.path}: {err}") from None
        except BaseException:
            self._cleanup()
            raise

    def _cleanup(self) -> None:
        for p in (self.tmp, self.tmp_cog):
            p.unlink(missing_ok=True)
            Path(str(p) + ".aux.xml").unlink(missing_ok=True)
