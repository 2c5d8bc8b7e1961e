"""Acquisition-layout dataset builder: exact layout answers on a generated archive, disjoint splits, the CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers_archive import CRS, X0, Y0, d, make_archive

from engine.errors import InputError
from training.build_dataset import build, main
from training.layout.archive import Grid, Scene, scan_archive
from training.layout.query import MSOP, MSOP_CLD, SSOP, AcquisitionLayout, Sample, SampleItem, load_layout
from training.layout.split import SplitConfig, assign_blocks, split_samples

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2×2 cells of 10×10 optical pixels (50 m). Dates/clouds chosen so each layout has one known answer."""
    n = 20
    clear = np.zeros((n, n), bool)
    b_cloud = clear.copy()
    b_cloud[:10, :10] = True  # cell (0,0): 100 %
    b_cloud[:5, 10:] = True  # cell (1,0): 50 %
    c_nodata = clear.copy()
    c_nodata[15:, 15:] = True  # cell (1,1): a quarter nodata → invalid
    optical = {
        "E": (d(5, 20), clear, None),
        "A": (d(6, 1), clear, None),
        "B": (d(6, 5), b_cloud, None),
        "C": (d(6, 10), clear, c_nodata),
        "G": (d(6, 18), None, None),  # no sidecar: the cloud detector must call these dark pixels clear
        "D": (d(6, 25), ~clear, None),  # 100 % cloud everywhere
        "H": (d(6, 27, 14), clear, None),  # 76 h after S3: no SAR pair, a target only
        "F": (d(7, 8), clear, None),
    }
    sar = {"S4": d(5, 21), "S1": d(6, 2), "S2": d(6, 10, 16), "S3": d(6, 24), "S5": d(7, 7)}
    root = tmp_path_factory.mktemp("archive")
    return make_archive(root, n, optical, sar, in_csv={"F", "S5"})


def answers(samples: list[Sample], item: str = "target") -> dict[tuple[int, int, str], str]:
    return {(s.col, s.row, s.items["t"].optical.name): s.items[item].optical.name for s in samples}


def test_scan_reads_tags_csv_and_sidecars(archive: Path) -> None:
    scenes = {s.name: s for s in scan_archive(archive)}
    assert scenes["F"].when == d(7, 8) and scenes["S5"].when == d(7, 7)  # from dates.csv
    assert scenes["A"].when == d(6, 1) and scenes["S2"].when == d(6, 10, 16)  # from tags
    assert scenes["G"].mask is None and scenes["B"].mask is not None
    assert "B_mask" not in scenes


def test_patch_statistics(archive: Path, tmp_path: Path) -> None:
    res = build(archive, tmp_path, SSOP, patch_size=10)
    stats = {(p.scene.name, p.col, p.row): p for p in res.patches}
    assert len(res.patches) == (8 + 5) * 4
    assert stats[("B", 0, 0)].cloud == 100.0 and stats[("B", 1, 0)].cloud == 50.0 and stats[("B", 0, 1)].cloud == 0.0
    assert stats[("C", 1, 1)].valid == 0.75 and stats[("C", 0, 1)].valid == 1.0
    assert all(stats[("G", c, r)].cloud == 0.0 for c in (0, 1) for r in (0, 1))
    assert stats[("S3", 1, 1)].valid == 1.0
    assert res.grid.bounds(1, 1) == (X0 + 50, Y0 - 100, X0 + 100, Y0 - 50)


def test_ssop_layout_returns_exactly_the_expected_samples(archive: Path, tmp_path: Path) -> None:
    res = build(archive, tmp_path, SSOP, patch_size=10)
    # references need SAR within 72 h (G: 6 days, H: 76 h are never references); targets are 0 % cloud within
    # ±10 days, a different scene, nearest in time. C is invalid in cell (1,1).
    expected = {}
    for cell in [(0, 0), (1, 0)]:  # B cloudy here
        expected |= {(*cell, "A"): "C", (*cell, "B"): "A", (*cell, "C"): "G", (*cell, "D"): "H"}
    expected |= {(0, 1, "A"): "B", (0, 1, "B"): "A", (0, 1, "C"): "B", (0, 1, "D"): "H"}
    expected |= {(1, 1, "A"): "B", (1, 1, "B"): "A", (1, 1, "D"): "H"}
    assert answers(res.samples) == expected
    # each reference is paired with its nearest SAR
    sars = {(s.col, s.row, s.items["t"].optical.name): s.items["t"].sar.name for s in res.samples}
    assert sars[(0, 0, "B")] == "S1" and sars[(0, 0, "C")] == "S2" and sars[(0, 0, "D")] == "S3"
    assert all(s.items["target"].sar is None for s in res.samples)


