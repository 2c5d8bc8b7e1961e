"""``aligncr:declouding`` — the dialog's run as a Processing algorithm (model builder, batch, qgis_process).

Every input of the toolbar dialog is a typed parameter. The run options' parameters are generated from the
engine's options table (:mod:`aligncr_qgis.run_options`: name = the option's in capitals, label, type, default,
range and allowed values from its row), and the values go back through the same table to the engine's command
line. The optional EXTENT goes to the engine as ``--bounds``, as the dialog's does. The declouded layer gets the
dialog's RGB style (the output keeps the optical band layout, so R/G/B come from the band parameters; 2–98 %
cumulative cut) when QGIS loads it.

Temporal models (MODEL ``msop-unet`` or ``gapfill``) take the optional extra-date parameters: OPTICAL_PREV /
SAR_PREV / OPTICAL_NEXT / SAR_NEXT (the engine's ``--optical-prev`` …) and DATE / DATE_PREV / DATE_NEXT (ISO 8601;
empty = from the files' tags). The engine says in one line which one a model is missing, and warns when a model
ignores them. SAR is optional: ``gapfill`` takes none, and the engine refuses any other model without it in one
line. DEM is the elevation raster of U-Nets built with a DEM input (the engine's ``--dem``; ignored with a warning by
the other models).

MODE is the engine's ``--mode`` (best: what won on validation, with the scene check's guard, whose sentence goes to
the log beside the check's; raw: the plain network), shown beside MODEL since it decides the default model.
"""

from __future__ import annotations

from pathlib import Path
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
    QgsProcessingUtils,
)

from aligncr_qgis.algorithms.base import EngineAlgorithm, tr
from aligncr_qgis.layers import (
    OPTICAL_ROLES,
    LayerError,
    band_descriptions,
    bounds_argument,
    guess_bands,
    metric_problem,
)
from aligncr_qgis.model_list import DEFAULT, engine_default, registry_models
from aligncr_qgis.npy_mask import is_npy, npy_mask_to_geotiff
from aligncr_qgis.run_options import MASK_WORDS, MODE_SWITCHES, OPTIONS, Option, RunCommand, absolute_name
from aligncr_qgis.run_progress import RunProgress
from aligncr_qgis.settings import PluginSettings
from aligncr_qgis.styling import style_confidence, style_qa, style_rgb

