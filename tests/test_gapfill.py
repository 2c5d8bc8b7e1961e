"""Linear gap-filling: exact on synthetic linear-in-time data, mask handling, dates from raster tags, registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from engine.config import parse_datetime
from engine.errors import InputError
from engine.models import build_model, get_spec
from engine.models.gapfill_arch import interpolation_weight, linear_gapfill
from engine.sources.dates import read_acquisition_date

T0 = datetime(2021, 6, 1, 10, 30, tzinfo=UTC)


def _linear_scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """x(t) = a + b·t (t in days): an exactly linear time series per pixel."""
    return rng.random((4, 9, 11)).astype(np.float64), rng.normal(0, 0.01, (4, 9, 11))


def test_exact_on_linear_data_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b = _linear_scene(rng)
    t_prev, t, t_next = T0, T0 + timedelta(days=7, hours=5), T0 + timedelta(days=16)

    def x(d: datetime) -> np.ndarray:
        return a + b * (d - T0).total_seconds() / 86400

    out = linear_gapfill(x(t_prev), x(t_next), t_prev, t, t_next)
    np.testing.assert_allclose(out, x(t), rtol=0, atol=1e-12)
    # the endpoints reproduce the inputs; the weight is the paper's (T_t − T_{t−1}) / (T_{t+1} − T_{t−1})
    np.testing.assert_allclose(linear_gapfill(x(t_prev), x(t_next), t_prev, t_prev, t_next), x(t_prev))
    assert interpolation_weight(t_prev, t, t_next) == pytest.approx((7 * 24 + 5) / (16 * 24))


def test_exact_on_linear_data_torch_batched_dates() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(3, 4, 5, 6, dtype=torch.float64), torch.randn(3, 4, 5, 6, dtype=torch.float64)
    t_prev = torch.tensor([0.0, 100.0, -50.0], dtype=torch.float64)
    t_next = t_prev + torch.tensor([10.0, 20.0, 40.0], dtype=torch.float64)
    t = t_prev + torch.tensor([2.5, 15.0, 10.0], dtype=torch.float64)

    def x(tt: torch.Tensor) -> torch.Tensor:
        return a + b * tt.view(-1, 1, 1, 1)

    out = linear_gapfill(x(t_prev), x(t_next), t_prev, t, t_next)
    torch.testing.assert_close(out, x(t), rtol=0, atol=1e-12)


def test_mask_fills_only_cloudy_pixels() -> None:
    prev, nxt = np.zeros((4, 6, 6)), np.full((4, 6, 6), 2.0)
    cloudy = np.full((4, 6, 6), 9.0)
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:4, 1:5] = True
    out = linear_gapfill(prev, nxt, 0.0, 5.0, 10.0, cloudy=cloudy, mask=mask)
    assert np.all(out[:, mask] == 1.0)
    assert np.all(out[:, ~mask] == 9.0)
    with pytest.raises(InputError):
        linear_gapfill(prev, nxt, 0.0, 5.0, 10.0, mask=mask)
    with pytest.raises(InputError):
        linear_gapfill(prev, nxt, 10.0, 5.0, 10.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021:06:01 10:30:00", T0),
        ("2021-06-01T10:30:00Z", T0),
        ("2021-06-01T12:30:00+02:00", T0),
        ("2021-06-01T10:30:00.000000", T0),
        ("20210601", datetime(2021, 6, 1, tzinfo=UTC)),
    ],
)
def test_parse_datetime(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected


def _write(path: Path, tags: dict[str, str], ns: str | None = None) -> Path:
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32631", "transform": from_origin(0, 40, 10, 10)}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.zeros((1, 4, 4), np.uint8))
        if ns:
            ds.update_tags(ns=ns, **tags)
        else:
            ds.update_tags(**tags)
    return path


def test_read_acquisition_date_from_tags(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tif", {"TIFFTAG_DATETIME": "2021:06:01 10:30:00"})
    b = _write(tmp_path / "b.tif", {"ACQUISITIONDATETIME": "2021-06-01T10:30:00Z"}, ns="IMAGERY")
    c = _write(tmp_path / "c.tif", {"ACQUISITIONDATETIME": "2021-06-01T10:30:00Z"})
    assert read_acquisition_date(a) == read_acquisition_date(b) == read_acquisition_date(c) == T0
    none = _write(tmp_path / "none.tif", {"OTHER": "x"})
    with pytest.raises(InputError, match="no acquisition date"):
        read_acquisition_date(none)


def test_registry_entry_runs_without_weights() -> None:
    spec = get_spec("gapfill")
    assert spec.needs_weights is False
    assert spec.cls.temporal_inputs == ("prev", "next")
    model = build_model("gapfill")
    assert sum(p.numel() for p in model.parameters()) == 0
    prev, nxt, cloudy = torch.zeros(1, 4, 7, 9), torch.ones(1, 4, 7, 9), torch.full((1, 4, 7, 9), 5.0)
    mask = torch.zeros(1, 1, 7, 9)
    mask[..., :3, :] = 1
    kw = {"optical_prev": prev, "optical_next": nxt, "sar_prev": None, "sar_next": None}
    out = model(cloudy, None, **kw, t_prev=T0, t=T0 + timedelta(days=3), t_next=T0 + timedelta(days=12),
                cloud_mask=mask)
    assert torch.allclose(out[..., :3, :], torch.full_like(out[..., :3, :], 0.25))
    assert torch.equal(out[..., 3:, :], cloudy[..., 3:, :])
    whole = model(cloudy, None, **kw, t_prev=0.0, t=1.0, t_next=4.0)
    assert torch.allclose(whole, torch.full_like(whole, 0.25))
    with pytest.raises(InputError, match="dates"):
        model(cloudy, None, **kw)
    with pytest.raises(InputError, match="optical_next"):
        model(cloudy, None, optical_prev=prev, t_prev=0.0, t=1.0, t_next=4.0)


def test_integer_images_do_not_wrap_around() -> None:
    prev, nxt = np.full((1, 2, 2), 1000, np.uint16), np.full((1, 2, 2), 200, np.uint16)
    out = linear_gapfill(prev, nxt, 0.0, 1.0, 4.0)
    assert np.allclose(out, 800.0)
    prev_t, nxt_t = torch.from_numpy(prev.astype(np.int32)), torch.from_numpy(nxt.astype(np.int32))
    out_t = linear_gapfill(prev_t, nxt_t, 0.0, 1.0, 4.0)
    assert torch.allclose(out_t, torch.full((1, 2, 2), 800.0))


def _raster(path: Path, data: np.ndarray, when: datetime | None, nodata: float | None = 0) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
               "dtype": data.dtype.name, "crs": "EPSG:32631", "transform": from_origin(600_000, 5_000_000, 3, 3),
               "nodata": nodata}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if when is not None:
            ds.update_tags(TIFFTAG_DATETIME=when.strftime("%Y:%m:%d %H:%M:%S"))
    return path


def test_cli_gapfill_on_rasters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """uint16 DN scenes, linear in time: the cloudy pixels get exactly the line, the clear ones stay, dates tagged."""
    from engine.cli import main

    rng = np.random.default_rng(1)
    a = rng.integers(1000, 3000, (4, 13, 17)).astype(np.float64)
    b = rng.integers(-40, 40, (4, 13, 17)).astype(np.float64)  # DN per day
    t_prev, t, t_next = T0, T0 + timedelta(days=5), T0 + timedelta(days=20)
    prev = _raster(tmp_path / "prev.tif", a.astype(np.uint16), t_prev)
    nxt = _raster(tmp_path / "next.tif", (a + 20 * b).astype(np.uint16), t_next)
    cloudy_data = np.full((4, 13, 17), 9000, np.uint16)
    cloudy = _raster(tmp_path / "cloudy.tif", cloudy_data, t)
    m = np.zeros((1, 13, 17), np.uint8)
    m[0, 3:9, 2:11] = 1
    mask = _raster(tmp_path / "mask.tif", m, None, nodata=None)
    out = tmp_path / "filled.tif"
    assert main(["gapfill", "--cloudy", str(cloudy), "--prev", str(prev), "--next", str(nxt), "--mask", str(mask),
                 "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weight"] == pytest.approx(0.25) and summary["filled_pixels"] == 6 * 9
    with rasterio.open(out) as ds:
        got = ds.read()
        assert ds.dtypes[0] == "uint16" and read_acquisition_date(out) == t
    cloud = m[0].astype(bool)
    np.testing.assert_array_equal(got[:, cloud], np.rint(a + 5 * b)[:, cloud].astype(np.uint16))
    np.testing.assert_array_equal(got[:, ~cloud], cloudy_data[:, ~cloud])
    # no mask: the whole image; dates given on the command line override the tags
    out2 = tmp_path / "whole.tif"
    assert main(["gapfill", "--cloudy", str(cloudy), "--prev", str(prev), "--next", str(nxt), "--out", str(out2),
                 "--date", (T0 + timedelta(days=10)).isoformat()]) == 0
    with rasterio.open(out2) as ds:
        np.testing.assert_array_equal(ds.read(), np.rint(a + 10 * b).astype(np.uint16))


def test_cli_gapfill_refuses_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    img = np.ones((4, 5, 5), np.uint16)
    prev = _raster(tmp_path / "p.tif", img, T0)
    undated = _raster(tmp_path / "n.tif", img, None)
    three = _raster(tmp_path / "three.tif", img[:3], T0 + timedelta(days=9))
    cloudy = _raster(tmp_path / "c.tif", img, T0 + timedelta(days=2))
    base = ["gapfill", "--cloudy", str(cloudy), "--prev", str(prev), "--out", str(tmp_path / "o.tif")]
    assert main([*base, "--next", str(undated)]) == 2
    assert "no acquisition date" in capsys.readouterr().err
    assert main([*base, "--next", str(three)]) == 2
    assert "bands" in capsys.readouterr().err
    assert main([*base, "--next", str(prev)]) == 2  # next not after prev
    assert "strictly before" in capsys.readouterr().err
    assert not (tmp_path / "o.tif").exists()


def test_engine_run_refuses_gapfill_with_one_line(tmp_path: Path) -> None:
    """The raster pipeline feeds one date; a temporal model fails there with an InputError, writing nothing."""
    from helpers_rasters import write_optical, write_sar

    from engine.config import RunConfig
    from engine.stream.accel import AccelConfig
    from engine.stream.pipeline import run

    optical = write_optical(tmp_path / "opt.tif", height=20, width=20)
    s1 = write_sar(tmp_path / "s1.tif", like=optical)
    cfg = RunConfig(optical=optical, sar=s1, out=tmp_path / "o.tif", model="gapfill", tile=32, overlap=8, device="cpu")
    with pytest.raises(InputError, match="before and after"):
        run(cfg, accel=AccelConfig(threads=1))
    assert not cfg.out.exists()


def test_gapfill_command_is_an_alias_of_run_model_gapfill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One data path: ``engine gapfill`` (new and old option names) writes what ``engine run --model gapfill`` writes,
    through the pipeline (its provenance tags), and says it is deprecated."""
    from engine.cli import main

    rng = np.random.default_rng(2)
    a = rng.integers(1000, 3000, (4, 13, 17)).astype(np.uint16)
    prev = _raster(tmp_path / "prev.tif", a, T0)
    nxt = _raster(tmp_path / "next.tif", (a + 400).astype(np.uint16), T0 + timedelta(days=4))
    cloudy = _raster(tmp_path / "cloudy.tif", np.full((4, 13, 17), 9000, np.uint16), T0 + timedelta(days=1))
    outs = {name: tmp_path / f"{name}.tif" for name in ("alias", "old_names", "run")}
    assert main(["gapfill", "--optical", str(cloudy), "--optical-prev", str(prev), "--optical-next", str(nxt),
                 "--out", str(outs["alias"])]) == 0  # fmt: skip
    assert "'engine gapfill' is deprecated" in capsys.readouterr().err
    assert main(["gapfill", "--cloudy", str(cloudy), "--prev", str(prev), "--next", str(nxt),
                 "--out", str(outs["old_names"])]) == 0  # fmt: skip
    assert "--cloudy is deprecated" in capsys.readouterr().err
    assert main(["run", "--model", "gapfill", "--optical", str(cloudy), "--optical-prev", str(prev),
                 "--optical-next", str(nxt), "--out", str(outs["run"]), "--device", "cpu"]) == 0  # fmt: skip
    arrays = {}
    for name, path in outs.items():
        with rasterio.open(path) as ds:
            arrays[name] = ds.read()
            assert ds.tags()["ALIGNCR_MODEL"] == "gapfill"
    np.testing.assert_array_equal(arrays["alias"], arrays["run"])
    np.testing.assert_array_equal(arrays["old_names"], arrays["run"])
    np.testing.assert_array_equal(arrays["run"], (a + 100).astype(np.uint16))  # a quarter of the way to next
