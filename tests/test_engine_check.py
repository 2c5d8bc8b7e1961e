"""training.engine_check writes a report sample as a scene the engine reads back into the network's exact inputs:
optical DN = reflectance × 10⁴, SAR in dB that the engine's normalisation maps back to the sample's [0, 1] values,
a SAR on its own (coarser) grid over the same extent, the mask and the reference."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from engine.sources.normalise import normalise_sar
from training.engine_check import figure, write_scene


def _sample(sar_size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 60, 60), np.float32)
    mask[:, :20] = 1.0
    return {"optical": rng.uniform(0.01, 0.6, (4, 60, 60)).astype(np.float32),
            "sar": rng.uniform(0.0, 1.0, (2, sar_size, sar_size)).astype(np.float32), "mask": mask,
            "target": rng.uniform(0.01, 0.6, (4, 60, 60)).astype(np.float32)}  # fmt: skip


def test_scene_reads_back_as_the_sample(tmp_path):
    sample = _sample(60)
    paths = write_scene(sample, tmp_path)
    with rasterio.open(paths["optical"]) as opt, rasterio.open(paths["sar"]) as sar:
        np.testing.assert_allclose(opt.read() / 1e4, sample["optical"], atol=0.5e-4)
        np.testing.assert_allclose(normalise_sar(sar.read()), sample["sar"], atol=1e-5)
        assert opt.nodata == 0 and (opt.read() > 0).all()  # a dark pixel is not turned into no data
        assert sar.bounds == opt.bounds and sar.crs == opt.crs
    with rasterio.open(paths["mask"]) as mask, rasterio.open(paths["reference"]) as ref:
        np.testing.assert_array_equal(mask.read(1), sample["mask"][0] > 0.5)
        np.testing.assert_allclose(ref.read() / 1e4, sample["target"], atol=0.5e-4)


def test_a_native_sar_grid_keeps_its_pixels_over_the_same_extent(tmp_path):
    paths = write_scene(_sample(18), tmp_path)  # 3 m optical, 10 m SAR (M3R-CR's native grid)
    with rasterio.open(paths["optical"]) as opt, rasterio.open(paths["sar"]) as sar:
        assert opt.res == (3.0, 3.0) and sar.shape == (18, 18)
        np.testing.assert_allclose(sar.bounds, opt.bounds)


def test_figure_refuses_scenes_that_may_not_be_pictured(tmp_path):
    """M3R-CR's PlanetScope imagery is academic-only: a figure naming such a scene is refused before anything is
    drawn; the others are drawn."""
    for name in ("real_00", "real_01"):
        write_scene(_sample(60), tmp_path / name)
        write_scene(_sample(60), tmp_path / "x")  # a variant output beside it, read as reflectance × 10⁴
        (tmp_path / "x" / "cloudy.tif").rename(tmp_path / name / "plain.tif")
    with pytest.raises(ValueError, match="real_01 may be scored but never pictured"):
        figure(tmp_path, ["real_00", "real_01"], ["plain"], tmp_path / "refused.png", {"real_01"})
    assert not (tmp_path / "refused.png").exists()
    assert figure(tmp_path, ["real_00"], ["plain"], tmp_path / "drawn.png", {"real_01"}).exists()


def _row(kind: str, flat: float, fill: float, model: float, offgamut: float) -> dict:
    score = {"ssim": 0.8, "sam": 5.0, "bandr_in": 0.4, "ndvir_in": None}
    return {"kind": kind, "flat": {**score, "psnr": flat, "offgamut_in": 0.0},
            "fill": {**score, "psnr": fill, "offgamut_in": 0.0},
            "model": {**score, "psnr": model, "offgamut_in": offgamut}}  # fmt: skip


def test_summary_table_margin_is_over_the_better_baseline_per_sample():
    """The margin is taken per sample against max(flat, fill) — not against the better mean — and 'ahead' counts
    the samples where the model leads; off-gamut reports the worst sample."""
    from training.engine_check import summary_table

    rows = [_row("realclouds", 30.0, 28.0, 31.0, 0.001), _row("realclouds", 25.0, 27.0, 26.0, 0.02)]
    lines = {tuple(c.strip() for c in line.strip("|").split("|"))[1]: line for line in summary_table(rows, ["model"])
             .splitlines()[2:]}  # fmt: skip
    cells = [c.strip() for c in lines["model"].strip("|").split("|")]
    assert cells[:5] == ["realclouds (2)", "model", "28.50", "+0.00", "1/2"]  # +1 on one sample, −1 on the other
    assert cells[-2:] == ["–", "2.00"]  # NDVI r undefined everywhere; the worst off-gamut share, in %