# The run options shown as parameters (named as the option, in capitals), in the toolbox's order.
INPUTS = ("optical", "sar", "landcover", "mask", "reference", "dem", "only_cloudy")
EXTRA_DATES = ("optical_prev", "sar_prev", "optical_next", "sar_next", "date", "date_prev", "date_next")
ADVANCED = ("device", "tile", "overlap", "batch", "cog", "cloud_feather", "optical_scale", "sar_resampling", "tta",
            "adapt", "scene_check", "colour_anchor")


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
    OPTICAL, SAR, MODEL, WEIGHTS, EXTENT = "OPTICAL", "SAR", "MODEL", "WEIGHTS", "EXTENT"
    BANDS = ("BAND_B", "BAND_G", "BAND_R", "BAND_NIR")
    SAR_BANDS = ("BAND_VV", "BAND_VH")
    OUTPUT, REPORT, QA, CONFIDENCE = "OUTPUT", "REPORT", "QA", "CONFIDENCE"

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
            "one the clouds and cloud shadows the trained detector (ukis-csmask, installed by Install engine…) finds "
            "on the optical image — where it is not installed, the hand-made brightness rule (bright, flat pixels; "
            "no shadows), said in the log. The cloud mask may also be a NumPy .npy array of the optical's height × "
            "width (M3R-CR's masks; non-zero = cloud), or one of the words detect (the default), rule (the hand-made "
            "rule) and auto (the product's own UDM2 / SCL, else detect).\n"
            "U-Net weights built with a DEM input (ssop-unet/msop-unet, dem=True) also need the DEM: a one-band "
            "elevation raster in metres, any CRS (reprojected bilinearly).\n"
            "The confidence layer is the spread of the model's output over test-time flips and 90° rotations of the "
            "tiles (reflectance; high = the model is guessing, 0 = as acquired); asking for it runs the model 4 "
            "times per tile (advanced: test-time augmentation passes) and writes their mean as the result.\n"
            "The engine runs in a separate Python process (set the interpreter in the Align-CR dialog or with "
            "the ALIGNCR_PYTHON environment variable).\n"
            "MODE 'Best' (the default) replaces only the cloud, checks the model on the scene's own clear ground and, "
            "where it loses there to the non-learned estimate (a smooth fill from the cloud's edge and the SAR), "
            "writes that estimate inside the cloud instead; the log says which was used and by how many dB. MODE "
            "'Raw' is the network's output everywhere, as in the paper, with nothing else unless asked. MODE may be "
            "given by name (best, raw) or number.\n"
            "MODEL 'default' is the mode's own model: the bundled aligncr-res (best) or aligncr-lite (raw) weights "
            "when installed, else the other bundled one, else the identity baseline (returns the input). A weights "
            "file (WEIGHTS) overrides MODEL.")
        ) + self.defaults_help()

    def initAlgorithm(self, config: Any = None) -> None:  # noqa: N802 - QGIS API
        self.addParameter(_parameter(OPTIONS["optical"]))
        # Band parameters are flagged optional with a default: QGIS 3.22's band parameter rejects an omitted
        # value instead of falling back to its default (so `qgis_process run … OPTICAL=… SAR=…` would fail).
        for i, (name, label) in enumerate(zip(self.BANDS, ("Blue", "Green", "Red", "Near infrared"))):
            self.addParameter(QgsProcessingParameterBand(name, tr("{0} band").format(label), i + 1, self.OPTICAL,
                                                         optional=True))
        self.addParameter(_parameter(OPTIONS["sar"]))
        for i, (name, label) in enumerate(zip(self.SAR_BANDS, ("VV", "VH"))):
            self.addParameter(QgsProcessingParameterBand(name, tr("{0} band").format(label), i + 1, self.SAR,
                                                         optional=True))
        for name in ("sar_units", *INPUTS[2:]):
            self.addParameter(_parameter(OPTIONS[name]))
        self.addParameter(_parameter(OPTIONS["mode"]))  # visible: it decides the model and what the run does
        self.addParameter(self._model_parameter())
        for name in EXTRA_DATES:
            self.addParameter(_parameter(OPTIONS[name]))
        self.addParameter(QgsProcessingParameterFile(self.WEIGHTS, tr(OPTIONS["weights"].label),
                                                     extension="safetensors", optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, tr(OPTIONS["bounds"].label), optional=True))
        for name in ADVANCED:
            param = _parameter(OPTIONS[name])
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr(OPTIONS["out"].label)))
        for name, row in ((self.QA, OPTIONS["qa"]), (self.CONFIDENCE, OPTIONS["confidence"])):
            self.addParameter(QgsProcessingParameterRasterDestination(name, tr(row.label), optional=True,
                                                                      createByDefault=False))
        self.addParameter(QgsProcessingParameterFolderDestination(self.REPORT, tr(OPTIONS["report"].label),
                                                                  optional=True, createByDefault=False))

    def _model_parameter(self) -> QgsProcessingParameterEnum:
        """MODEL: ``default`` (the engine's own choice for the MODE, as the dialog's first pick) or any registered
        model, by name (static strings, so ``MODEL=identity`` reads the same in qgis_process, scripts and saved
        models)."""
        entries = registry_models(PluginSettings.load().models_cache)
        label = tr("Model (default: the mode's, now {0})").format(_mode_defaults(entries))
        return QgsProcessingParameterEnum(self.MODEL, label, [DEFAULT] + [str(e["name"]) for e in entries],
                                          defaultValue=DEFAULT, usesStaticStrings=True)

    def _model_name(self, parameters: dict[str, Any], context: QgsProcessingContext,
                    weights: str | None) -> str | None:
        """The engine's ``--model``: none with a weights file (its card names the model) or for ``default``."""
        name = self.parameterAsEnumString(self._model_by_name(parameters), self.MODEL, context)
        return None if weights or name in ("", DEFAULT) else name

    def _model_by_name(self, parameters: dict[str, Any]) -> dict[str, Any]:
        """``MODEL=1`` as ``MODEL=aligncr``: ``qgis_process help`` lists the models by number, so a number is taken
        as well as a name (issue 28: it was refused); the value stays a name for saved models and scripts. The
        other way round for the table's choices (MODE, SAR_UNITS …), numbered enums: ``MODE=raw`` as ``MODE=1``."""
        value = parameters.get(self.MODEL)
        options = self.parameterDefinition(self.MODEL).options()
        if isinstance(value, (int, str)) and str(value).strip().isdigit() and int(value) < len(options):
            parameters = {**parameters, self.MODEL: options[int(value)]}
        return {**parameters, **_choices_by_number(parameters)}

    def checkParameterValues(self, parameters: dict[str, Any],  # noqa: N802 - QGIS API
                             context: QgsProcessingContext) -> tuple[bool, str]:
        """QGIS's checks, with MODEL by number and an ``.npy`` MASK (no layer QGIS can load) let through."""
        checked = self._model_by_name(parameters)
        if is_npy(checked.get("MASK")) or _mask_word(checked.get("MASK")):
            checked = {**checked, "MASK": None}
        return super().checkParameterValues(checked, context)

    def _npy_mask(self, parameters: dict[str, Any], optical: str, feedback: QgsProcessingFeedback) -> str | None:
        """An ``.npy`` MASK (M3R-CR's) written as a GeoTIFF on the optical grid for the engine; None otherwise."""
        npy = parameters.get("MASK")
        if not is_npy(npy):
            return None
        out = QgsProcessingUtils.generateTempFilename(f"{Path(str(npy)).stem}_mask.tif")
        try:
            npy_mask_to_geotiff(absolute_name(str(npy)), optical, out)
        except LayerError as exc:
            raise QgsProcessingException(tr("MASK: {0}").format(exc)) from None
        feedback.pushInfo(tr("MASK {0} written on the optical grid as {1}").format(npy, out))
        return out

    def _bands(self, parameters: dict[str, Any], names: tuple[str, ...], context: QgsProcessingContext) -> tuple:
        """Band numbers, the natural order 1, 2, … where a band was left unset."""
        return tuple(self.parameterAsInt(parameters, n, context) or i + 1 for i, n in enumerate(names))

    def _optical_bands(self, parameters: dict[str, Any], context: QgsProcessingContext, layer: Any,
                       feedback: QgsProcessingFeedback) -> tuple:
        """The optical B, G, R, NIR: as given; with none given, what the dialog proposes — from the band names, or
        B2, B3, B4, B8 of a 12/13-band Sentinel-2 stack (issue 28: it was read as coastal, blue, green, red)."""
        if layer is None or any(parameters.get(n) not in (None, "") for n in self.BANDS):
            return self._bands(parameters, self.BANDS, context)
        guess = guess_bands(band_descriptions(layer), OPTICAL_ROLES)
        bands = tuple(guess[r] for r in OPTICAL_ROLES)
        if bands != (1, 2, 3, 4):
            feedback.pushInfo(tr("B, G, R, NIR = bands {0}: from the band names, or B2, B3, B4, B8 of a {1}-band "
                                 "Sentinel-2 stack (give BAND_B … to choose others)")
                              .format(", ".join(map(str, bands)), layer.bandCount()))
        return bands

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        optical_layer = self.parameterAsRasterLayer(parameters, self.OPTICAL, context)
        problem = metric_problem(optical_layer.crs()) if optical_layer is not None else None
        if problem is not None:  # the engine's rule and words, before a child process is started
            raise QgsProcessingException(problem)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        qa = self.parameterAsOutputLayer(parameters, self.QA, context) if parameters.get(self.QA) else None
        confidence = (self.parameterAsOutputLayer(parameters, self.CONFIDENCE, context)
                      if parameters.get(self.CONFIDENCE) else None)  # fmt: skip
        weights = self.parameterAsFile(parameters, self.WEIGHTS, context) or None
        extent = (self.parameterAsExtent(parameters, self.EXTENT, context, optical_layer.crs())
                  if parameters.get(self.EXTENT) and optical_layer is not None else None)  # fmt: skip
        values = self._option_values(parameters, context)
        values["mask"] = (_mask_word(parameters.get("MASK")) or self._npy_mask(parameters, values["optical"], feedback)
                          or values["mask"])  # fmt: skip
        req = RunCommand(
            **values,
            out=out, qa=qa, confidence=confidence, weights=weights,
            report=self.parameterAsString(parameters, self.REPORT, context) or None,
            model=self._model_name(parameters, context, weights),
            bands=self._optical_bands(parameters, context, optical_layer, feedback),
            sar_bands=self._bands(parameters, self.SAR_BANDS, context),
            bounds=bounds_argument(extent) if extent is not None else None,
        )  # fmt: skip
        if extent is not None:
            feedback.pushInfo(f"processing extent {extent.toString(2)}")
        pixels = optical_layer.width() * optical_layer.height() if optical_layer is not None else 0
        result = self.run_engine(req.to_args(), feedback, stages=RunProgress.for_command(req, pixels)).result
        feedback.pushInfo(f"{result.get('model')} on {result.get('device')}: {result.get('seconds', 0):.1f} s")
        for key in ("scene_check", "guard"):  # the best mode's guard: the model or the estimate, and the margin
            if result.get(key):
                feedback.pushInfo(result[key])
        if result.get("colour_anchor"):
            feedback.pushInfo(result["colour_anchor"])
        for layer, styler in ((out, _rgb_styler(req.bands)), (qa, _QA_STYLER), (confidence, _CONFIDENCE_STYLER)):
            if layer and context.willLoadLayerOnCompletion(layer):
                context.layerToLoadOnCompletionDetails(layer).setPostProcessor(styler)
        return {self.OUTPUT: result.get("output") or out, self.REPORT: result.get("report") or req.report,
                self.QA: qa, self.CONFIDENCE: confidence}

    def _option_values(self, parameters: dict[str, Any], context: QgsProcessingContext) -> dict[str, Any]:
        """The table-generated parameters' values, by option name; the feather only with ONLY_CLOUDY."""
        parameters = self._model_by_name(parameters)
        values = {name: self._value(OPTIONS[name], parameters, context)
                  for name in (*INPUTS, "sar_units", "mode", *EXTRA_DATES, *ADVANCED)}  # fmt: skip
        if not values["only_cloudy"] and "only_cloudy" not in MODE_SWITCHES.get(values["mode"], ()):
            values["cloud_feather"] = None
        return values

    def _value(self, row: Option, parameters: dict[str, Any], context: QgsProcessingContext) -> Any:
        """One option's value as the engine's command line takes it; None = not given (the engine's default)."""
        name = row.name.upper()
        if row.kind == "source":
            return self.raster_path(parameters, name, context, optional=not row.required)
        if row.kind == "int":
            if row.default is None and parameters.get(name) in (None, ""):
                return None
            number = self.parameterAsInt(parameters, name, context)
            return None if _zero_is_unset(row) and number == 0 else number
        if row.kind == "bool":
            return self.parameterAsBool(parameters, name, context)
        if row.kind == "choice":
            return row.choices[self.parameterAsEnum(parameters, name, context)]
        return self.parameterAsString(parameters, name, context).strip() or None


