"""Training datasets and augmentation: real shared samples (skipped when absent) and tiny generated fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from engine.errors import InputError
from engine.refine.samples import crop_sample, crop_windows, flip_rotate, nearest_resize
from training.datasets import M3RCR, SEN12MSCR, AugmentConfig, TrainView, build_reader
from training.datasets.augment import add_synthetic_clouds

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

KEYS = {"optical", "target", "sar", "mask", "landcover", "id"}


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                       dtype=array.dtype) as ds:
        ds.write(array)


@pytest.fixture()
def tiny_m3rcr(tmp_path: Path) -> Path:
    """A 30×30 optical / 9×9 SAR quartet in the official layout (ratio 10/3 as M3R-CR), with one NaN SAR pixel."""
    rng = np.random.default_rng(0)
    base = tmp_path / "train"
    _write(base / "free" / "planet_cloudfree_a_1.tif", rng.integers(100, 3000, (4, 30, 30)).astype(np.uint16))
    _write(base / "cloudy" / "planet_cloudy_a_1.tif", rng.integers(100, 9000, (4, 30, 30)).astype(np.uint16))
    sar = rng.uniform(-30, 2, (2, 9, 9))
    sar[0, 0, 0] = np.nan
    _write(base / "s1" / "S1_a_1.tif", sar)
    _write(base / "lc" / "lc_a_1.tif", np.full((1, 9, 9), 40, dtype=np.uint8))
    mask = np.zeros((30, 30), dtype=bool)
    mask[:15] = True
    (base / "mask").mkdir()
    np.save(base / "mask" / "cm_a_1.npy", mask)
    row = "free/planet_cloudfree_a_1.tif,cloudy/planet_cloudy_a_1.tif,s1/S1_a_1.tif,lc/lc_a_1.tif,mask/cm_a_1.npy\n"
    (tmp_path / "list.csv").write_text(row * 3)
    return tmp_path


@pytest.fixture()
def tiny_sen12(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for sid in ("7", "12"):
        s2 = rng.integers(0, 4000, (13, 32, 32)).astype(np.uint16)
        s2[1:4] = 1000 + int(sid)  # B2, B3, B4 constant: recognisable after band selection
        _write(tmp_path / "s2_cloudfree" / f"{sid}.tif", s2)
        _write(tmp_path / "s2_cloudy" / f"{sid}.tif", s2)
        _write(tmp_path / "s1" / f"{sid}.tif", rng.uniform(-25, 0, (2, 32, 32)).astype(np.float32))
    _write(tmp_path / "cloudmask" / "7.tif", np.ones((1, 32, 32), dtype=np.uint8))
    return tmp_path


def _check_sample(s: dict, opt_hw: tuple[int, int], sar_hw: tuple[int, int]) -> None:
    assert set(s) == KEYS
    assert s["optical"].shape == (4, *opt_hw) and s["target"].shape == (4, *opt_hw)
    assert s["sar"].shape == (2, *sar_hw)
    assert s["mask"].shape == (1, *opt_hw) and s["landcover"].shape == opt_hw
    for k in ("optical", "target", "sar", "mask"):
        assert s[k].dtype == torch.float32
        assert torch.isfinite(s[k]).all() and s[k].min() >= 0 and s[k].max() <= 1
    assert s["landcover"].dtype == torch.int64 and int(s["landcover"].max()) <= 6


def test_m3rcr_tiny_native_and_upsampled(tiny_m3rcr: Path) -> None:
    native = M3RCR(tiny_m3rcr, "list.csv", sar_mode="native")
    assert len(native) == 1  # the repeated row counts once
    s = native[0]
    _check_sample(s, (30, 30), (9, 9))
    assert s["id"] == "a_1"
    assert float(s["mask"][0, :15].min()) == 1 and float(s["mask"][0, 15:].max()) == 0
    assert int(s["landcover"].unique().item()) == 2  # WorldCover 40 → agriculture
    up = M3RCR(tiny_m3rcr, "list.csv", sar_mode="upsample")[0]
    _check_sample(up, (30, 30), (30, 30))
    assert torch.equal(up["sar"], torch.from_numpy(nearest_resize(s["sar"].numpy(), (30, 30))))
    assert len(M3RCR(tiny_m3rcr, "list.csv", unique=False)) == 3


def test_m3rcr_errors(tiny_m3rcr: Path) -> None:
    with pytest.raises(InputError, match="sar_mode"):
        M3RCR(tiny_m3rcr, "list.csv", sar_mode="bilinear")
    with pytest.raises(InputError, match="not found"):
        M3RCR(tiny_m3rcr, "nope.csv")


def test_sen12mscr_tiny_bands_masks_and_selection(tiny_sen12: Path) -> None:
    ds = SEN12MSCR(tiny_sen12)
    assert [ds.sample_id(i) for i in range(len(ds))] == ["7", "12"]
    s7, s12 = ds[0], ds[1]
    _check_sample(s7, (32, 32), (32, 32))
    assert torch.allclose(s7["optical"][:3], torch.tensor(1007 / 10000.0))  # bands 1, 2, 3 → B, G, R
    assert float(s7["mask"].min()) == 1.0  # given mask
    assert s12["mask"].shape == (1, 32, 32)  # detected: no cloudmask/12.tif
    assert int(s7["landcover"].unique().item()) == 6
    assert len(SEN12MSCR(tiny_sen12, exclude=["7"])) == 1
    with pytest.raises(InputError, match="not found"):
        SEN12MSCR(tiny_sen12, include=["99"])
    with pytest.raises(InputError, match="4 optical bands"):
        SEN12MSCR(tiny_sen12, bands=(1, 2, 3))


def test_native_crop_maps_to_whole_sar_pixels() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        (oy, ox, os_), (sy, sx, ss) = crop_windows((300, 300), (90, 90), 160, rng)
        assert os_ == 160 and ss == 48
        assert oy % 10 == 0 and ox % 10 == 0 and sy * 10 == oy * 3 and sx * 10 == ox * 3
        assert oy + 160 <= 300 and sy + 48 <= 90
    assert crop_windows((300, 300), (90, 90), 160, None) == ((70, 70, 160), (21, 21, 48))
    with pytest.raises(InputError, match="whole SAR pixels"):
        crop_windows((300, 300), (90, 90), 96, rng)
    # ratio 1: any size
    assert crop_windows((256, 256), (256, 256), 97, None)[1][2] == 97


def test_native_crop_equals_upsample_then_crop() -> None:
    """A native SAR window upsampled by the model == the officially upsampled SAR cropped at the same place."""
    rng = np.random.default_rng(4)
    sar = rng.random((2, 90, 90)).astype(np.float32)
    sample = {"optical": np.zeros((4, 300, 300), np.float32), "target": np.zeros((4, 300, 300), np.float32),
              "sar": sar, "mask": np.zeros((1, 300, 300), np.float32),
              "landcover": np.zeros((300, 300), np.int64), "id": "x"}
    up_full = nearest_resize(sar, (300, 300))
    for seed in range(5):
        c = crop_sample(sample, 160, np.random.default_rng(seed))
        (oy, ox, _), _ = crop_windows((300, 300), (90, 90), 160, np.random.default_rng(seed))
        model_side = torch.nn.functional.interpolate(torch.from_numpy(c["sar"])[None], size=(160, 160),
                                                     mode="nearest-exact")[0].numpy()
        assert np.array_equal(model_side, up_full[:, oy : oy + 160, ox : ox + 160])


def test_flip_rotate_is_identical_across_modalities() -> None:
    """Every array carries the same per-pixel code; after augmentation they must still agree pixel by pixel."""
    code = np.arange(64, dtype=np.float32).reshape(8, 8)
    sample = {"optical": np.stack([code] * 4), "target": np.stack([code] * 4), "sar": np.stack([code] * 2),
              "mask": code[None].copy(), "landcover": code.astype(np.int64), "id": "c"}
    seen = set()
    for seed in range(16):
        out = flip_rotate(sample, np.random.default_rng(seed))
        ref = out["landcover"].astype(np.float32)
        for k in ("optical", "target", "sar", "mask"):
            assert all(np.array_equal(band, ref) for band in out[k])
        seen.add(ref.tobytes())
    assert len(seen) > 4  # the augmentations actually vary


def test_synthetic_clouds_only_where_the_mask_is() -> None:
    clear = np.full((4, 40, 40), 0.05, np.float32)
    sample = {"optical": clear.copy(), "target": clear.copy(), "sar": np.zeros((2, 40, 40), np.float32),
              "mask": np.zeros((1, 40, 40), np.float32), "landcover": np.zeros((40, 40), np.int64), "id": "s"}
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 10:30] = 1
    out = add_synthetic_clouds(sample, mask, np.random.default_rng(0))
    assert out["optical"][:, 20, 20].min() > 0.2  # ≥ 0.35 · 0.6 opacity: bright inside the cloud
    assert np.allclose(out["optical"][:, 0, 0], 0.05, atol=1e-3)  # untouched far away
    assert out["mask"][0, 20, 20] == 1 and out["mask"][0, 0, 0] == 0
    assert np.array_equal(out["target"], clear)


def test_trainview_is_deterministic_per_seed_epoch_index(tiny_sen12: Path) -> None:
    ds = SEN12MSCR(tiny_sen12, cache=True)
    view = TrainView([ds], AugmentConfig(crop=16, synthetic_clouds=0.5), seed=3, length=6)
    a = [view[i]["optical"] for i in range(6)]
    assert all(torch.equal(x, view[i]["optical"]) for i, x in enumerate(a))
    view.set_epoch(1)
    assert not all(torch.equal(x, view[i]["optical"]) for i, x in enumerate(a))
    assert len(view) == 6 and view[5]["optical"].shape == (4, 16, 16)


@pytest.mark.shared
def test_upsampled_sar_matches_rasterio_nearest(shared_data: Path) -> None:
    """The official loader's SAR: rasterio nearest read at out_shape (2, 300, 300)."""
    from rasterio.enums import Resampling

    path = next((shared_data / "m3rcr_sample" / "train" / "S1_fall").rglob("*.tif"))
    with rasterio.open(path) as ds:
        native = ds.read()
        official = ds.read(out_shape=(2, 300, 300), resampling=Resampling.nearest)
    assert np.array_equal(nearest_resize(native, (300, 300)), official, equal_nan=True)


