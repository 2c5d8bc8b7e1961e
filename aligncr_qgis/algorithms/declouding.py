"""``aligncr:declouding`` — the dialog's run as a Processing algorithm (model builder, batch, qgis_process).

Every input of the toolbar dialog is a typed parameter; the optional EXTENT clips the inputs with GDAL virtual
rasters exactly as the dialog does (the engine has no extent flag). The declouded layer gets the dialog's RGB
style (the output keeps the optical band layout, so R/G/B come from the band parameters; 2–98 % cumulative
cut) when QGIS loads it.

Temporal models (MODEL ``msop-unet`` or ``gapfill``) take the optional extra-date parameters: OPTICAL_PREV /
SAR_PREV / OPTICAL_NEXT / SAR_NEXT (the engine's ``--optical-prev`` …) and DATE / DATE_PREV / DATE_NEXT (ISO 8601;
empty = from the files' tags). The engine says in one line which one a model is missing, and warns when a model
ignores them. SAR is optional: ``gapfill`` takes none, and the engine refuses any other model without it in one
line. DEM is the elevation raster of U-Nets built with a DEM input (the engine's ``--dem``; ignored with a warning by
the other models).
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from aligncr_qgis.algorithms.base import EngineAlgorithm, tr
from aligncr_qgis.engine_process import RunRequest
from aligncr_qgis.extent_clip import MARGIN_PIXELS, clip_to_extent
from aligncr_qgis.layers import LayerError, is_metric_projected
from aligncr_qgis.model_list import DEFAULT, engine_default, registry_models
from aligncr_qgis.settings import PluginSettings
from aligncr_qgis.styling import style_confidence, style_qa, style_rgb

UNITS = ["auto", "db", "linear"]
SCALES = ["auto", "dn", "reflectance"]
RESAMPLINGS = ["nearest", "bilinear"]
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


class _RgbStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies the RGB style once QGIS has loaded the output (the output keeps the optical band layout)."""

    def __init__(self, bands: tuple[int, ...]) -> None:
        super().__init__()
        self.bands = bands

    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802 - QGIS API
        blue, green, red = self.bands[:3]
        style_rgb(layer, red, green, blue)


class _QaStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the QA layer once loaded: transparent where as acquired, coloured where the model wrote."""

    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802 - QGIS API
        style_qa(layer)


class _ConfidenceStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the confidence layer once loaded: a heat map of the TTA spread, transparent where as acquired."""

    def postProcessLayer(self, layer: Any, context: Any, feedback: Any) -> None:  # noqa: N802 - QGIS API
        style_confidence(layer)


# QGIS runs processAlgorithm on a copy of the algorithm and deletes it before it loads the results, so stylers owned
# by that copy were gone by then (the layers loaded unstyled): the post-processors live here, for the session.
_QA_STYLER, _CONFIDENCE_STYLER = _QaStyler(), _ConfidenceStyler()
_RGB_STYLERS: dict[tuple[int, ...], _RgbStyler] = {}


def _rgb_styler(bands: tuple[int, ...]) -> _RgbStyler:
    return _RGB_STYLERS.setdefault(tuple(bands), _RgbStyler(tuple(bands)))