def _zero_is_unset(row: Option) -> bool:
    """An int option whose engine default is "none" and whose values start above 0 (TTA) takes 0 for "none"; one
    where 0 is a value (ADAPT 0 = off, empty = as the mode decides) is an optional parameter left empty instead."""
    return row.default is None and (row.minimum or 0) > 0


def _choices_by_number(parameters: dict[str, Any]) -> dict[str, Any]:
    """The table's choice parameters given by value name (``MODE=raw``, ``SAR_UNITS=db``), as their numbers."""
    found = {}
    for row in OPTIONS.values():
        value = parameters.get(row.name.upper())
        if row.kind == "choice" and isinstance(value, str) and value.strip().lower() in row.choices:
            found[row.name.upper()] = row.choices.index(value.strip().lower())
    return found


def _mode_defaults(entries: list[dict[str, Any]]) -> str:
    """``aligncr-lite`` when every mode has the same default model, else ``best: aligncr-res, raw: aligncr-lite``."""
    models = {mode: engine_default(entries, mode) for mode in OPTIONS["mode"].choices}
    if len(set(models.values())) == 1:
        return next(iter(models.values()))
    return ", ".join(f"{mode}: {model}" for mode, model in models.items())


def _mask_word(value: object) -> str | None:
    """MASK given as one of ``--mask``'s words (detect, rule, auto) rather than a layer: the word, else None."""
    text = str(value).strip().lower() if isinstance(value, str) else ""
    return text if text in MASK_WORDS else None


