"""The options table (engine.config.OPTIONS): what the plugin may import, and that every front end generated from
it agrees with the engine's parser and RunConfig."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.commands.run import config_from_args
from engine.config import OPTIONS, Bounds, RunConfig, run_arguments

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_table_pulls_in_no_torch_numpy_or_rasterio():
    """The plugin imports engine.config (and engine.sources.metric_grid) in QGIS's Python, which may lack all three."""
    code = ("import sys, engine.config, engine.sources.metric_grid; "
            "print(__import__('json').dumps(sorted(m for m in ('torch', 'numpy', 'rasterio') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_every_option_has_a_flag_help_and_a_known_kind_and_defaults_match_the_dataclass():
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    flags = [row.flag for row in OPTIONS.values()]
    assert len(set(flags)) == len(flags)
    for name, row in OPTIONS.items():
        assert row.help and row.flag.startswith("--") and row.default == defaults[name], name
        assert not row.choices or row.default in row.choices, name
        assert len(row.choice_labels) in (0, len(row.choices)), name
    assert "chunk" not in OPTIONS  # a Python-only setting, no CLI option


def test_the_parser_s_defaults_are_the_table_s():
    ns = build_parser().parse_args(["run", "--optical", "o.tif", "--out", "x.tif"])
    for name, row in OPTIONS.items():
        if not row.required:
            assert getattr(ns, name) == row.default, name
    assert config_from_args(ns).as_dict() == RunConfig(optical="o.tif", out="x.tif").as_dict()


def test_run_arguments_round_trip_through_the_engine_parser():
    """A value for every option, away from its default, built into a command line by the table and parsed back
    by `engine run`'s parser, gives the RunConfig those values make directly."""
    values = {"optical": "o.tif", "sar": "s.tif", "out": "x.tif", "landcover": "lc.tif", "mask": "auto",
              "reference": "r.tif", "mode": "raw", "model": "msop-unet", "weights": "w.safetensors", "device": "cpu",
              "tile": 64,
              "overlap": 8, "batch": 2, "cog": True, "bands": (3, 2, 1, 4), "sar_bands": (2, 1), "sar_units": "db",
              "optical_scale": "reflectance", "sar_resampling": "bilinear", "report": "rep", "baselines": False,
              "optical_prev": "p.tif", "optical_next": "n.tif", "sar_prev": "sp.tif", "sar_next": "sn.tif",
              "date": "2021-06-04T10:00:00Z", "date_prev": "2021-06-01", "date_next": "2021-06-11T10:00:00",
              "dem": "dem.tif", "only_cloudy": True, "cloud_feather": 3, "qa": "qa.tif", "confidence": "c.tif",
              "tta": 8, "adapt": 120, "scene_check": True, "colour_anchor": True, "memory_budget": 2.5, "sar_vv": None,
              "sar_vh": None, "bounds": "-70.5,-33.2,-70.4,-33.1,EPSG:4326", "clobber": False}
    assert set(values) == set(OPTIONS)
    args = run_arguments(values)
    assert args[:7] == ["run", "--optical", "o.tif", "--sar", "s.tif", "--out", "x.tif"]
    assert "--no-baselines" in args and "--cog" in args and args[args.index("--bands") + 1] == "3,2,1,4"
    assert "--bounds=-70.5,-33.2,-70.4,-33.1,EPSG:4326" in args and "--no-clobber" in args  # one token: west, south
    parsed = config_from_args(build_parser().parse_args(args))
    assert parsed.as_dict() == RunConfig(**values).as_dict()
    assert parsed.bounds == Bounds(-70.5, -33.2, -70.4, -33.1, "EPSG:4326")
    # a RunConfig's own (converted) values make the same command line again
    again = config_from_args(build_parser().parse_args(run_arguments({n: getattr(parsed, n) for n in OPTIONS})))
    assert again.as_dict() == parsed.as_dict()


def test_run_arguments_leave_defaults_to_the_engine_and_refuse_unknown_names():
    args = run_arguments({"optical": "o", "sar": None, "out": "x", "tile": 256, "device": "auto", "cog": False,
                          "bands": [1, 2, 3, 4], "date": "", "sar_units": "auto"})  # fmt: skip
    assert args == ["run", "--optical", "o", "--out", "x"]
    with pytest.raises(TypeError, match="not a run option: tiles"):
        run_arguments({"optical": "o", "out": "x", "tiles": 3})


def test_the_old_progress_flag_still_works_with_a_deprecation_notice(capsys):
    ns = build_parser().parse_args(["run", "--optical", "o", "--out", "x", "--progress-json"])
    assert ns.progress_json
    assert "--progress-json is deprecated" in capsys.readouterr().err
    assert build_parser().parse_args(["run", "--optical", "o", "--out", "x", "--json"]).progress_json
    assert not build_parser().parse_args(["run", "--optical", "o", "--out", "x"]).progress_json


@pytest.mark.parametrize(("new", "old"), [
    (["gapfill", "--optical", "a", "--optical-prev", "b", "--optical-next", "c", "--out", "d"],
     ["gapfill", "--cloudy", "a", "--prev", "b", "--next", "c", "--out", "d"]),
    (["ndvi", "--optical", "a", "--out", "d"], ["ndvi", "--input", "a", "--out", "d"]),
])  # fmt: skip
def test_one_name_for_the_optical_image_everywhere_old_names_deprecated(new, old, capsys):
    """Issue 18, item 5: the optical image is --optical in every command (run's --optical-prev/-next for the extra
    dates); the old names parse to the same values with a notice on stderr."""
    parser = build_parser()
    assert vars(parser.parse_args(new)) == vars(parser.parse_args(old))
    renamed = [a for a in old if a.startswith("--") and a not in new]
    err = capsys.readouterr().err
    assert err.count("is deprecated") == len(renamed) and all(f"{a} is deprecated" in err for a in renamed)


def test_check_options_is_runconfig_s_validation_on_plain_values():
    """The dialog checks its values with engine.config.check_options; RunConfig.validate is the same rules."""
    from engine.config import check_options
    from engine.errors import InputError

    check_options({"tile": 64, "overlap": 31})
    for values, message in (({"tile": 64, "overlap": 32}, r"--overlap must be in \[0, tile/2\)"),
                            ({"sar_units": "kelvin"}, "--sar-units must be one of auto, db, linear, amplitude"),
                            ({"confidence": "c.tif", "tta": 1}, "--confidence needs --tta of 2"),
                            ({"sar_vv": "vv.tif"}, "--sar-vh is missing")):  # fmt: skip
        with pytest.raises(InputError, match=message):
            check_options(values)
        with pytest.raises(InputError, match=message):
            RunConfig(optical="o.tif", out="x.tif", **values).validate()