def test_sar_gap_override_drops_pairs_beyond_it(archive: Path, tmp_path: Path) -> None:
    res = build(archive, tmp_path, SSOP.with_sar_gap(48.0), patch_size=10)
    refs = {s.items["t"].optical.name for s in res.samples}
    assert "B" not in refs  # B is 72 h from S1
    assert refs == {"A", "C", "D"}


def test_msop_cld_layout(archive: Path, tmp_path: Path) -> None:
    res = build(archive, tmp_path, MSOP_CLD, patch_size=10)
    got = {(s.col, s.row): tuple(s.items[k].optical.name for k in ("t-1", "t", "target", "t+1")) for s in res.samples}
    # D (100 % cloud) with clear C at -15 d, F at +13 d (both SAR-paired) and target H at +2 d; C invalid in (1,1).
    # B (100 % in (0,0)) has no clear SAR-paired image 10–18 days later (G has no SAR).
    assert got == {(0, 0): ("C", "D", "H", "F"), (1, 0): ("C", "D", "H", "F"), (0, 1): ("C", "D", "H", "F")}
    assert all(s.items["t-1"].sar.name == "S2" and s.items["t+1"].sar.name == "S5" for s in res.samples)


def test_msop_layout(archive: Path, tmp_path: Path) -> None:
    """Table 5: every reference needs SAR-paired images 10–18 days before and after; only D has both (C, F)."""
    res = build(archive, tmp_path, MSOP, patch_size=10)
    got = {(s.col, s.row): tuple(s.items[k].optical.name for k in ("t-1", "t", "target", "t+1")) for s in res.samples}
    # A and B: nothing SAR-paired 10–18 days later (G, H have no SAR); C: nothing 10–18 days earlier;
    # F: D is 13 days earlier, but no cloud-free target within ±10 days (H is 10 d 20 h before).
    assert got == {(0, 0): ("C", "D", "H", "F"), (1, 0): ("C", "D", "H", "F"), (0, 1): ("C", "D", "H", "F")}


def test_json_layout_and_bad_layouts(archive: Path, tmp_path: Path) -> None:
    path = tmp_path / "lay.json"
    # only fully cloudy references, target strictly after them, within 3 days
    path.write_text('{"name": "x", "items": [{"name": "t", "cloud": [100, 100], "sar_max_gap_h": 72},'
                    ' {"name": "target", "cloud": [0, 0], "window_h": [1, 72]}]}')
    res = build(archive, tmp_path / "out", load_layout(str(path)), patch_size=10)
    assert answers(res.samples) == {(c, r, "D"): "H" for c in (0, 1) for r in (0, 1)}
    with pytest.raises(InputError, match="reference"):
        AcquisitionLayout("bad", ())
    with pytest.raises(InputError, match="unknown layout"):
        load_layout("nope")


