"""Inputs declared by the model as roles (engine.models.roles) and the one aligned-input path (engine.align.inputs):
what each registered model declares, that the pipeline opens exactly the declared roles (an undeclared one is never
opened), and that a model declaring a new combination of roles (DEM without SAR) runs with no branch of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers_rasters import UTM32N, optical_transform, write_optical, write_raster
from torch import nn

from engine.config import RunConfig
from engine.errors import InputError
from engine.models import MODEL_REGISTRY, get_spec, register_model
from engine.models.roles import ROLES, ModelInputs, ignored_inputs, inputs_of, model_inputs, require_roles
from engine.stream.pipeline import run

N = 32


@pytest.mark.parametrize(
    ("name", "roles", "needs_dates", "fill_only_cloudy"),
    [
        ("aligncr", ("sar",), False, False),
        ("identity", ("sar",), False, False),
        ("ssop-unet", ("sar",), False, False),
        ("msop-unet", ("sar", "optical_prev", "sar_prev", "optical_next", "sar_next"), False, False),
        ("gapfill", ("optical_prev", "optical_next"), True, True),
    ],
)
def test_registered_models_declare_their_roles(name, roles, needs_dates, fill_only_cloudy) -> None:
    spec = get_spec(name)
    declared = inputs_of(spec.cls, name, spec.config)
    assert declared == ModelInputs(name, roles, needs_dates, fill_only_cloudy)
    assert all(r in ROLES for r in declared.roles)
    assert model_inputs(name, None, "identity") == declared  # what the precheck reads before loading


def test_dem_role_follows_the_config_and_weights_card() -> None:
    spec = get_spec("msop-unet")
    declared = inputs_of(spec.cls, "msop-unet", {"dem": True})
    assert declared.roles[-1] == "dem" and declared.uses_dem and declared.extra_dates == ("prev", "next")
    assert declared.temporal_keys == ("optical_prev", "sar_prev", "optical_next", "sar_next")


def test_missing_and_ignored_roles_are_one_line_each(tmp_path: Path) -> None:
    gapfill = inputs_of(get_spec("gapfill").cls, "gapfill", get_spec("gapfill").config)
    config = RunConfig(optical=tmp_path / "o.tif", sar=tmp_path / "s.tif", out=tmp_path / "x.tif",
                       optical_prev=tmp_path / "p.tif", sar_prev=tmp_path / "sp.tif", dem=tmp_path / "d.tif")
    with pytest.raises(InputError, match="needs --optical-prev and --optical-next .* missing --optical-next"):
        require_roles(gapfill, config)
    assert ignored_inputs(gapfill, config) == [
        "model 'gapfill' takes no SAR: --sar ignored",
        "model 'gapfill' does not use --sar-prev: ignored",
        "model 'gapfill' takes no DEM: --dem ignored",
    ]


@dataclass(frozen=True)
class DemOnlyConfig:
    in_bands: int = 4
    dem: bool = True


class DemOnly(nn.Module):
    """A model declaring a DEM and no SAR — a combination no engine branch was written for."""

    uses_sar = False

    def __init__(self, cfg: DemOnlyConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, optical: torch.Tensor, sar: torch.Tensor | None, *, dem: torch.Tensor) -> torch.Tensor:
        assert sar is None
        return optical * 0.5 + dem  # dem is elevation × 1e-4


@pytest.fixture()
def dem_only():
    register_model("test-dem-only", DemOnlyConfig(), "test: DEM, no SAR", needs_weights=False)(DemOnly)
    yield "test-dem-only"
    MODEL_REGISTRY.pop("test-dem-only", None)


def test_a_new_role_combination_runs_through_the_one_path(tmp_path: Path, dem_only: str) -> None:
    opt = write_optical(tmp_path / "opt.tif", height=N, width=N, nodata=None, seed=3)
    elevation = np.full((1, N, N), 1000.0, dtype=np.float32)  # × 1e-4 → 0.1 on every pixel
    dem = write_raster(tmp_path / "dem.tif", elevation, crs=UTM32N, transform=optical_transform(3.0))
    out = tmp_path / "out.tif"
    config = RunConfig(optical=opt, out=out, model=dem_only, dem=dem, mode="raw", device="cpu", tile=N, overlap=0,
                       sar_prev=tmp_path / "not-there.tif")  # undeclared: never opened, only a warning
    result = run(config)
    assert not result.sar_used and result.sar_units == "none"
    assert result.warnings == [f"model '{dem_only}' is not temporal: --sar-prev ignored"]
    with rasterio.open(opt) as src, rasterio.open(out) as dst:
        cloudy = src.read().astype(np.float64)
        got = dst.read().astype(np.float64)
    expected = np.clip(np.rint((np.clip(cloudy / 10000 * 0.5 + 0.1, 0, 1)) * 10000), 0, 65535)
    np.testing.assert_allclose(got, expected, atol=1)


def test_models_json_reports_the_roles(capsys) -> None:
    import json

    from engine.cli import main

    assert main(["models", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)["models"]}
    for name in ("aligncr-lite", "msop-unet", "gapfill"):
        spec = get_spec(name)
        declared = inputs_of(spec.cls, name, spec.config)
        assert listed[name]["roles"] == list(declared.roles)
        assert listed[name]["uses_sar"] == declared.uses_sar and listed[name]["temporal_inputs"] == list(
            declared.extra_dates
        )
