"""The CLI commands run / info / demo through engine.cli.main, including the --progress-json protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from helpers_rasters import WGS84, footprint_transform, write_optical, write_sar

from engine.cli import main


@pytest.fixture()
def pair(tmp_path):
    """Optical in UTM 32N at 3 m, SAR in EPSG:4326 at ~10 m: two CRSs, two resolutions."""
    opt = write_optical(tmp_path / "opt.tif", height=80, width=100)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    return opt, sar


def test_two_crs_end_to_end(tmp_path, pair, capsys):
    opt, sar = pair
    out = tmp_path / "declouded.tif"
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--out", str(out), "--tile", "32", "--overlap", "8"]
    assert main([*args, "--model", "identity", "--device", "cpu", "--sar-resampling", "bilinear"]) == 0
    with rasterio.open(opt) as a, rasterio.open(out) as b:
        assert b.crs == a.crs and b.transform == a.transform and b.shape == a.shape
        np.testing.assert_array_equal(b.read(), a.read())
    assert "wrote" in capsys.readouterr().out


def test_progress_json_lines(tmp_path, pair, capsys):
    opt, sar = pair
    out = tmp_path / "o.tif"
    code = main(["run", "--optical", str(opt), "--sar", str(sar), "--out", str(out), "--tile", "32",
                 "--overlap", "8", "--model", "identity", "--mode", "raw", "--progress-json"])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]  # every stdout line is one JSON object
    # 3 × 4 tiles: stride 24 covers 80 rows with ceil(72 / 24) and 100 cols with ceil(92 / 24)
    assert events[0] == {"event": "start", "total_tiles": 12, "width": 100, "height": 80, "output": str(out)}
    progress = [e for e in events if e["event"] == "progress"]
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(isinstance(e["message"], str) for e in progress)
    result = events[-1]
    assert result["event"] == "result" and result["output"] == str(out) and result["model"] == "identity"
    assert result["device"] == "cpu" and result["report"] is None and result["seconds"] >= 0


def test_progress_json_warning_and_error(tmp_path, pair, capsys):
    opt, _ = pair
    code = main(["run", "--optical", str(opt), "--sar", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o.tif"),
                 "--progress-json"])  # fmt: skip
    assert code == 2
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert events == [{"event": "error", "message": f"SAR file not found: {tmp_path / 'missing.tif'}",
                       "kind": "InputError"}]  # fmt: skip
    # Partial SAR coverage → a warning event before the result.
    transform, w, h = footprint_transform(opt, WGS84, 9e-5)
    half = write_sar(tmp_path / "half.tif", crs=WGS84, transform=transform, height=h, width=w // 2)
    assert main(["run", "--optical", str(opt), "--sar", str(half), "--out", str(tmp_path / "p.tif"), "--tile", "64",
                 "--overlap", "16", "--progress-json"]) == 0  # fmt: skip
    kinds = [json.loads(line)["event"] for line in capsys.readouterr().out.strip().splitlines()]
    assert "warning" in kinds and kinds[-1] == "result"


def test_bad_input_is_one_line_on_stderr(tmp_path, pair, capsys):
    opt, sar = pair
    code = main(["run", "--optical", str(opt), "--sar", str(sar), "--out", str(opt)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: output would overwrite an input file") and "\n" not in err


def test_info_json(pair, capsys):
    opt, sar = pair
    assert main(["info", "--optical", str(opt), "--sar", str(sar), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["optical"]["crs"] == "EPSG:32632" and facts["sar"]["crs"] == "EPSG:4326"
    assert facts["optical"]["resolution"] == [3.0, 3.0]
    assert facts["optical"]["bands"] == 4 and facts["optical"]["dtypes"] == ["uint16"] * 4
    assert facts["optical"]["nodata"] == 0
    assert facts["sar_overlap_percent"] == pytest.approx(100.0)
    assert facts["sar_units"] == "db" and facts["optical_scale"] == "dn"
    assert facts["acquired"] == {"optical": None, "sar": None} and facts["sar_gap_days"] is None


def test_info_gives_acquisition_times_and_their_gap(pair, capsys):
    opt, sar = pair
    with rasterio.open(opt, "r+") as ds:
        ds.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2024-06-01T10:00:00Z")
    with rasterio.open(sar, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2024:06:04 22:00:00")
    assert main(["info", "--optical", str(opt), "--sar", str(sar), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["acquired"] == {"optical": "2024-06-01T10:00:00+00:00 (ACQUISITIONDATETIME)",
                                 "sar": "2024-06-04T22:00:00+00:00 (TIFFTAG_DATETIME)"}
    assert facts["sar_gap_days"] == 3.5
    assert main(["info", "--optical", str(opt), "--sar", str(sar)]) == 0
    assert "→ 3.5 days apart" in capsys.readouterr().out


def test_info_text_reports_linear_sar(tmp_path, pair, capsys):
    opt, _ = pair
    lin = write_sar(tmp_path / "lin.tif", like=opt, linear=True)
    assert main(["info", "--optical", str(opt), "--sar", str(lin)]) == 0
    text = capsys.readouterr().out
    assert "detected SAR units: linear" in text and "EPSG:4326" in text


def test_demo_runs_on_the_bundled_sample(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out_dir), "--device", "cpu", "--no-report"]) == 0
    out = out_dir / "declouded.tif"
    assert f"demo output: {out}" in capsys.readouterr().out
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32632 and ds.shape == (512, 512) and ds.count == 4


def test_demo_headline_compares_output_and_cloudy_input(tmp_path):
    from engine.commands.demo import headline

    def block(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim}

    metrics = {"output": {"overall": block(25.8, 0.88), "inside_cloud": block(21.9, 0.72)},
               "cloudy_input": {"overall": block(14.5, 0.81), "inside_cloud": block(9.7, 0.5)}}  # fmt: skip
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"metrics": metrics}))
    assert headline(path) == ("vs the cloud-free reference: PSNR 25.80 dB (cloudy input 14.50 dB), SSIM 0.880 "
                              "(0.810); under clouds PSNR 21.90 dB (9.70 dB)")  # fmt: skip
    path.write_text(json.dumps({"metrics": {"output": {}}}))  # no reference: no headline, no crash
    assert headline(path) is None
    assert headline(tmp_path / "missing.json") is None


@pytest.mark.parametrize("command", ["run", "info", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["run", "--optical", "a.tif", "--out", "b.tif", "--date-prev", "tuesday"],
                                  ["gapfill", "--cloudy", "a", "--prev", "b", "--next", "c", "--out", "d", "--date",
                                   "tuesday"]])  # fmt: skip
def test_a_bad_date_is_a_usage_error_with_the_engines_message(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "cannot read an acquisition date from 'tuesday'" in capsys.readouterr().err


def test_run_with_report(tmp_path, pair, capsys):
    opt, sar = pair
    report = tmp_path / "report"
    code = main(["run", "--optical", str(opt), "--sar", str(sar), "--reference", str(opt), "--out",
                 str(tmp_path / "o.tif"), "--tile", "64", "--overlap", "16", "--report", str(report),
                 "--progress-json"])  # fmt: skip
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["report"] == str(report)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert (report / "report.json").is_file()


def test_renamed_options_still_work_with_a_notice(tmp_path, capsys):
    """--optical / --tile are the names everywhere; the old --input (ndvi) and --tile-size (evaluate) still parse,
    with a deprecation notice, and the two names of one option cannot both be given."""
    import argparse

    import pytest

    from engine.commands import add_renamed_argument

    parser = argparse.ArgumentParser()
    add_renamed_argument(parser, "--tile", "--tile-size", type=int, default=300, dest="tile_size")
    assert parser.parse_args([]).tile_size == 300
    assert parser.parse_args(["--tile", "64"]).tile_size == 64
    capsys.readouterr()
    assert parser.parse_args(["--tile-size", "32"]).tile_size == 32
    assert "--tile-size is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--tile", "1", "--tile-size", "2"])