def test_splits_are_geographically_disjoint(tmp_path: Path) -> None:
    n = 24  # 12×12 cells of 2 pixels, 9 blocks of 4×4 cells
    clear = np.zeros((n, n), bool)
    root = make_archive(tmp_path / "big", n, {"A": (d(6, 1), clear, None), "C": (d(6, 10), clear, None)},
                        {"S1": d(6, 2)})
    cfg = SplitConfig(block_cells=4, val=0.1, test=0.2, seed=3)
    res = build(root, tmp_path / "out", SSOP, patch_size=2, split=cfg)
    assert len(res.samples) == 144  # A → C everywhere; C has no SAR within 72 h
    cells = {k: {(s.col, s.row) for s in v} for k, v in res.splits.items()}
    assert cells["train"].isdisjoint(cells["val"]) and cells["train"].isdisjoint(cells["test"])
    assert cells["val"].isdisjoint(cells["test"])
    assert sum(len(v) for v in res.splits.values()) == 144
    blocks = {k: {(c // 4, r // 4) for c, r in v} for k, v in cells.items()}
    assert blocks["train"].isdisjoint(blocks["val"] | blocks["test"]) and blocks["val"].isdisjoint(blocks["test"])
    assert (len(blocks["test"]), len(blocks["val"])) == (round(9 * 0.2), round(9 * 0.1)) == (2, 1)
    # every sample of a block went to one split: blocks are whole
    assert all(len(v) == 16 * len(blocks[k]) for k, v in res.splits.items())
    # CSVs match
    for k, v in res.splits.items():
        with (tmp_path / "out" / f"{k}.csv").open() as fh:
            assert sum(1 for _ in csv.DictReader(fh)) == len(v)


def test_per_location_cap_applies_to_train_and_val_only() -> None:
    scene = Scene(Path("x.tif"), "optical", d(6, 1))
    item = SampleItem(scene, 0.0, None)
    samples = [Sample(c, 0, {"t": item}) for c in range(4) for _ in range(5)]
    cfg = SplitConfig(block_cells=1, val=0.25, test=0.25, max_per_location=2, seed=0)
    split = split_samples(samples, cfg)
    assert sorted(assign_blocks([(0, 0), (1, 0), (2, 0), (3, 0)], cfg).values()) == ["test", "train", "train", "val"]
    assert len(split["test"]) == 5 and len(split["val"]) == 2 and len(split["train"]) == 4


def test_cli_writes_csvs(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    assert main(["--archive", str(archive), "--out", str(out), "--layout", "ssop", "--patch-size", "10",
                 "--block-cells", "1", "--test", "0.25", "--val", "0.25"]) == 0
    rows = []
    for k in ("train", "val", "test"):
        with (out / f"{k}.csv").open() as fh:
            rows += [(k, r) for r in csv.DictReader(fh)]
    assert len(rows) == 15
    first = rows[0][1]
    assert first["t_optical"].startswith("optical/") and first["t_sar"].startswith("sar/")
    assert float(first["target_cloud"]) == 0.0 and first["crs"] == CRS
    assert (out / "patches.csv").is_file() and "ssop" in (out / "layout.json").read_text()
    assert main(["--archive", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_python_dash_m_entry_point(archive: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training.build_dataset", "--archive", str(archive), "--out", str(tmp_path / "m"),
         "--layout", "msop-cld", "--patch-size", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 samples match layout 'msop-cld'" in proc.stderr


def test_mixed_crs_is_refused(tmp_path: Path) -> None:
    root = make_archive(tmp_path / "a", 20, {"A": (d(6, 1), np.zeros((20, 20), bool), None)}, {"S1": d(6, 2)})
    with rasterio.open(root / "sar" / "S1.tif", "r+") as ds:
        ds.crs = "EPSG:32632"
    with pytest.raises(InputError, match="one CRS"):
        build(root, tmp_path / "o", SSOP, patch_size=10)


def test_grid_cells_inside() -> None:
    g = Grid(CRS, 0.0, 100.0, 10.0)
    assert g.cells_inside(0, 80, 30, 100) == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    assert g.cells_inside(5, 80, 30, 100) == [(1, 0), (2, 0), (1, 1), (2, 1)]


def test_layout_dataset_feeds_temporal_models(archive: Path, tmp_path: Path) -> None:
    """msop-cld samples read back as tensors: gap-filling D from C and F reproduces D (DN linear in time)."""
    import torch

    from engine.models import build_model
    from training.layout.dataset import LayoutDataset

    res = build(archive, tmp_path, MSOP_CLD, patch_size=10, split=SplitConfig(val=0.0, test=0.0))
    ds = LayoutDataset(tmp_path / "train.csv", archive)
    assert len(ds) == len(res.splits["train"]) == 3
    s = ds[0]
    assert {"optical", "sar", "target", "mask", "optical_prev", "sar_prev", "optical_next", "sar_next", "t",
            "t_prev", "t_next", "landcover", "id"} <= set(s)
    assert s["optical"].shape == s["target"].shape == s["optical_prev"].shape == (4, 10, 10)
    assert s["sar"].shape == s["sar_next"].shape == (2, 10, 10)
    vv, vh = (-12 + 25) / 25, (-12 + 32.5) / 32.5  # engine.sources.normalise clip ranges
    assert torch.allclose(s["sar"][0], torch.full((10, 10), vv))
    assert torch.allclose(s["sar"][1], torch.full((10, 10), vh))
    assert s["mask"].min() == 1.0  # D is 100 % cloud
    assert s["t"] == d(6, 25).timestamp() and s["t_prev"] == d(6, 10).timestamp()

    def dn(day: datetime) -> float:
        return (300 + round((day - d(5, 1)).total_seconds() / 86400)) / 1e4

    gap = build_model("gapfill")
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    temporal = {k: batch[k] for k in ("optical_prev", "sar_prev", "optical_next", "sar_next")}
    out = gap(batch["optical"], batch["sar"], **temporal, t_prev=batch["t_prev"], t=batch["t"], t_next=batch["t_next"],
              cloud_mask=batch["mask"])
    assert torch.allclose(out, torch.full_like(out, dn(d(6, 25))), atol=1e-6)
    assert torch.allclose(batch["target"], torch.full_like(out, dn(d(6, 27, 14))), atol=1e-6)
    msop = build_model("msop-unet", widths=(8, 8, 8)).eval()
    with torch.no_grad():
        assert msop(batch["optical"], batch["sar"], **temporal).shape == (3, 4, 10, 10)
