"""``ssop-unet`` and ``msop-unet``: the U-Nets of Cresson et al. (2022), §3.1.2 and §3.2.

Both share one encoder/decoder design (paper Fig. 4): the first and last convolutions are 5×5 stride 1, every
other encoder convolution is 3×3 stride 2, the decoder mirrors it with 3×3 stride-2 transposed convolutions, skip
connections *concatenate* encoder features onto decoder outputs, every convolution but the last is followed by a
ReLU, and there is no batch normalisation.

The paper's figure gives no widths; the official code (CNES/decloud, ``meraner_unet.py`` for SSOP and
``crga_os2_unet.py`` for MSOP; read, not copied) fixes them, and they reproduce Table 2 *exactly*:

* encoder: conv1 k5s1 → 64 (full res), conv2 k3s2 → 128 (1/2), conv3 → 256 (1/4), conv4 → 512 (1/8),
  conv5 → 512 (1/16), conv6 → 512 (1/32);
* optional DEM branch: one k3s1 convolution → 64 on the DEM at 1/2 resolution (the paper's 20 m DEM next to
  10 m images), concatenated onto conv2's output before conv3 and in that skip;
* decoder: deconv1 → 512 (1/16), deconv2 → 512 (1/8), deconv3 → 256 (1/4), deconv4 → 128 (1/2),
  deconv5 → 64 (1/1), each followed by concatenation with the encoder features of its scale; final k5s1 → bands.
* SSOP: one encoder over concat(SAR, cloudy optical) (6 channels); the 1/32 features are not a skip.
* MSOP: the same encoder, *shared* (one set of weights) over the three (SAR, optical) pairs at t−1, t, t+1; at
  every scale the three encoders' features are concatenated (the 1/32 ones included) before the decoder.

Parameter counts (see ``tests/test_unets.py``): SSOP 16,467,204 without DEM and 16,652,164 with it; MSOP
29,013,764 without and 29,272,452 with — Table 2's "16.652M" and "29.272M" are the +DEM variants.

Choices where the paper is silent, written down:

* No residual connection: §3.2 says MSOP "does not employ residual connections", and the official SSOP U-Net has
  its residual add commented out. ``residual=True`` adds the cloudy input to the output for users who want
  DSen2-CR-style identity on clear pixels; it adds no parameters.
* SAR coarser than the optical grid (Align-CR's 10 m vs 3 m) is upsampled nearest to the optical size, as the
  registry contract says; the DEM, when used, is resampled bilinearly to half the (padded) optical size.
* Any H, W: inputs are reflect-padded (replicate for tiny sizes) to a multiple of 32 and the output is cropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError
from engine.models.registry import register_model

TEMPORAL_KEYS = ("optical_prev", "sar_prev", "optical_next", "sar_next")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) on the bottom/right to a multiple of ``multiple``: reflect, or replicate when too small."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def match_sar(sar: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring SAR onto the optical grid size with nearest interpolation (registry contract); no-op if equal."""
    if tuple(sar.shape[-2:]) == tuple(size):
        return sar
    return F.interpolate(sar, size=size, mode="nearest")


@dataclass(frozen=True)
class UNetConfig:
    """Widths and inputs of the SSOP/MSOP U-Nets (defaults = the official code, Table 2 counts)."""

    in_bands: int = 4
    sar_bands: int = 2
    out_bands: int = 4
    widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    dem: bool = False
    dem_bands: int = 1
    dem_width: int = 64
    residual: bool = False


class _Encoder(nn.Module):
    """k5s1 then k3s2 convolutions, ReLU each; returns the feature list at scales 1, 1/2, …, 1/2^(L-1)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        w = cfg.widths
        self.dem = cfg.dem
        self.conv1 = nn.Conv2d(cfg.in_bands + cfg.sar_bands, w[0], 5, 1, 2)
        self.downs = nn.ModuleList()
        for i in range(1, len(w)):
            cin = w[i - 1] + (cfg.dem_width if (cfg.dem and i == 2) else 0)
            self.downs.append(nn.Conv2d(cin, w[i], 3, 2, 1))
        self.conv_dem = nn.Conv2d(cfg.dem_bands, cfg.dem_width, 3, 1, 1) if cfg.dem else None

    def forward(self, x: torch.Tensor, dem: torch.Tensor | None) -> list[torch.Tensor]:
        feats = [F.relu(self.conv1(x))]
        for i, down in enumerate(self.downs, start=1):
            y = F.relu(down(feats[-1]))
            if i == 1 and self.conv_dem is not None:
                assert dem is not None
                d = F.interpolate(dem, size=y.shape[-2:], mode="bilinear", align_corners=False)
                y = torch.cat([y, F.relu(self.conv_dem(d))], dim=1)
            feats.append(y)
        return feats


class _Decoder(nn.Module):
    """Transposed k3s2 convolutions + ReLU, concatenating ``n_streams`` encoders' skips at each scale."""

    def __init__(self, cfg: UNetConfig, n_streams: int, deepest_is_skip: bool) -> None:
        super().__init__()
        w = list(cfg.widths)
        skip = [wi * n_streams for wi in w]
        if cfg.dem:
            skip[1] += cfg.dem_width * n_streams
        self.deepest_is_skip = deepest_is_skip
        cin = skip[-1] if deepest_is_skip else w[-1]
        self.ups = nn.ModuleList()
        for level in range(len(w) - 2, -1, -1):
            self.ups.append(nn.ConvTranspose2d(cin, w[level], 3, 2, 1, output_padding=1))
            cin = skip[level] + w[level]
        self.final = nn.Conv2d(cin, cfg.out_bands, 5, 1, 2)

    def forward(self, streams: list[list[torch.Tensor]]) -> torch.Tensor:
        n_levels = len(streams[0])
        if self.deepest_is_skip:
            x = torch.cat([s[-1] for s in streams], dim=1)
        else:
            x = streams[0][-1]
        for up, level in zip(self.ups, range(n_levels - 2, -1, -1)):
            x = F.relu(up(x))
            x = torch.cat([s[level] for s in streams] + [x], dim=1)
        return self.final(x)


