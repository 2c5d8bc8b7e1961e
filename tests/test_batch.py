"""``engine batch`` on Dask: manifest checks (incl. the temporal/DEM columns), a LocalCluster of 2 worker processes
on 3 small scenes (one bad), a gapfill scene with its dates from the manifest next to a normal one, a worker killed
mid-scene (retried, no half-written output), the CLI against a running scheduler."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_processes import dead_pid
from helpers_rasters import write_optical, write_sar
from torch import nn

from engine.batch import BatchConfig, ManifestError, read_manifest, run_batch

distributed = pytest.importorskip("distributed")

DIE_ONCE = "test-die-once"


@dataclass(frozen=True)
class DieOnceConfig:
    marker: str = ""
    in_bands: int = 4


class DieOnce(nn.Module):
    """Kills its worker process the first time it runs (as an out-of-memory kill would), then adds 0.1."""

    def __init__(self, cfg: DieOnceConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        marker = Path(self.cfg.marker)
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return optical + 0.1


class RegisterDieOnce(distributed.WorkerPlugin):
    """Registers the test model on every worker, including the ones the nanny restarts after a death."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def setup(self, worker: object) -> None:
        from engine.models import MODEL_REGISTRY, register_model

        if DIE_ONCE not in MODEL_REGISTRY:
            register_model(DIE_ONCE, DieOnceConfig(marker=self.marker), "test", needs_weights=False)(DieOnce)


# the batch mechanics under test, not the default mode's adaptation and guard (tests/test_mode.py)
RUN = {"tile": 32, "overlap": 8, "device": "cpu", "mode": "raw"}


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def _read_summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scenes")
    for i in range(3):
        opt = write_optical(d / f"opt{i}.tif", height=48, width=56, seed=i)
        write_sar(d / f"s1_{i}.tif", like=opt, seed=10 + i)
    return d


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    marker = tmp_path_factory.mktemp("marker") / "died-once"
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        with distributed.Client(cluster) as c:
            c.register_plugin(RegisterDieOnce(str(marker)))
            yield c
        cluster.close()


# --- manifest ---------------------------------------------------------------------------------------------------


def test_manifest_resolves_relative_paths_and_optional_columns(tmp_path: Path) -> None:
    m = _write_manifest(tmp_path / "m.csv", [
        {"id": "a", "optical": "in/o.tif", "sar": "/data/s.tif", "out": "out/a.tif", "model": "identity"},
        {"id": "b", "optical": "o2.tif", "sar": "s2.tif", "out": "b.tif", "model": ""},
    ])  # fmt: skip
    a, b = read_manifest(m)
    assert a.optical == (tmp_path / "in" / "o.tif").resolve() and a.sar == Path("/data/s.tif")
    assert a.model == "identity" and b.model is None and b.weights is None and b.out == (tmp_path / "b.tif")


