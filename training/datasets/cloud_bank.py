"""Real cloud layers: clouds cut from real cloudy scenes and pasted onto cloud-free ones (exact targets, real shapes).

Why: a split made with the generator that training and scene adaptation also use (:mod:`engine.refine.synthetic_clouds`)
flatters the model (issue 26). A real cloud brings what no generator draws: its own radiance, texture, outline and
thin fringes. Pasted on a clear image with its own SAR, it gives a cloudy input whose truth is known exactly.

A **layer** is cut from a donor — a real cloudy image, its cloud mask and, where there is one, a clear image of the
same place (another date):

* the cloud: the mask, its edge softened (Gaussian σ = :data:`EDGE_SIGMA` px) into an opacity ``α``; its radiance
  is the donor's own cloudy pixels (texture included). Thin cloud in the donor is pasted as it is, donor ground
  showing through: harsher than the truth, never easier;
* its shadow, where the donor has a clear image: pixels outside the cloud and within :data:`SHADOW_REACH` px of it,
  darker than the clear image by more than :data:`SHADOW_DROP` on average (a darkening ratio per band, softened),
  applied to the new ground as a factor — a shadow darkens the ground it falls on, it brings no texture.

Pasting: ``cloudy = (1 − α)·(ground · darkening) + α·radiance`` over a random window (and flip / quarter turn) of
the layer with 5–95 % cloud; the new mask (what "inside the cloud" means for the scores) is ``α > 0.1`` or a
shadow that darkens some band by more than 5 % — as the generator's opacity and shadow thresholds.

The bank is split **by scene**, as the model's data are (``resources/weights/aligncr-lite.splits.json``): clouds of
the report split are never used by training, selection or adaptation. :data:`DONORS` lists every donor and its split:
the report keeps eight scenes (the report split's own real triplets, Mamba-SCR's cloudy image, SSL4EO-S12's cloudy
date) so that its clouds are varied; training gets the fifteen patches of SEN12MS-CR scene 136 (one scene, no SAR:
useless as anything but cloud donors) and its own triplets' clouds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from torch.utils.data import Dataset

from engine.align.cloudmask import detect_clouds
from engine.errors import InputError
from engine.refine.samples import Sample
from training.datasets import packed

EDGE_SIGMA = 1.5  # px: the soft edge of a pasted cloud
SHADOW_REACH = 40  # px from the cloud a shadow may lie (10 m pixels: 400 m)
SHADOW_DROP = 0.3  # a shadow pixel is at least 30 % darker than the clear image (mean over the bands)
MASK_THRESHOLD = 0.1  # opacity above which a pasted pixel counts as cloud
SHADOW_MASK = 0.05  # a shadow pixel counts as inside the cloud where it darkens some band by more than 5 %
COVER = (0.05, 0.95)  # a pasted window's cloud share
S2_BANDS = (1, 2, 3, 7)  # B2, B3, B4, B8 of the 13-band SEN12MS-CR files (0-based)
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class CloudLayer:
    """One real cloud: opacity (H, W), radiance (bands, H, W) and the darkening its shadow applies (bands, H, W)."""

    id: str
    scene: str
    source: str  # the data set it was cut from ("sen12mscr", "ssl4eo"): pasted only onto grounds of other sources
    alpha: np.ndarray
    radiance: np.ndarray
    darkening: np.ndarray
    shadow: np.ndarray  # (H, W) shadow strength in [0, 1]


@dataclass(frozen=True)
class Donor:
    """A real cloudy image to cut clouds from: its source kind, file id, scene and split."""

    kind: str  # "sen12mscr" (numbered triplets), "glfcr", "s2pairs" (no SAR), "mambascr" (no target), "ssl4eo"
    id: str
    scene: str
    split: str  # "train" | "select" | "report"

    @property
    def source(self) -> str:
        return "ssl4eo" if self.kind == "ssl4eo" else "sen12mscr"


def _triplets(ids: str, split: str) -> list[Donor]:
    return [Donor("sen12mscr", i, f"sen12mscr_triplet_{i}", split) for i in ids.split()]


_S2PAIRS = [f"ROIs1970_fall_s2_cloudy_136_p{p}" for p in
            (100, 139, 140, 280, 281, 282, 308, 309, 310, 311, 312, 315, 316, 500, 840)]  # fmt: skip
DONORS: tuple[Donor, ...] = (
    *_triplets("5349 4294 3968 2266 6780 1302 316 2729", "train"),
    Donor("glfcr", "ROIs1970_fall_139_p839", "ROIs1970_fall_139", "train"),
    *_triplets("4433 7264", "select"),
    *_triplets("6553 4438 5278 746 4065 6317", "report"),
    *(Donor("s2pairs", i, "ROIs1970_fall_136", "train") for i in _S2PAIRS),  # one scene, no SAR: all train
    Donor("mambascr", "ROIs1868_summer_s2_cloudy_19_p30", "ROIs1868_summer_19", "report"),
    Donor("ssl4eo", "0000200_20200823", "ssl4eo_0000200", "report"),
)


def layer_from(donor_id: str, scene: str, cloudy: np.ndarray, cloud: np.ndarray,
               clear: np.ndarray | None = None, source: str = "") -> CloudLayer:  # fmt: skip
    """Cut the layer of one donor (arrays in reflectance [0, 1]; ``cloud`` (H, W) bool)."""
    cloud = np.asarray(cloud, dtype=bool)
    alpha = np.clip(ndimage.gaussian_filter(cloud.astype(np.float32), EDGE_SIGMA), 0.0, 1.0)
    alpha[cloud] = np.maximum(alpha[cloud], 0.5)
    shadow = np.zeros(cloud.shape, np.float32)
    darkening = np.ones_like(cloudy, dtype=np.float32)
    if clear is not None and cloud.any():
        near = ndimage.distance_transform_edt(~cloud) <= SHADOW_REACH
        dark = near & ~cloud & (cloudy.mean(0) < (1.0 - SHADOW_DROP) * clear.mean(0))
        dark = ndimage.binary_opening(dark, iterations=1)
        shadow = np.clip(ndimage.gaussian_filter(dark.astype(np.float32), EDGE_SIGMA), 0.0, 1.0)
        ratio = np.clip(cloudy / np.maximum(clear, 1e-3), 0.15, 1.0).astype(np.float32)
        darkening = 1.0 - shadow[None] * (1.0 - ratio)
    return CloudLayer(donor_id, scene, source, alpha.astype(np.float32), np.clip(cloudy, 0, 1).astype(np.float32),
                      darkening.astype(np.float32), shadow)  # fmt: skip


def _read(path: Path, bands: tuple[int, ...] | None = S2_BANDS) -> np.ndarray:
    import rasterio  # here: training from a pack (a machine without GDAL) never reads a donor's file

    if not path.is_file():
        raise InputError(f"cloud donor not found: {path}")
    with rasterio.open(path) as ds:
        return ds.read(None if bands is None else [b + 1 for b in bands]).astype(np.float32) / 10000.0


def _donor_arrays(donor: Donor, data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(cloudy, cloud mask, clear image or None) of a donor, reflectance [0, 1]."""
    if donor.kind in ("sen12mscr", "glfcr", "ssl4eo"):
        from training.datasets import build_reader

        spec = {"sen12mscr": {"kind": "sen12mscr", "root": data / "sen12mscr_triplets", "include": [donor.id]},
                "glfcr": {"kind": "sen12mscr", "root": data / "sen12mscr_glfcr", "include": [donor.id]},
                "ssl4eo": {"kind": "ssl4eo", "root": data / "ssl4eo_s12_sample", "mode": "triplet"}}[donor.kind]
        sample = build_reader(spec, cache=False).read(0)
        return sample["optical"], sample["mask"][0] > 0.5, sample["target"]
    if donor.kind == "s2pairs":
        root = data / "sen12mscr_s2pairs_nosar"
        cloudy = _read(root / "s2_cloudy" / f"{donor.id}.tif")
        clear = _read(root / "s2_cloudfree" / f"{donor.id.replace('_cloudy', '')}.tif")
        cloud = detect_clouds(cloudy) | (cloudy[0] - clear[0] > 0.08)  # the folder's own estimate, blue +800 DN
        return cloudy, ndimage.binary_opening(cloud, iterations=1), clear
    if donor.kind == "mambascr":
        cloudy = _read(data / "sen12mscr_mambascr" / "s2_cloudy" / f"{donor.id}.tif")
        return cloudy, detect_clouds(cloudy), None
    raise InputError(f"unknown cloud donor kind '{donor.kind}'")