class _UNetBase(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.multiple = 2 ** (len(cfg.widths) - 1)

    def _prepare(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        sar = match_sar(sar, optical.shape[-2:])
        return pad_to_multiple(torch.cat([sar, optical], dim=1), self.multiple)

    def _dem(self, dem: torch.Tensor | None) -> torch.Tensor | None:
        if self.cfg.dem and dem is None:
            raise InputError(f"model '{getattr(self, 'model_name', 'unet')}' was built with dem=True and needs a DEM")
        return dem if self.cfg.dem else None

    def _finish(self, y: torch.Tensor, optical: torch.Tensor) -> torch.Tensor:
        y = y[..., : optical.shape[-2], : optical.shape[-1]]
        return y + optical if self.cfg.residual else y


@register_model(
    "ssop-unet",
    UNetConfig(),
    "SSOP U-Net (Cresson 2022): one SAR + cloudy optical pair → optical; 16.5 M params (16.7 M with dem=True).",
)
class SSOPUNet(_UNetBase):
    """Single SAR/optical pair U-Net. ``forward(optical, sar, *, dem=None)``; ``dem`` (N, 1, h, w) if cfg.dem."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__(cfg)
        self.encoder = _Encoder(cfg)
        self.decoder = _Decoder(cfg, n_streams=1, deepest_is_skip=False)

    def forward(self, optical: torch.Tensor, sar: torch.Tensor, *, dem: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.encoder(self._prepare(optical, sar), self._dem(dem))
        return self._finish(self.decoder([feats]), optical)


@register_model(
    "msop-unet",
    UNetConfig(),
    "MSOP U-Net (Cresson 2022): SAR+optical pairs at t-1, t, t+1 → optical at t; 29.0 M params (29.3 M with DEM). "
    "Needs the extra dates.",
)
class MSOPUNet(_UNetBase):
    """Multi-temporal U-Net: a shared encoder over (t−1, t, t+1) pairs, features concatenated, one decoder.

    Contract: ``forward(optical, sar, *, optical_prev, sar_prev, optical_next, sar_next, dem=None)``; every optical
    is (N, B, H, W) in [0, 1] on the same grid, every SAR (N, 2, h, w) in [0, 1] (upsampled nearest if coarser).
    ``temporal_inputs`` tells the engine which extra dates to supply; it raises ``InputError`` if one is missing.
    """

    temporal_inputs = ("prev", "next")

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__(cfg)
        self.encoder = _Encoder(cfg)
        self.decoder = _Decoder(cfg, n_streams=3, deepest_is_skip=True)

    def forward(
        self,
        optical: torch.Tensor,
        sar: torch.Tensor,
        *,
        optical_prev: torch.Tensor | None = None,
        sar_prev: torch.Tensor | None = None,
        optical_next: torch.Tensor | None = None,
        sar_next: torch.Tensor | None = None,
        dem: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {"optical_prev": optical_prev, "sar_prev": sar_prev, "optical_next": optical_next, "sar_next": sar_next}
        check_temporal_inputs(extra, optical)
        d = self._dem(dem)
        streams = [
            self.encoder(self._prepare(o, s), d)
            for o, s in ((optical_prev, sar_prev), (optical, sar), (optical_next, sar_next))
        ]
        return self._finish(self.decoder(streams), optical)


def check_temporal_inputs(extra: dict[str, torch.Tensor | None], optical: torch.Tensor) -> None:
    """Raise ``InputError`` naming the missing or mis-shaped extra-date inputs of a temporal model."""
    missing = [k for k, v in extra.items() if v is None]
    if missing:
        raise InputError(f"this model needs the images before and after the cloudy date; missing: {', '.join(missing)}")
    for k, v in extra.items():
        if k.startswith("optical") and v is not None and tuple(v.shape) != tuple(optical.shape):
            raise InputError(f"{k} has shape {tuple(v.shape)}, expected the cloudy optical's {tuple(optical.shape)}")
