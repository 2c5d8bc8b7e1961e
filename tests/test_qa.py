"""--qa: a uint8 raster on the output grid with the percent of each pixel taken from the model's output."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers_models import registered_test_models
from helpers_rasters import WGS84, footprint_transform, read_band_and_facts, write_mask, write_optical, write_sar

from engine.cli import main
from engine.config import RunConfig
from engine.errors import Cancelled, InputError
from engine.progress import Progress
from engine.stream.chunks import QA_NODATA
from engine.stream.composite import cloud_weight
from engine.stream.pipeline import run


@pytest.fixture(scope="module", autouse=True)
def _models():
    with registered_test_models():
        yield


_read = read_band_and_facts


def test_qa_marks_model_pixels_kept_pixels_and_nodata(tmp_path):
    """Half the scene without SAR (kept: 0), a nodata corner (255), the rest the model's (100)."""
    data = np.full((4, 60, 60), 3000, dtype=np.uint16)
    data[:, :5, :5] = 0  # optical nodata
    opt = write_optical(tmp_path / "opt.tif", data)
    transform, w, h = footprint_transform(opt, WGS84, 9e-5)
    sar = write_sar(tmp_path / "half.tif", crs=WGS84, transform=transform, height=h, width=w // 2)
    out, qa = tmp_path / "out.tif", tmp_path / "qa.tif"
    result = run(RunConfig(optical=opt, sar=sar, out=out, qa=qa, model="test-brighten", mode="raw", tile=32, overlap=8,
                           chunk=32))
    share, ds = _read(qa)
    assert result.model_fraction == pytest.approx((share == 100).sum() / (share != QA_NODATA).sum())
    assert 0.35 < result.model_fraction < 0.65
    with rasterio.open(opt) as src:
        assert (ds["crs"], ds["transform"], ds["shape"]) == (src.crs, src.transform, src.shape)
    assert ds["dtypes"] == ("uint8",) and ds["nodata"] == QA_NODATA and ds["descriptions"] == ("model share (%)",)
    assert "ALIGNCR_QA" in ds["tags"] and ds["tags"]["ALIGNCR_MODEL"] == "test-brighten"
    assert (share[:5, :5] == QA_NODATA).all()
    assert (share[10:, 5:20] == 100).all() and (share[:, -20:] == 0).all()
    result, _ = _read(out)
    np.testing.assert_array_equal(result == 4000, share == 100)  # the QA says exactly where the model wrote


def test_qa_shows_the_feather_of_only_cloudy(tmp_path):
    opt = write_optical(tmp_path / "opt.tif", height=50, width=50)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    cloud = np.zeros((1, 50, 50), np.uint8)
    cloud[:, 20:30, 20:30] = 1
    mask = write_mask(tmp_path / "mask.tif", cloud, like=opt)
    qa = tmp_path / "qa.tif"
    run(RunConfig(optical=opt, sar=sar, out=tmp_path / "out.tif", mask=mask, qa=qa, model="test-brighten", tile=32,
                  overlap=8, only_cloudy=True, cloud_feather=5))  # fmt: skip
    share, _ = _read(qa)
    w = cloud_weight(cloud[0].astype(bool), 5)
    expected = np.where(w > 0, np.clip(np.rint(100 * w), 1, 100), 0)
    np.testing.assert_array_equal(share, expected)
    assert set(np.unique(share)) >= {0, 100} and 0 < ((share > 0) & (share < 100)).sum()


def test_qa_cli_cog_errors_and_cancel(tmp_path, capsys):
    opt = write_optical(tmp_path / "opt.tif", height=40, width=40)
    sar = write_sar(tmp_path / "s1.tif", like=opt)
    out, qa = tmp_path / "out.tif", tmp_path / "qa.tif"
    args = ["run", "--optical", str(opt), "--sar", str(sar), "--out", str(out), "--model", "test-brighten",
            "--mode", "raw", "--tile", "32", "--overlap", "8"]  # fmt: skip
    assert main([*args, "--qa", str(qa), "--cog"]) == 0
    share, ds = _read(qa)
    assert (share == 100).all() and ds["layout"] == "COG"
    with pytest.raises(InputError, match="--qa must be another file than --out"):
        run(RunConfig(optical=opt, sar=sar, out=out, qa=out, model="identity"))
    with pytest.raises(Exception, match="overwrite an input"):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "o2.tif", qa=opt, model="identity"))
    progress = Progress()
    progress.callback = lambda fraction, message: progress.cancel() if fraction > 0 else None
    with pytest.raises(Cancelled):
        run(RunConfig(optical=opt, sar=sar, out=tmp_path / "c.tif", qa=tmp_path / "c_qa.tif", model="identity",
                      tile=32, overlap=8, batch=1), progress)  # fmt: skip
    assert not (tmp_path / "c.tif").exists() and not (tmp_path / "c_qa.tif").exists()
    assert not list(tmp_path.glob(".*tmp.tif"))