class DecloudingAlgorithm(EngineAlgorithm):
    OPTICAL, SAR, LANDCOVER, MASK, REFERENCE = "OPTICAL", "SAR", "LANDCOVER", "MASK", "REFERENCE"
    BANDS = ("BAND_B", "BAND_G", "BAND_R", "BAND_NIR")
    SAR_BANDS = ("BAND_VV", "BAND_VH")
    SAR_UNITS, MODEL, WEIGHTS, DEVICE = "SAR_UNITS", "MODEL", "WEIGHTS", "DEVICE"
    TILE, OVERLAP, BATCH, COG, EXTENT = "TILE", "OVERLAP", "BATCH", "COG", "EXTENT"
    OPTICAL_SCALE, SAR_RESAMPLING = "OPTICAL_SCALE", "SAR_RESAMPLING"
    OUTPUT, REPORT = "OUTPUT", "REPORT"
    DEM = "DEM"
    ONLY_CLOUDY, CLOUD_FEATHER = "ONLY_CLOUDY", "CLOUD_FEATHER"
    QA = "QA"
    CONFIDENCE, TTA = "CONFIDENCE", "TTA"
    # extra dates of temporal models: parameter name → (RunRequest field, label)
    EXTRA_LAYERS = {
        "OPTICAL_PREV": ("optical_prev", "Optical image before the cloudy one (t−1; temporal models)"),
        "SAR_PREV": ("sar_prev", "SAR image before (t−1; msop-unet)"),
        "OPTICAL_NEXT": ("optical_next", "Optical image after the cloudy one (t+1; temporal models)"),
        "SAR_NEXT": ("sar_next", "SAR image after (t+1; msop-unet)"),
    }
    EXTRA_DATES = {
        "DATE": ("date", "Acquisition time of the cloudy image (ISO 8601; gapfill; default: its metadata)"),
        "DATE_PREV": ("date_prev", "Acquisition time before (t−1; default: its metadata)"),
        "DATE_NEXT": ("date_next", "Acquisition time after (t+1; default: its metadata)"),
    }

    def name(self) -> str:
        return "declouding"

    def displayName(self) -> str:  # noqa: N802 - QGIS API
        return tr("Cloud removal (Align-CR, SAR-guided)")

    def shortHelpString(self) -> str:  # noqa: N802 - QGIS API
        return (
            tr("Removes clouds from a high-resolution optical image (B, G, R, NIR; e.g. PlanetScope 3 m) using a "
            "Sentinel-1 SAR image (VV, VH) of the same place. The SAR, land-cover and mask rasters are reprojected "
            "onto the optical grid by the engine. The optical CRS must be projected in metres.\n"
            "Temporal models (msop-unet, gapfill) also take the images acquired before (t−1) and after (t+1) the "
            "cloudy one — msop-unet the optical and SAR pairs, gapfill the optical ones and their acquisition "
            "times (read from the files' metadata unless given). With a cloud mask, gapfill fills only the cloudy "
            "pixels. gapfill uses no SAR: leave the SAR image empty (every other model needs it).\n"
            "'Replace only the cloud' keeps every clear pixel exactly as the input and blends the model's output "
            "into it over the feather width beyond the cloud (advanced); the cloud is the cloud mask's, or without "
            "one the clouds detected on the optical image (bright, flat pixels; a real mask is better).\n"
            "U-Net weights built with a DEM input (ssop-unet/msop-unet, dem=True) also need the DEM: a one-band "
            "elevation raster in metres, any CRS (reprojected bilinearly).\n"
            "The confidence layer is the spread of the model's output over test-time flips and 90° rotations of the "
            "tiles (reflectance; high = the model is guessing, 0 = as acquired); asking for it runs the model 4 "
            "times per tile (advanced: test-time augmentation passes) and writes their mean as the result.\n"
            "The engine runs in a separate Python process (set the interpreter in the Align-CR dialog or with "
            "the ALIGNCR_PYTHON environment variable).\n"
            "MODEL 'default' is the engine's own default model: the bundled aligncr-lite weights when installed, "
            "else the identity baseline (returns the input). A weights file (WEIGHTS) overrides MODEL.")
        ) + self.defaults_help()

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer(self.OPTICAL, tr("Cloudy optical image (B, G, R, NIR)")))
        # Band parameters are flagged optional with a default: QGIS 3.22's band parameter rejects an omitted
        # value instead of falling back to its default (so `qgis_process run … OPTICAL=… SAR=…` would fail).
        for i, (name, label) in enumerate(zip(self.BANDS, ("Blue", "Green", "Red", "Near infrared"))):
            self.addParameter(QgsProcessingParameterBand(name, tr("{0} band").format(label), i + 1, self.OPTICAL,
                                                         optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.SAR,
                                                            tr("Sentinel-1 SAR image (VV, VH; not for gapfill)"),
                                                            optional=True))
        for i, (name, label) in enumerate(zip(self.SAR_BANDS, ("VV", "VH"))):
            self.addParameter(QgsProcessingParameterBand(name, tr("{0} band").format(label), i + 1, self.SAR,
                                                         optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.SAR_UNITS, tr("SAR units"),
                                                     [tr("Auto-detect"), tr("dB"), tr("Linear")],
                                                     defaultValue=0))
        for name, label in ((self.LANDCOVER, "Land cover (ESA WorldCover codes)"),
                            (self.MASK, "Cloud mask (binary or Planet UDM2)"),
                            (self.REFERENCE, "Cloud-free reference (metrics in the report)"),
                            (self.DEM, "DEM, elevation in metres (models built with a DEM input)")):
            self.addParameter(QgsProcessingParameterRasterLayer(name, tr(label), optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            self.ONLY_CLOUDY, tr("Replace only the cloud, keep clear pixels as the input (mask cloud, else detected)"),
            defaultValue=False))
        self.addParameter(self._model_parameter())
        for name, (_field, label) in self.EXTRA_LAYERS.items():
            self.addParameter(QgsProcessingParameterRasterLayer(name, tr(label), optional=True))
        for name, (_field, label) in self.EXTRA_DATES.items():
            self.addParameter(QgsProcessingParameterString(name, tr(label), optional=True))
        self.addParameter(QgsProcessingParameterFile(self.WEIGHTS, tr("Weights (.safetensors; overrides the model)"),
                                                     extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, tr("Processing extent (default: whole image)"),
                                                       optional=True))
        advanced = [
            QgsProcessingParameterString(self.DEVICE, tr("Device ({0})").format(DEVICE_HELP), defaultValue="auto"),
            QgsProcessingParameterNumber(self.TILE, tr("Tile size (px)"), QgsProcessingParameterNumber.Type.Integer,
                                         256,
                                         minValue=32, maxValue=8192),
            QgsProcessingParameterNumber(self.OVERLAP, tr("Tile overlap (px)"),
                                         QgsProcessingParameterNumber.Type.Integer,
                                         32, minValue=0, maxValue=2048),
            QgsProcessingParameterNumber(self.BATCH, tr("Batch size"), QgsProcessingParameterNumber.Type.Integer, 4,
                                         minValue=1, maxValue=512),
            QgsProcessingParameterBoolean(self.COG, tr("Write a cloud-optimised GeoTIFF"), defaultValue=False),
            QgsProcessingParameterNumber(self.CLOUD_FEATHER, tr("Feather beyond the cloud (px; with 'Replace only the "
                                         "cloud')"), QgsProcessingParameterNumber.Type.Integer, 8, minValue=0,
                                         maxValue=512),
            QgsProcessingParameterEnum(self.OPTICAL_SCALE, tr("Optical units"),
                                       [tr("Auto-detect"), tr("Digital numbers (reflectance × 10⁴)"),
                                        tr("Reflectance 0–1")],
                                       defaultValue=0),
            QgsProcessingParameterEnum(self.SAR_RESAMPLING, tr("SAR upsampling"),
                                       [tr("Nearest (as in the paper)"), tr("Bilinear")],
                                       defaultValue=0),
            QgsProcessingParameterNumber(self.TTA, tr("Test-time augmentation passes: the mean over flips/rotations "
                                         "(0 = off, or 4 with a confidence layer; up to 8)"),
                                         QgsProcessingParameterNumber.Type.Integer, 0, minValue=0, maxValue=8),
        ]
        for param in advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Declouded image")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.QA, tr("QA layer: percent of each pixel from the model (0 = as acquired, 100 = reconstructed)"),
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.CONFIDENCE, tr("Confidence layer: spread of the model's output over test-time flips/rotations "
            "(reflectance; high = guessing)"), optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.REPORT, tr("Report folder"), optional=True,
                                                                  createByDefault=False))

    def _model_parameter(self) -> QgsProcessingParameterEnum:
        """MODEL: ``default`` (the engine's own choice, as the dialog's first pick) or any registered model, by name
        (static strings, so ``MODEL=identity`` reads the same in qgis_process, scripts and saved models)."""
        entries = registry_models(PluginSettings.load().models_cache)
        label = tr("Model (default: the engine's default, now {0})").format(engine_default(entries))
        return QgsProcessingParameterEnum(self.MODEL, label, [DEFAULT] + [str(e["name"]) for e in entries],
                                          defaultValue=DEFAULT, usesStaticStrings=True)

    def _model_name(self, parameters: dict[str, Any], context: QgsProcessingContext,
                    weights: str | None) -> str | None:
        """The engine's ``--model``: none with a weights file (its card names the model) or for ``default``."""
        name = self.parameterAsEnumString(parameters, self.MODEL, context)
        return None if weights or name in ("", DEFAULT) else name

    def _bands(self, parameters: dict[str, Any], names: tuple[str, ...], context: QgsProcessingContext) -> tuple:
        """Band numbers, the natural order 1, 2, … where a band was left unset."""
        return tuple(self.parameterAsInt(parameters, n, context) or i + 1 for i, n in enumerate(names))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        optical_layer = self.parameterAsRasterLayer(parameters, self.OPTICAL, context)
        if optical_layer is not None and not is_metric_projected(optical_layer.crs()):
            raise QgsProcessingException(
                tr("the optical CRS {0} is not projected in metres; reproject it first (e.g. with "
                   "gdal:warpreproject to its UTM zone)").format(optical_layer.crs().authid())
            )
        paths = self._input_paths(parameters, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        report = self.parameterAsString(parameters, self.REPORT, context) or None
        temp_dir = self._clip_inputs(parameters, context, optical_layer, paths, feedback)
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context) or None
        qa = self.parameterAsOutputLayer(parameters, self.QA, context) if parameters.get(self.QA) else None
        confidence = (self.parameterAsOutputLayer(parameters, self.CONFIDENCE, context)
                      if parameters.get(self.CONFIDENCE) else None)  # fmt: skip
        req = self._request(parameters, context, paths, out, report, weights, qa, confidence)
        try:
            outcome = self.run_engine(req.to_args(), feedback)
        finally:
            if temp_dir:
                shutil.rmtree(temp_dir, ignore_errors=True)
        result = outcome.result
        feedback.pushInfo(f"{result.get('model')} on {result.get('device')}: {result.get('seconds', 0):.1f} s")
        for layer, styler in ((out, _rgb_styler(req.bands)), (qa, _QA_STYLER), (confidence, _CONFIDENCE_STYLER)):
            if layer and context.willLoadLayerOnCompletion(layer):
                context.layerToLoadOnCompletionDetails(layer).setPostProcessor(styler)
        return {self.OUTPUT: result.get("output") or out, self.REPORT: result.get("report") or report,
                self.QA: qa, self.CONFIDENCE: confidence}

    def _input_paths(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, str | None]:
        """Each input's file (GDAL name), None where an optional one is not given."""
        paths: dict[str, str | None] = {
            "optical": self.raster_path(parameters, self.OPTICAL, context),
            "sar": self.raster_path(parameters, self.SAR, context, optional=True),  # the engine says who needs it
            "landcover": self.raster_path(parameters, self.LANDCOVER, context, optional=True),
            "mask": self.raster_path(parameters, self.MASK, context, optional=True),
            "reference": self.raster_path(parameters, self.REFERENCE, context, optional=True),
            "dem": self.raster_path(parameters, self.DEM, context, optional=True),
        }
        for name, (field, _label) in self.EXTRA_LAYERS.items():
            paths[field] = self.raster_path(parameters, name, context, optional=True)
        return paths

    def _clip_inputs(self, parameters: dict[str, Any], context: QgsProcessingContext, optical_layer: Any,
                     paths: dict[str, str | None], feedback: QgsProcessingFeedback) -> str | None:
        """With an EXTENT, ``paths`` rewritten to virtual clips in a temporary folder (returned, for removal)."""
        if not (parameters.get(self.EXTENT) and optical_layer is not None):
            return None
        extent = self.parameterAsExtent(parameters, self.EXTENT, context, optical_layer.crs())
        temp_dir = tempfile.mkdtemp(prefix="aligncr_")
        layers = {"optical": optical_layer, "sar": self.parameterAsRasterLayer(parameters, self.SAR, context),
                  "landcover": self.parameterAsRasterLayer(parameters, self.LANDCOVER, context),
                  "mask": self.parameterAsRasterLayer(parameters, self.MASK, context),
                  "reference": self.parameterAsRasterLayer(parameters, self.REFERENCE, context),
                  "dem": self.parameterAsRasterLayer(parameters, self.DEM, context),
                  **{field: self.parameterAsRasterLayer(parameters, name, context)
                     for name, (field, _label) in self.EXTRA_LAYERS.items()}}
        try:
            for key, path in list(paths.items()):
                if path:
                    margin = 0 if key in ("optical", "reference") else MARGIN_PIXELS
                    paths[key] = clip_to_extent(path, extent, optical_layer.crs(), layers[key].crs(), temp_dir,
                                                key, margin)
        except LayerError as exc:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(f"clipped the inputs to {extent.toString(2)}")
        return temp_dir

    def _request(self, parameters: dict[str, Any], context: QgsProcessingContext, paths: dict[str, str | None],
                 out: str, report: str | None, weights: str | None, qa: str | None,
                 confidence: str | None) -> RunRequest:
        """The engine run the parameters describe."""
        only_cloudy = self.parameterAsBool(parameters, self.ONLY_CLOUDY, context)
        return RunRequest(
            optical=str(paths["optical"]),
            sar=paths["sar"],
            out=out,
            landcover=paths["landcover"],
            mask=paths["mask"],
            reference=paths["reference"],
            model=self._model_name(parameters, context, weights),
            weights=weights,
            device=self.parameterAsString(parameters, self.DEVICE, context) or "auto",
            tile=self.parameterAsInt(parameters, self.TILE, context),
            overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
            batch=self.parameterAsInt(parameters, self.BATCH, context),
            cog=self.parameterAsBool(parameters, self.COG, context),
            bands=self._bands(parameters, self.BANDS, context),  # type: ignore[arg-type]
            sar_bands=self._bands(parameters, self.SAR_BANDS, context),  # type: ignore[arg-type]
            sar_units=UNITS[self.parameterAsEnum(parameters, self.SAR_UNITS, context)],
            report=report,
            dem=paths["dem"],
            optical_scale=SCALES[self.parameterAsEnum(parameters, self.OPTICAL_SCALE, context)],
            sar_resampling=RESAMPLINGS[self.parameterAsEnum(parameters, self.SAR_RESAMPLING, context)],
            only_cloudy=only_cloudy,
            cloud_feather=self.parameterAsInt(parameters, self.CLOUD_FEATHER, context),
            qa=qa,
            confidence=confidence,
            tta=self.parameterAsInt(parameters, self.TTA, context) or None,
            **{field: paths[field] for field, _label in self.EXTRA_LAYERS.values()},
            **{field: self.parameterAsString(parameters, name, context).strip() or None
               for name, (field, _label) in self.EXTRA_DATES.items()},
        )