def test_qa_column_writes_the_scene_qa_and_clears_a_killed_attempts_leftovers(scenes: Path, tmp_path: Path) -> None:
    """The manifest's qa cell is the scene's ``--qa``; run_scene (what each worker calls) removes a stale
    temporary QA file that a killed attempt left, like the output's."""
    from engine.batch import run_scene

    m = _write_manifest(tmp_path / "m.csv", [
        {"id": "a", "optical": str(scenes / "opt0.tif"), "sar": str(scenes / "s1_0.tif"), "out": "a.tif",
         "qa": "qa/a_qa.tif", "model": "identity"},
    ])  # fmt: skip
    (job,) = read_manifest(m)
    assert job.qa == (tmp_path / "qa" / "a_qa.tif").resolve()
    job.qa.parent.mkdir()
    stale = job.qa.parent / f".{job.qa.name}.{dead_pid()}.dead1234.tmp.tif"
    stale.write_bytes(b"half")
    record = run_scene(job, RUN, {})
    assert record["status"] == "ok" and record["model_percent"] == "100.00" and record["warnings"] == "", record
    with rasterio.open(job.qa) as ds:
        assert (ds.read(1) == 100).all()
    assert not stale.exists()
    # a scene whose SAR covers half of it: the summary row says so, for a second look
    from helpers_rasters import WGS84, footprint_transform

    transform, w, h = footprint_transform(scenes / "opt0.tif", WGS84, 9e-5)
    half = write_sar(tmp_path / "half.tif", crs=WGS84, transform=transform, height=h, width=w // 2)
    record = run_scene(dataclasses.replace(job, sar=half, out=tmp_path / "b.tif", qa=None),
                       RUN, {})  # fmt: skip
    assert record["status"] == "ok" and "SAR covers only" in record["warnings"]
    assert 30 < float(record["model_percent"]) < 70


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "optical": "o", "sar": "s"}], "lacks column"),
        ([{"id": "a", "optical": "o", "sar": "s", "out": "x", "colour": "red"}], "unknown column"),
        ([{"id": "a", "optical": "o", "sar": "s", "out": "x"}, {"id": "a", "optical": "o", "sar": "s", "out": "y"}],
         "row 3: duplicate id"),
        ([{"id": "a", "optical": "o", "sar": "s", "out": "x"}, {"id": "b", "optical": "o", "sar": "s", "out": "x"}],
         "row 3: output"),
        ([{"id": "a", "optical": "o", "sar": "", "out": "x"}], "row 2: empty 'sar'"),
    ],
)  # fmt: skip
def test_bad_manifests_are_one_line_errors(tmp_path: Path, rows: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        read_manifest(_write_manifest(tmp_path / "m.csv", rows))


def test_manifest_columns_of_temporal_and_dem_models(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    m = _write_manifest(tmp_path / "m.csv", [
        {"id": "g", "optical": "o.tif", "sar": "", "out": "g.tif", "model": "gapfill", "optical_prev": "t0/p.tif",
         "optical_next": "/data/n.tif", "date": "2021-06-04T10:00:00Z", "date_prev": "2021:06:01 10:00:00",
         "date_next": "", "dem": "dem/srtm.tif"},
        {"id": "m", "optical": "o.tif", "sar": "s.tif", "out": "m.tif", "model": "msop-unet", "sar_prev": "sp.tif",
         "sar_next": "sn.tif"},
    ])  # fmt: skip
    g, msop = read_manifest(m)
    assert g.sar is None and g.optical_prev == (tmp_path / "t0" / "p.tif").resolve()
    assert g.optical_next == Path("/data/n.tif") and g.dem == (tmp_path / "dem" / "srtm.tif").resolve()
    assert g.date == datetime(2021, 6, 4, 10, tzinfo=UTC) and g.date_prev == datetime(2021, 6, 1, 10, tzinfo=UTC)
    assert g.date_next is None and g.sar_prev is None and g.sar_next is None
    assert msop.sar_prev == (tmp_path / "sp.tif").resolve() and msop.optical_prev is None and msop.dem is None


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"model": "gapfill", "date": "next tuesday"}, "row 2: 'date': "),
        ({"model": "identity"}, "row 2: empty 'sar' (only a model without SAR input, e.g. gapfill, may leave it"),
        ({"model": ""}, "row 2: empty 'sar'"),
    ],
)
def test_bad_new_manifest_cells(tmp_path: Path, row: dict[str, str], message: str) -> None:
    rows = [{"id": "a", "optical": "o.tif", "sar": "", "out": "x.tif", **row}]
    with pytest.raises(ManifestError, match=re.escape(message)):
        read_manifest(_write_manifest(tmp_path / "m.csv", rows))


def test_missing_and_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "e.csv").write_text("id,optical,sar,out\n")
    with pytest.raises(ManifestError, match="no scene"):
        read_manifest(tmp_path / "e.csv")


def test_bad_batch_settings() -> None:
    for cfg, msg in ((BatchConfig(workers=0), "--workers"), (BatchConfig(retries=-1), "--retries"),
                     (BatchConfig(scheduler="yarn"), "--scheduler")):  # fmt: skip
        with pytest.raises(Exception, match=msg):
            cfg.validate()


# --- on a cluster -----------------------------------------------------------------------------------------------


def test_three_scenes_one_bad_two_ok(client, scenes: Path, tmp_path: Path) -> None:
    rows = [
        {"id": f"s{i}", "optical": str(scenes / f"opt{i}.tif"), "sar": str(scenes / f"s1_{i}.tif"),
         "out": str(tmp_path / f"out{i}.tif"), "model": "identity"}
        for i in range(3)
    ]  # fmt: skip
    rows[1]["sar"] = str(scenes / "missing.tif")  # the bad scene: its SAR does not exist
    jobs = read_manifest(_write_manifest(tmp_path / "m.csv", rows))
    config = BatchConfig(retries=2, run=RUN, accel={"threads": 1})
    seen = []
    outcomes = run_batch(
        jobs, config, tmp_path / "summary.csv", client=client, on_outcome=lambda o, k, n: seen.append(k)
    )
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"] and sorted(seen) == [1, 2, 3]
    summary = _read_summary(tmp_path / "summary.csv")
    assert summary["s1"]["status"] == "failed" and "missing.tif" in summary["s1"]["error"]
    assert summary["s1"]["attempts"] == "1"  # an input error is not retried
    assert summary["s1"]["output"] == "" and not (tmp_path / "out1.tif").exists()
    for i in (0, 2):
        assert summary[f"s{i}"]["attempts"] == "1" and float(summary[f"s{i}"]["seconds"]) > 0
        assert summary[f"s{i}"]["model_percent"] == "100.00" and summary[f"s{i}"]["warnings"] == ""
        with rasterio.open(tmp_path / f"out{i}.tif") as out, rasterio.open(scenes / f"opt{i}.tif") as src:
            np.testing.assert_array_equal(out.read(), src.read())  # identity model
    assert not list(tmp_path.glob(".*tmp*"))