@pytest.mark.shared
def test_m3rcr_real_sample(shared_data: Path) -> None:
    ds = build_reader({"kind": "m3rcr", "root": str(shared_data / "m3rcr_sample"), "csv": "one_train_sample.csv"})
    assert len(ds) == 1
    s = ds[0]
    _check_sample(s, (300, 300), (90, 90))
    assert s["id"] == "fall_1_p_457"
    assert 0.05 < float(s["mask"].mean()) < 0.95  # the real mask, not an empty one
    view = TrainView([ds], AugmentConfig(crop=160), seed=0, length=2)
    _check_sample(view[0], (160, 160), (48, 48))


@pytest.mark.shared
def test_sen12mscr_real_triplets_and_glfcr(shared_data: Path) -> None:
    trip = SEN12MSCR(shared_data / "sen12mscr_triplets", exclude=["4438"])
    assert len(trip) == 15 and "4438" not in {trip.sample_id(i) for i in range(len(trip))}
    _check_sample(trip[0], (256, 256), (256, 256))
    glf = SEN12MSCR(shared_data / "sen12mscr_glfcr")
    assert {glf.sample_id(i) for i in range(2)} == {"ROIs1970_fall_139_p839", "ROIs2017_winter_112_p797"}
    assert len(SEN12MSCR(shared_data / "sen12mscr_glfcr", splits=[1])) == 1
    _check_sample(glf[0], (256, 256), (256, 256))