def bank(split: str, data: Path = DATA) -> tuple[CloudLayer, ...]:
    """Every layer of a split's donors with 5–95 % cloud: from the open training pack
    (:mod:`training.datasets.packed`), else cut from the donors' files (cached per process)."""
    if split not in ("train", "select", "report"):
        raise InputError(f"cloud bank split must be train, select or report, got '{split}'")
    if packed.active():
        return tuple(CloudLayer(**layer) for layer in packed.bank_layers(split))
    return _bank_from_files(split, Path(data))


@cache
def _bank_from_files(split: str, data: Path) -> tuple[CloudLayer, ...]:
    layers = []
    for donor in DONORS:
        if donor.split != split:
            continue
        cloudy, cloud, clear = _donor_arrays(donor, Path(data))
        if COVER[0] <= float(cloud.mean()) <= COVER[1]:
            layers.append(layer_from(donor.id, donor.scene, cloudy, cloud, clear, donor.source))
    return tuple(layers)


def _window(layer: CloudLayer, hw: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random window of ``hw`` of the layer (reflect-padded when the layer is smaller), flipped / turned, whose
    cloud share is within :data:`COVER` when one of 20 tries is."""
    arrays = {"alpha": layer.alpha[None], "radiance": layer.radiance, "darkening": layer.darkening,
              "shadow": layer.shadow[None]}  # fmt: skip
    h, w = layer.alpha.shape
    pad = ((0, 0), (0, max(0, hw[0] - h)), (0, max(0, hw[1] - w)))
    arrays = {k: np.pad(v, pad, mode="reflect") for k, v in arrays.items()}
    h, w = arrays["alpha"].shape[1:]
    best = None
    for _ in range(20):
        y, x = int(rng.integers(0, h - hw[0] + 1)), int(rng.integers(0, w - hw[1] + 1))
        cover = float((arrays["alpha"][0, y : y + hw[0], x : x + hw[1]] > MASK_THRESHOLD).mean())
        best = (y, x) if best is None or COVER[0] <= cover <= COVER[1] else best
        if COVER[0] <= cover <= COVER[1]:
            break
    y, x = best
    k, flip = int(rng.integers(0, 4)) if hw[0] == hw[1] else 0, bool(rng.integers(0, 2))
    out = {}
    for key, v in arrays.items():
        v = v[:, y : y + hw[0], x : x + hw[1]]
        v = np.rot90(v, k, axes=(1, 2)) if k else v
        out[key] = np.ascontiguousarray(v[:, :, ::-1] if flip else v)
    return out


def paste(sample: Sample, layer: CloudLayer, rng: np.random.Generator) -> Sample:
    """The sample with the real cloud ``layer`` (and its shadow) laid over its ``optical`` image (module doc)."""
    ground = np.asarray(sample["optical"], dtype=np.float32)
    win = _window(layer, ground.shape[-2:], rng)
    a = win["alpha"]
    cloudy = (1.0 - a) * ground * win["darkening"] + a * win["radiance"]
    out = dict(sample)
    out["optical"] = np.clip(cloudy, 0.0, 1.0).astype(np.float32)
    shaded = (1.0 - win["darkening"]).max(axis=0) > SHADOW_MASK
    new = ((a[0] > MASK_THRESHOLD) | shaded)[None].astype(np.float32)
    out["mask"] = np.maximum(sample["mask"], new)
    return out


def source_of(reader: object) -> str:
    """The data set a training reader serves (its cloud-free images are grounds): ``sen12mscr``, ``ssl4eo``, …"""
    packed_source = getattr(reader, "source", None)  # a training pack's reader says it
    if isinstance(packed_source, str):
        return packed_source
    inner = getattr(reader, "reader", reader)  # AsClear wraps the reader of the cloud-free images
    return {"SEN12MSCR": "sen12mscr", "SEN12MSCRPairs": "sen12mscr", "SSL4EO": "ssl4eo"}.get(
        type(inner).__name__, type(inner).__name__.lower())


def pasted_view(readers: list, seed: int, draws: int, split: str = "report") -> Dataset:
    """The report's real-cloud split: every cloud-free image of ``readers`` ``draws`` times, each draw with one layer
    of the bank's ``split`` cut from another source (seeded per item: the same split every time)."""
    from training.datasets import AugmentConfig, TrainView

    layers = bank(split)

    class RealCloudView(TrainView):
        def __getitem__(self, i: int) -> Sample:
            from training.datasets.base import to_tensors

            rng = np.random.default_rng([self.seed, i])
            r, _ = self.index[i % len(self.index)]
            ground = self.read(i)
            allowed = [layer for layer in layers if layer.source != source_of(self.readers[r])]
            if not allowed:
                raise InputError(f"no report cloud layer from another source than {source_of(self.readers[r])}")
            layer = allowed[int(rng.integers(0, len(allowed)))]
            sample = paste(ground, layer, rng)
            sample["id"] = f"{ground.get('id', i)}+{layer.id}"
            return to_tensors(sample)

    n = sum(len(r) for r in readers)
    aug = AugmentConfig(crop=0, random_crop=False, flips=False, rot90=False)
    return RealCloudView(readers, aug, seed=seed, length=n * draws)