def test_gapfill_scene_with_dates_next_to_a_normal_scene(client, scenes: Path, tmp_path: Path) -> None:
    """A gapfill row (no SAR, the extra dates and their times in the manifest, relative paths) and an ordinary row
    in one batch: both succeed, and the gapfill output is the interpolation the manifest's dates ask for."""
    shape = (4, 48, 56)
    write_optical(tmp_path / "cloudy.tif", height=48, width=56, seed=3)
    write_optical(tmp_path / "before.tif", np.full(shape, 1000, dtype=np.uint16))
    write_optical(tmp_path / "after.tif", np.full(shape, 3000, dtype=np.uint16))
    rows = [
        {"id": "gap", "optical": "cloudy.tif", "sar": "", "out": "gap.tif", "model": "gapfill",
         "optical_prev": "before.tif", "optical_next": "after.tif", "date": "2021-06-04T10:00:00Z",
         "date_prev": "2021-06-01T10:00:00Z", "date_next": "2021-06-11T10:00:00Z"},  # weight 0.3 on "after"
        {"id": "plain", "optical": str(scenes / "opt1.tif"), "sar": str(scenes / "s1_1.tif"), "out": "plain.tif",
         "model": "identity"},
    ]  # fmt: skip
    jobs = read_manifest(_write_manifest(tmp_path / "m.csv", rows))
    config = BatchConfig(retries=0, run=RUN, accel={"threads": 1})
    outcomes = run_batch(jobs, config, tmp_path / "summary.csv", client=client)
    assert [o.status for o in outcomes] == ["ok", "ok"], outcomes
    with rasterio.open(tmp_path / "gap.tif") as ds:
        np.testing.assert_array_equal(ds.read(), np.full(shape, 1600, dtype=np.uint16))
    with rasterio.open(tmp_path / "plain.tif") as out, rasterio.open(scenes / "opt1.tif") as src:
        np.testing.assert_array_equal(out.read(), src.read())


def test_worker_killed_mid_scene_is_retried_without_half_written_output(client, scenes: Path, tmp_path: Path) -> None:
    rows = [{"id": "dies", "optical": str(scenes / "opt0.tif"), "sar": str(scenes / "s1_0.tif"),
             "out": str(tmp_path / "dies.tif"), "model": DIE_ONCE}]  # fmt: skip
    jobs = read_manifest(_write_manifest(tmp_path / "m.csv", rows))
    config = BatchConfig(retries=1, run=RUN, accel={"threads": 1})
    (outcome,) = run_batch(jobs, config, tmp_path / "summary.csv", client=client)
    assert outcome.status == "ok" and outcome.attempts == 2, outcome
    assert (tmp_path / "dies.tif").exists() and not list(tmp_path.glob(".*tmp*"))  # the dead attempt's temp is gone


def test_cli_against_a_running_scheduler(client, scenes: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    rows = [{"id": "one", "optical": str(scenes / "opt2.tif"), "sar": str(scenes / "s1_2.tif"), "out": "one.tif",
             "model": "identity"}]  # fmt: skip
    manifest = _write_manifest(tmp_path / "scenes.csv", rows)
    address = client.scheduler.address.replace("tcp://", "dask://")
    code = main(["batch", "--manifest", str(manifest), "--scheduler", address, "--tile", "32", "--overlap", "8",
                 "--device", "cpu", "--threads", "1"])  # fmt: skip
    assert code == 0
    assert "1 of 1 scenes ok" in capsys.readouterr().out
    assert _read_summary(tmp_path / "scenes.summary.csv")["one"]["status"] == "ok"
    assert (tmp_path / "one.tif").exists()