def _parameter(row: Option) -> QgsProcessingParameterDefinition:
    """The Processing parameter of an options-table row: named as the option in capitals, labelled, typed and
    bounded by the row. A number whose engine default is "none" takes 0 for it (TTA), or is left empty where 0 is a
    value of its own (ADAPT: 0 = off, empty = as the mode decides)."""
    name, label, optional = row.name.upper(), tr(row.label), row.default is None and not row.required
    if row.kind == "source":
        return QgsProcessingParameterRasterLayer(name, label, optional=optional)
    if row.kind == "bool":
        return QgsProcessingParameterBoolean(name, label, defaultValue=row.default)
    if row.kind == "choice":
        return QgsProcessingParameterEnum(name, label, [tr(c) for c in row.choice_labels],
                                          defaultValue=row.choices.index(row.default))
    if row.kind == "int" and row.default is None and not _zero_is_unset(row):
        return QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Type.Integer, None,
                                            optional=True, minValue=row.minimum, maxValue=row.maximum)  # fmt: skip
    if row.kind == "int":
        unset = row.default is None
        return QgsProcessingParameterNumber(name, label, QgsProcessingParameterNumber.Type.Integer,
                                            0 if unset else row.default, minValue=0 if unset else row.minimum,
                                            maxValue=row.maximum)  # fmt: skip
    return QgsProcessingParameterString(name, label, defaultValue=row.default, optional=optional)
