"""The settings of one engine run: the options table, and the dataclass shared by the CLI, the QGIS plugin,
benchmarks and Dask jobs.

Every run option is declared once, as a field of :class:`RunConfig` made with :func:`option`: its name, type
(``kind``), default, allowed values, help, CLI flag, short label, group and which models use it. :data:`OPTIONS`
is that table read back from the fields, and every front end is generated from it or reads it: the ``engine run``
parser (:mod:`engine.commands.run`), the plugin's command line (:func:`run_arguments`), the Processing parameters
(``aligncr_qgis/algorithms/declouding.py``) and the dialog's allowed values and ranges (``aligncr_qgis/dialog/``).
A new option is one field here plus its use in the engine.

Why one module for both: everything that decides the output lives here so that a run is reproducible from its
:class:`RunConfig` (``dataclasses.asdict`` is what goes into the report's "run settings"). Validation of the values
that do not need the files (tile geometry, band lists, enum options) happens in :meth:`RunConfig.validate`, before
any raster is opened, so a typo fails in milliseconds with a one-line :class:`~engine.errors.InputError`.

The QGIS plugin imports this module in QGIS's own Python (3.9 on Windows/macOS, often without numpy's friends):
it imports only the standard library and :mod:`engine.errors` at module level (``tests/test_config.py`` checks that
no torch, numpy or rasterio comes with it), and is written for Python 3.9.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.errors import InputError

SAR_UNITS = ("auto", "db", "linear", "amplitude")
OPTICAL_SCALES = ("auto", "dn", "reflectance")
SAR_RESAMPLINGS = ("nearest", "bilinear")
DEFAULT_BANDS = (1, 2, 3, 4)  # PlanetScope B, G, R, NIR
DEFAULT_SAR_BANDS = (1, 2)  # VV, VH
TEMPORAL_PATHS = ("optical_prev", "sar_prev", "optical_next", "sar_next")  # the extra dates' rasters
DATE_FIELDS = ("date", "date_prev", "date_next")
INPUT_FIELDS = ("optical", "sar", "sar_vv", "sar_vh", "landcover", "mask", "reference", "dem", *TEMPORAL_PATHS)
MAX_FEATHER = 512  # --cloud-feather, pixels: the cloud mask is read with this halo around each chunk
MAX_TTA = 8  # the order of D4, the flips and 90° rotations engine.stream.tta averages over
DEFAULT_CONFIDENCE_TTA = 4  # --confidence without --tta
MODES = ("best", "raw")  # --mode: what a run does by default (engine.stream.mode says what each means)
# each mode's own model, and the models with bundled weights in the order a mode falls back to (mode_model)
MODE_MODELS = {"best": "aligncr-res", "raw": "aligncr-lite"}
BUNDLED_MODELS = ("aligncr-res", "aligncr-lite")
# the run options each mode switches on whatever was asked (engine.stream.mode.resolve; the plugin shows them so)
MODE_SWITCHES: dict[str, tuple[str, ...]] = {"best": ("only_cloudy", "scene_check"), "raw": ()}
MAX_MEMORY_BUDGET_GB = 1e6  # --memory-budget: a petabyte; beyond, the byte count overflows
MAX_ADAPT_STEPS = 2000  # --adapt, steps: ~0.7 s each on 2 CPU cores; beyond, fine-tune on an archive
CONFIDENCE_NODATA = -1.0  # the confidence raster's no-data value (a spread is never negative)
COVERAGE_WARNING = 0.98  # an input covering less of the optical image is a warning (engine and plugin alike)
EDGES = ("north", "south", "west", "east")  # how a partial coverage says where the gap is
# --mask's words that name no file (engine.sources.resolve.resolve_mask decides what each gives): the product's own
# mask (else detect), the engine's cloud detector (the trained one where installed, else the rule), the rule.
MASK_AUTO, MASK_DETECT, MASK_RULE = "auto", "detect", "rule"
MASK_WORDS = (MASK_AUTO, MASK_DETECT, MASK_RULE)
TRAINED_PACKAGE = "ukis_csmask"  # the masks extra's trained cloud detector; its ONNX models ship inside the package


def trained_detector_version() -> str | None:
    """The installed ``ukis-csmask`` version when it and ``onnxruntime`` can both be imported (found, not imported:
    nothing heavy loads), else None. Standard library only: ``engine env`` asks it in a Python without numpy."""
    if importlib.util.find_spec(TRAINED_PACKAGE) is None or importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        return importlib.metadata.version("ukis-csmask")
    except importlib.metadata.PackageNotFoundError:
        return None

# What an option's value is; each front end maps a kind to its widget, parameter or argparse type.
KINDS = ("source", "path", "text", "int", "float", "bool", "choice", "bands", "time", "bounds")
# Groups, in the order ``engine run --help`` shows them; ``tiling`` is also what ``engine batch`` applies to
# every scene.
GROUPS = ("inputs", "model", "output", "tiling", "units", "extra dates")


@dataclass(frozen=True)
class Option:
    """One run option as every front end sees it: one row of :data:`OPTIONS`.

    ``default`` is the :class:`RunConfig` field's; ``flag`` the ``engine run`` option (``--no-…`` for a boolean
    that is on by default); ``label`` the dialog's / Processing's short name; ``models`` says which models use it
    (``all``, ``temporal``, ``gapfill``, ``dem`` …: the others ignore it, with a warning where it matters);
    ``minimum`` / ``maximum`` bound numbers in every front end; ``choice_labels`` name ``choices`` for people."""

    name: str
    kind: str
    default: Any
    help: str
    label: str = ""
    flag: str = ""
    group: str = "inputs"
    models: str = "all"
    choices: tuple[str, ...] = ()
    choice_labels: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    metavar: str | None = None
    required: bool = False

    def text(self, value: Any) -> str:
        """``value`` as it goes on the command line: ``3,2,1,4`` for bands, the number, the path, the text
        (a :class:`Bounds` writes itself as ``xmin,ymin,xmax,ymax[,CRS]``)."""
        if self.kind == "bands":
            return ",".join(str(v) for v in value) if not isinstance(value, str) else value
        if self.kind == "int":
            return str(int(value))
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)



# ---------------------------------------------------------------------------- option values: sources and times
# Parsing what a user typed is the options table's job (the CLI, the plugin and batch all pass strings): a GDAL
# dataset name must not be folded by Path, and a time is parsed the same way wherever it comes from.

_DRIVER_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")  # two letters at least: C:\\ is a Windows drive
_DATE_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y%m%dT%H%M%S", "%Y%m%d", "%Y-%m-%d")
# The raster tags an acquisition time is read from, in order (engine.sources.dates; the plugin reads them too).
DATE_TAGS = ("ACQUISITIONDATETIME", "TIFFTAG_DATETIME", "ACQUISITION_DATE", "DATE_ACQUIRED", "acquired")


def is_gdal_name(name: str | os.PathLike[str]) -> bool:
    """True for a dataset name that is not a plain path: ``/vsi…/…``, ``DRIVER:…`` (a subdataset), VRT XML.

    Such names must not go through :class:`pathlib.Path` (it folds ``/vsizip//abs`` into a relative path) nor an
    ``exists()`` check."""
    text = os.fspath(name)
    return text.startswith("/vsi") or text.lstrip().startswith("<VRTDataset") or bool(_DRIVER_PREFIX.match(text))


def is_mask_word(value: Any) -> bool:
    """True for ``--mask``'s words (:data:`MASK_WORDS`): no file to open, resolve or guard."""
    return isinstance(value, (str, os.PathLike)) and os.fspath(value) in MASK_WORDS


def absolute_name(value: Any) -> Any:
    """A file name made absolute against this process's current folder; GDAL names, ``--mask``'s words and
    non-paths as they are. Why: the plugin starts the engine in its own folder, so a relative name it passes would be
    read (or written) there, not where the user meant (issue 25)."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value) or is_mask_word(value):
        return value
    return value if is_gdal_name(value) else os.path.abspath(os.path.expanduser(os.fspath(value)))


def as_source(value: str | os.PathLike[str]) -> Path | str:
    """A configuration's input value: a :class:`Path` for a file, the string itself for any other GDAL name."""
    return os.fspath(value) if is_gdal_name(value) else Path(value)


def parse_datetime(text: str) -> datetime:
    """Parse a metadata date string (ISO 8601, TIFF ``YYYY:MM:DD HH:MM:SS``, compact forms) into an aware UTC time."""
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt: datetime | None = None
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        for fmt in _DATE_FORMATS:
            try:
                dt = datetime.strptime(s, fmt)
                break
            except ValueError:
                continue
    if dt is None:
        raise InputError(f"cannot read an acquisition date from '{text}' (expected ISO 8601 or YYYY:MM:DD HH:MM:SS)")
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def option(default: Any, help: str, *, kind: str, **row: Any) -> Any:
    """A :class:`RunConfig` field that is also a row of the options table (``row``: :class:`Option`'s fields)."""
    if kind not in KINDS:
        raise ValueError(f"unknown option kind {kind!r}")
    return field(default=default, metadata={"option": dict(row, kind=kind, help=help)})


def flag(field_name: str) -> str:
    """The ``engine run`` option of a :class:`RunConfig` field: ``optical_prev`` → ``--optical-prev``."""
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class Bounds:
    """``--bounds``: the window to process, in ``crs`` (None: the optical image's CRS); the engine snaps it
    outwards to the optical pixel grid (:mod:`engine.sources.bounds`)."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    crs: str | None = None

    @classmethod
    def parse(cls, text: str) -> Bounds:
        """``"xmin,ymin,xmax,ymax[,CRS]"`` (CRS: anything GDAL reads, e.g. ``EPSG:4326``) or one-line InputError."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            numbers = [float(p) for p in parts[:4]]
        except ValueError:
            numbers = []
        if len(numbers) != 4 or any(n != n or n in (float("inf"), float("-inf")) for n in numbers):
            raise InputError(f"--bounds must be xmin,ymin,xmax,ymax[,CRS] with four numbers, got '{text}'")
        crs = ",".join(parts[4:]) or None
        bounds = cls(*numbers, crs=crs)
        if not (bounds.xmin < bounds.xmax and bounds.ymin < bounds.ymax):
            raise InputError(f"--bounds must have xmin < xmax and ymin < ymax, got '{text}'")
        return bounds

    def __str__(self) -> str:
        numbers = ",".join(repr(float(v)) for v in (self.xmin, self.ymin, self.xmax, self.ymax))
        return f"{numbers},{self.crs}" if self.crs else numbers


@dataclass
class RunConfig:
    """One cloud-removal run: inputs, output, model, tiling and unit handling. Each field with an :func:`option`
    is a row of the options table (see the module docstring); its help says what it does.

    ``bands`` / ``sar_bands`` are 1-based band indices into the optical / SAR files (Sentinel-2 B2, B3, B4, B8 in
    a 13-band L1C file are ``(2, 3, 4, 8)``). ``model=None`` means the default model (bundled ``aligncr-lite``
    weights when present, else ``identity``). ``chunk`` is the side, in pixels, of the processing chunk on the
    global tile grid: it bounds memory and does not change the result (not a CLI option).

    Temporal models (those with a ``temporal_inputs`` attribute: ``msop-unet``, ``gapfill``) also take the images
    acquired before (``optical_prev``, ``sar_prev``) and after (``optical_next``, ``sar_next``) the cloudy one;
    they are aligned and normalised like ``optical`` / ``sar``. ``date`` / ``date_prev`` / ``date_next`` are the
    acquisition times (datetimes or ISO 8601 strings) for models that need them (``gapfill``); when absent they are
    read from the files' tags (:func:`engine.sources.dates.read_acquisition_date`). Other models ignore all of these.

    ``sar`` may be ``None`` only for a model that takes no SAR (``uses_sar = False`` on its class: ``gapfill``);
    the pipeline says so in one line for any other model. ``out`` is required (give it by keyword: it follows the
    optional ``sar``). ``dem`` is a one-band elevation raster in metres (any CRS/resolution) for models built with
    ``dem=True`` (the Cresson 2022 U-Nets; see :mod:`engine.align.dem`); other models ignore it with a warning.

    ``only_cloudy`` keeps every pixel that ``mask`` does not mark as cloud exactly as the input and puts the
    model's output on the cloud, feathered over ``cloud_feather`` pixels beyond it (:mod:`engine.stream.composite`);
    without ``mask`` the cloud is detected on the optical image (:mod:`engine.align.cloudmask`). Off, the output is the
    model's everywhere, as in the paper. ``qa`` also writes, on the output's grid, the percent of each pixel that
    is the model's output (0 = as acquired, 100 = reconstructed; 255 = no optical data).

    ``tta`` runs the model on that many flips/rotations of each tile and outputs their mean (:mod:`engine.stream.tta`;
    ``None`` or 1 = off); ``confidence`` also writes, on the output's grid, their per-pixel spread in reflectance
    (``-1`` = no optical data). ``confidence`` without ``tta`` means ``tta = 4``; the resolved number is what
    :attr:`tta` holds after construction (and what reports record).
    ``memory_budget`` (GB) bounds one tile's forward plus the pipeline's buffers (:mod:`engine.stream.memory`): a tile
    that does not fit is refused with the largest one that does; ``None`` takes 80 % of the available memory.
    ``tile`` is the largest tile: on a scene smaller than it the tiles shrink to the scene
    (:mod:`engine.stream.tiling`). ``bounds`` processes only that window of the optical image (any CRS, snapped to the
    optical grid); the output is that window, georeferenced.
    """

    optical: Path | str = option(
        None, "cloudy optical raster (≥ 4 bands), a Sentinel-2 L1C/L2A .SAFE folder or .zip, or any GDAL dataset "
        "name (/vsizip/…, a .vrt, a subdataset)", kind="source", label="Cloudy optical image (B, G, R, NIR)",
        required=True)
    sar: Path | str | None = option(
        None, "Sentinel-1: a 2-band VV, VH raster (dB, linear power or amplitude), an RTC product or a GRD .SAFE "
        "folder or .zip; required except for gapfill", kind="source", models="sar",
        label="Sentinel-1 SAR image (VV, VH; not for gapfill)")
    out: Path = option(None, "output GeoTIFF (written atomically)", kind="path", label="Declouded image",
                       group="output", required=True)
    clobber: bool = option(
        True, "refuse to replace an output file (--out, --qa, --confidence, the report's files) that exists already "
        "(default: an existing output is replaced, once the run has succeeded)", kind="bool", flag="--no-clobber",
        group="output", label="Replace an existing output file")
    landcover: Path | str | None = option(None, "ESA WorldCover land-cover raster (for the report)", kind="source",
                                          label="Land cover (ESA WorldCover codes)")
    mask: Path | str | None = option(
        None, "cloud mask: 1 band (1 = cloud), Planet UDM2 (8 bands); or 'auto': the mask that comes with the "
        "optical product (UDM2 beside a PlanetScope file, L2A SCL), else detect; 'detect' (the default): clouds and "
        "their shadows found by the trained detector (ukis-csmask, the 'masks' extra), else by the hand-made rule; "
        "'rule': the hand-made brightness rule", kind="source",
        label="Cloud mask (binary or Planet UDM2)")  # a file, a GDAL name, or one of MASK_WORDS
    reference: Path | str | None = option(None, "cloud-free reference image (for the report's metrics)",
                                          kind="source", label="Cloud-free reference (metrics in the report)")
    mode: str = option(
        "best", "best (default): the bundled residual model (aligncr-res), only the cloud "
        "replaced, and a scene check on the scene's own clear ground that falls back to the non-learned estimate "
        "where the model loses there; raw: the network's output everywhere and nothing else unless asked (the "
        "paper's setting; default model aligncr-lite)", kind="choice", choices=MODES,
        choice_labels=("Best: residual model, checked on this scene", "Raw network output everywhere"),
        label="Mode", group="model")
    model: str | None = option(None, "registry model name (default: the mode's bundled model, else identity)",
                               kind="text", label="Model", group="model")
    weights: Path | None = option(None, ".safetensors weights file with its model card", kind="path",
                                  label="Weights (.safetensors; overrides the model)", group="model")
    device: str = option("auto", "auto | cpu | cuda | cuda:N (default {default})", kind="text",
                         label="Device (auto, cpu, cuda or cuda:N)", group="tiling")
    tile: int = option(256, "tile size in pixels (default {default})", kind="int", label="Tile size (px)",
                       group="tiling", minimum=16, maximum=8192)
    overlap: int = option(32, "tile overlap in pixels, blended (default {default})", kind="int",
                          label="Tile overlap (px)", group="tiling", minimum=0, maximum=2048)
    batch: int = option(4, "tiles per forward pass (default {default})", kind="int", label="Batch size",
                        group="tiling", minimum=1, maximum=512)
    cog: bool = option(False, "write Cloud-Optimized GeoTIFF output with overviews", kind="bool",
                       label="Write a cloud-optimised GeoTIFF", group="tiling")
    bands: tuple[int, ...] = option(DEFAULT_BANDS, "optical B,G,R,NIR band indices", kind="bands", label="Bands",
                                    group="units")
    sar_bands: tuple[int, ...] = option(DEFAULT_SAR_BANDS, "SAR VV,VH band indices (default 1,2)", kind="bands",
                                        label="SAR bands", group="units", models="sar")
    sar_units: str = option("auto", "SAR units (default: detect)", kind="choice", choices=SAR_UNITS,
                            choice_labels=("Auto-detect", "dB", "Linear power", "Amplitude"), label="SAR units",
                            group="units", models="sar")
    optical_scale: str = option("auto", "optical units: DN ×10⁴ or reflectance", kind="choice",
                                choices=OPTICAL_SCALES, label="Optical units", group="units",
                                choice_labels=("Auto-detect", "Digital numbers (reflectance × 10⁴)",
                                               "Reflectance 0–1"))  # fmt: skip
    sar_resampling: str = option("nearest", "SAR upsampling", kind="choice", choices=SAR_RESAMPLINGS,
                                 choice_labels=("Nearest (as in the paper)", "Bilinear"), label="SAR upsampling",
                                 group="units", models="sar")
    report: Path | None = option(None, "also write a metrics/figures report into this folder", kind="path",
                                 label="Report folder", group="output")
    baselines: bool = option(
        True, "with --report and --reference: skip scoring the non-learned baselines (flat, fill) and the output's "
        "margin over them inside the cloud (default: scored)", kind="bool", flag="--no-baselines", group="output",
        label="Score the non-learned baselines in the report")
    chunk: int = 1024
    optical_prev: Path | None = option(None, "optical image acquired before the cloudy one (t-1)", kind="source",
                                       label="Optical image before the cloudy one (t−1; temporal models)",
                                       group="extra dates", models="temporal", metavar="FILE")
    optical_next: Path | None = option(None, "optical image acquired after the cloudy one (t+1)", kind="source",
                                       label="Optical image after the cloudy one (t+1; temporal models)",
                                       group="extra dates", models="temporal", metavar="FILE")
    sar_prev: Path | None = option(None, "SAR image acquired with --optical-prev (t-1; msop-unet)", kind="source",
                                   label="SAR image before (t−1; msop-unet)", group="extra dates",
                                   models="msop-unet", metavar="FILE")
    sar_next: Path | None = option(None, "SAR image acquired with --optical-next (t+1; msop-unet)", kind="source",
                                   label="SAR image after (t+1; msop-unet)", group="extra dates",
                                   models="msop-unet", metavar="FILE")
    date: datetime | None = option(
        None, "acquisition time of --optical, ISO 8601 (gapfill; default: the file's tags)", kind="time",
        label="Acquisition time of the cloudy image (ISO 8601; gapfill; default: its metadata)",
        group="extra dates", models="gapfill", metavar="TIME")
    date_prev: datetime | None = option(None, "acquisition time of --optical-prev (default: its tags)", kind="time",
                                        label="Acquisition time before (t−1; default: its metadata)",
                                        group="extra dates", models="gapfill", metavar="TIME")
    date_next: datetime | None = option(None, "acquisition time of --optical-next (default: its tags)", kind="time",
                                        label="Acquisition time after (t+1; default: its metadata)",
                                        group="extra dates", models="gapfill", metavar="TIME")
    dem: Path | None = option(
        None, "elevation raster in metres, 1 band, any CRS (models built with dem=True: ssop-unet/msop-unet +DEM)",
        kind="source", label="DEM, elevation in metres (models built with a DEM input)", models="dem",
        metavar="FILE")
    only_cloudy: bool = option(
        False, "replace only the pixels --mask marks as cloud (without --mask: the clouds detected on the optical "
        "image); keep every clear pixel as the input (default: the model's output everywhere, as in the paper)",
        kind="bool", label="Replace only the cloud, keep clear pixels as the input (mask cloud, else detected)",
        group="tiling")
    cloud_feather: int = option(
        8, "with --only-cloudy: blend model and input over this many pixels beyond the cloud (0 = hard edge; "
        "default {default})", kind="int", label="Feather beyond the cloud (px; with 'Replace only the cloud')",
        group="tiling", minimum=0, maximum=MAX_FEATHER, metavar="PX")
    qa: Path | None = option(
        None, "also write a QA GeoTIFF: percent of each pixel from the model (0 = as acquired, 100 = reconstructed, "
        "255 = no data)", kind="path", group="output", metavar="FILE",
        label="QA layer: percent of each pixel from the model (0 = as acquired, 100 = reconstructed)")
    confidence: Path | None = option(
        None, "also write a confidence GeoTIFF: the spread (std, reflectance) of the model's output over --tta "
        f"flips/rotations; high = guessing (0 = as acquired, {CONFIDENCE_NODATA:g} = no data; implies --tta "
        f"{DEFAULT_CONFIDENCE_TTA})", kind="path", group="output", metavar="FILE",
        label="Confidence layer: spread of the model's output over test-time flips/rotations (reflectance; high = "
        "guessing)")
    tta: int | None = option(
        None, f"test-time augmentation: output the mean of the model over N (2-{MAX_TTA}) flips/90° rotations of "
        f"each tile, N times slower (default 1 = off; {DEFAULT_CONFIDENCE_TTA} with --confidence)", kind="int",
        group="tiling", minimum=1, maximum=MAX_TTA, metavar="N",
        label="Test-time augmentation passes: the mean over flips/rotations (0 = off, or 4 with a confidence "
        "layer; up to 8)")
    adapt: int | None = option(
        None, "scene adaptation: first fine-tune this run's copy of the model for STEPS steps on the scene's own "
        "clear pixels with synthetic clouds (the cloud itself never a target; the weights file is unchanged; "
        "default: off in both modes, as measured it did not pay for its time: docs/model.md)", kind="int",
        group="tiling",
        minimum=0, maximum=MAX_ADAPT_STEPS, metavar="STEPS",
        label="Adapt to this scene first: fine-tuning steps on its clear pixels (empty = the mode's: off; 0 = off)")
    scene_check: bool = option(
        False, "scene check: score the model beside a flat colour and a smooth fill under synthetic clouds laid on a "
        "few of the scene's clear windows, and say which wins (no reference needed; a few seconds; with --adapt "
        "those clouds are held out of the adaptation)", kind="bool", group="tiling",
        label="Check the model on this scene's clear ground (synthetic clouds: model vs flat colour and fill)")
    colour_anchor: bool = option(
        False, "colour anchor: take the model's colour drift out of the inside of each cloud (the cloud of --mask, "
        "else the detected one), fitted against the clear pixels' median; the cloud's edge and the model's texture "
        "are kept (it assumes the ground under the cloud has the clear ground's colour on average)", kind="bool",
        group="tiling", label="Anchor the colour inside the clouds to the clear pixels (removes the model's cast)")
    memory_budget: float | None = option(
        None, "memory for the network's tiles and the buffers; a larger --tile is refused with the largest that "
        "fits (default: 80 % of the available memory)", kind="float", group="tiling", metavar="GB",
        label="Memory budget (GB)")
    sar_vv: Path | str | None = option(None, "split polarisations: the VV raster (with --sar-vh, instead of --sar)",
                                       kind="source", metavar="FILE", label="SAR VV raster", models="sar")
    sar_vh: Path | str | None = option(None, "split polarisations: the VH raster", kind="source", metavar="FILE",
                                       label="SAR VH raster", models="sar")
    bounds: Bounds | None = option(
        None, "process only this window of the optical image: xmin,ymin,xmax,ymax in the optical CRS, or in CRS "
        "when given (e.g. EPSG:4326); snapped outwards to the optical pixels, the output is that window",
        kind="bounds", metavar="XMIN,YMIN,XMAX,YMAX[,CRS]", label="Processing extent (default: whole image)")

    def __post_init__(self) -> None:
        missing = [name for name in ("optical", "out") if getattr(self, name) is None]
        if missing:
            raise TypeError(f"RunConfig needs {' and '.join(missing)}")
        for name in ("out", "weights", "report", "qa", "confidence"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self._convert_inputs()
        self.bands = tuple(int(b) for b in self.bands)
        self.sar_bands = tuple(int(b) for b in self.sar_bands)
        if self.tta is None:
            self.tta = DEFAULT_CONFIDENCE_TTA if self.confidence is not None else 1
        if self.bounds is not None and not isinstance(self.bounds, Bounds):
            self.bounds = Bounds.parse(self.bounds)

    def _convert_inputs(self) -> None:
        """Input names to :func:`as_source` values and dates to datetimes."""
        for name in INPUT_FIELDS:  # GDAL names (/vsizip//abs/…, DRIVER:…) stay strings: Path would fold them
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, as_source(value))
        for name in DATE_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, datetime):
                setattr(self, name, parse_datetime(str(value)))

    def validate(self) -> None:
        """Check the settings that need no file; raise :class:`InputError` with one line on the first problem."""
        check_options({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def temporal_paths(self) -> dict[str, Path]:
        """The extra dates' rasters that were given, by field name (``optical_prev`` …)."""
        return {name: getattr(self, name) for name in TEMPORAL_PATHS if getattr(self, name) is not None}

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly settings (paths as strings) for reports and logs."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Path, Bounds)):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def mode_model(mode: str, bundled: Container[str]) -> str:
    """The model a run of ``mode`` uses without ``--model``/``--weights``, given the names of the models whose
    bundled weights are present: the mode's own, else another bundled one, else the ``identity`` baseline. Here,
    standard library only, because the engine (:func:`engine.stream.mode.default_model`, from the files) and the
    plugin's model list (from the bundled cards, without torch) must apply the same rule."""
    preferred = [MODE_MODELS.get(mode, MODE_MODELS["best"]), *BUNDLED_MODELS]
    return next((name for name in preferred if name in bundled), "identity")


def check_options(values: Mapping[str, Any]) -> None:
    """The rules on option values that need no file (an option left out has its default); raise
    :class:`InputError` with one line on the first problem. Standard library only, so the plugin's dialog checks
    its values with the engine's rules and words before a run (:meth:`RunConfig.validate` runs the same)."""
    v = {**{name: row.default for name, row in OPTIONS.items()}, "chunk": 1, **values}
    if v["tile"] < 16:
        raise InputError(f"--tile must be at least 16 pixels, got {v['tile']}")
    if v["overlap"] < 0 or 2 * v["overlap"] >= v["tile"]:
        raise InputError(f"--overlap must be in [0, tile/2) = [0, {v['tile'] // 2}), got {v['overlap']}")
    if v["batch"] < 1:
        raise InputError(f"--batch must be at least 1, got {v['batch']}")
    if v["chunk"] < 1:
        raise InputError(f"chunk must be at least 1 pixel, got {v['chunk']}")
    _check_bands(tuple(v["bands"]), tuple(v["sar_bands"]))
    _check_sar_inputs(v)
    if v["qa"] is not None and Path(v["qa"]).resolve() == Path(v["out"]).resolve():
        raise InputError(f"--qa must be another file than --out, got {v['qa']} for both")
    _check_tta(v)
    if v["only_cloudy"] and (v["mask"] is None or is_mask_word(v["mask"])) and len(v["bands"]) != 4:
        raise InputError(f"--only-cloudy without --mask detects clouds on B, G, R, NIR; --bands lists "
                         f"{len(v['bands'])} bands: give a cloud mask with --mask")  # fmt: skip
    if v["memory_budget"] is not None and not 0 < v["memory_budget"] <= MAX_MEMORY_BUDGET_GB:
        raise InputError(f"--memory-budget must be a positive, finite number of GB (at most {MAX_MEMORY_BUDGET_GB:g}), "
                         f"got {v['memory_budget']}")  # fmt: skip
    if v["adapt"] is not None and not 0 <= v["adapt"] <= MAX_ADAPT_STEPS:
        raise InputError(f"--adapt must be 0 (off) to {MAX_ADAPT_STEPS} steps, got {v['adapt']}")
    if not 0 <= v["cloud_feather"] <= MAX_FEATHER:
        raise InputError(f"--cloud-feather must be in [0, {MAX_FEATHER}] pixels, got {v['cloud_feather']}")
    for row in OPTIONS.values():
        if row.choices and v[row.name] not in row.choices:
            raise InputError(f"{row.flag} must be one of {', '.join(row.choices)}, got '{v[row.name]}'")


def _check_bands(bands: tuple[int, ...], sar_bands: tuple[int, ...]) -> None:
    if len(bands) < 1 or any(b < 1 for b in bands) or len(set(bands)) != len(bands):
        raise InputError(f"--bands must be distinct 1-based band indices, got {','.join(map(str, bands))}")
    if len(sar_bands) != 2 or any(b < 1 for b in sar_bands) or len(set(sar_bands)) != 2:
        raise InputError(f"--sar-bands must be two distinct 1-based indices (VV,VH), got "
                         f"{','.join(map(str, sar_bands))}")  # fmt: skip


def _check_sar_inputs(v: Mapping[str, Any]) -> None:
    if v["sar"] is not None and (v["sar_vv"] is not None or v["sar_vh"] is not None):
        raise InputError("give the SAR either as --sar or as --sar-vv and --sar-vh, not both")
    if (v["sar_vv"] is None) != (v["sar_vh"] is None):
        raise InputError(f"split polarisations need both --sar-vv and --sar-vh; "
                         f"{'--sar-vh' if v['sar_vh'] is None else '--sar-vv'} is missing")  # fmt: skip


def _check_tta(v: Mapping[str, Any]) -> None:
    """``tta`` None is what RunConfig resolves it to: 1, or 4 with a confidence layer."""
    tta = v["tta"] if v["tta"] is not None else (DEFAULT_CONFIDENCE_TTA if v["confidence"] is not None else 1)
    if not 1 <= tta <= MAX_TTA:
        raise InputError(f"--tta must be 1 to {MAX_TTA} transforms (flips and 90° rotations), got {tta}")
    if v["confidence"] is None:
        return
    if tta < 2:
        raise InputError(f"--confidence needs --tta of 2 or more (the spread of one output is 0), got {tta}")
    for name, path in (("--out", v["out"]), ("--qa", v["qa"])):
        if path is not None and Path(v["confidence"]).resolve() == Path(path).resolve():
            raise InputError(f"--confidence must be another file than {name}, got {v['confidence']} for both")


def _table() -> dict[str, Option]:
    """The options table, read from :class:`RunConfig`'s fields (in their order)."""
    rows = {}
    for f in dataclasses.fields(RunConfig):
        row = f.metadata.get("option")
        if row is not None:
            rows[f.name] = Option(name=f.name, default=f.default, **{"flag": flag(f.name), **row})
    return rows


OPTIONS: dict[str, Option] = _table()


def run_arguments(values: Mapping[str, Any]) -> list[str]:
    """The ``engine run`` command line for ``values`` (option name → value, as typed: text, numbers, tuples).

    Options follow the table's order; one left out, None, empty or equal to its default is not passed (the
    engine's default applies); a boolean is its flag alone. Why here: the plugin (dialog and Processing) builds
    its command line from the same table the engine parses it with, so the two cannot drift."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise TypeError(f"not a run option: {', '.join(unknown)}")
    args = ["run"]
    for name, row in OPTIONS.items():
        value = values.get(name)
        if value is None or value == "" or _same(value, row.default):
            continue
        if row.kind == "bool":
            if bool(value) != bool(row.default):
                args.append(row.flag)
            continue
        text = row.text(value)
        # one token when the value may start with "-": argparse takes "--bounds -70.5,…" for two options
        args += [f"{row.flag}={text}"] if text.startswith("-") or row.kind == "bounds" else [row.flag, text]
    return args


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, (tuple, list)) and isinstance(default, tuple):
        return tuple(int(v) for v in value) == default
    return type(value) is type(default) and value == default


def parse_band_list(text: str) -> tuple[int, ...]:
    """``"1,2,3,4"`` → ``(1, 2, 3, 4)``; raises :class:`InputError` on anything else."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"band list must be comma-separated integers like 1,2,3,4, got '{text}'") from None
