"""``engine run --scene-check``: the model beside a flat colour and a harmonic fill on *this* scene's own clear ground
under synthetic clouds — a reference-free measure of whether its cloud fill beats a guess here.

Why (issue 13): without a cloud-free reference an analyst cannot tell a reconstructed field from a plausible smear,
and the bundled model loses to a flat colour on some scenes and wins on others. The model's output on the real
cloud cannot be scored, but its output on clear ground covered with synthetic clouds can, against an exact target:
the clear pixels themselves (the synthetic-cloud protocol of ``training.evaluate``'s report split, on the user's
scene). The clouds come from :func:`engine.refine.synthetic_clouds.add_clouds` — thick, semi-transparent or haze layers
with shadows — the generator the synthetic split and scene adaptation use.

Windows: :data:`CANDIDATES` seeded cells of a grid of :data:`WINDOW`-px windows (their own seed, not adaptation's;
never overlapping, so each is seen one way only), of which the :data:`CHECKS` clearest with at least
:data:`MIN_CLEAR` usable pixels are kept (usable: no cloud — the mask's, else the detected one, grown like
adaptation's — and every input present). Each gets one seeded synthetic cloud and
is scored inside it on usable pixels only: PSNR of the model's output, of ``flat`` and of ``fill``
(:mod:`engine.refine.baselines`, whose "cloud" is the synthetic one plus the window's unusable pixels). The headline is
the mean over windows of the model's PSNR minus the better baseline's — the margin ``training.scoring`` reports.

A window counts when its synthetic cloud covers at least :data:`MIN_SCORED` usable pixels and leaves as many clear
ones to the baselines (the report split's 1–99 % cover rule: a window with nothing clear gives them nothing).

Held out from ``--adapt``: adaptation reads its windows with the checked windows pasted in as the check sees them
(synthetic cloud included) and never takes a pixel under a check cloud as a target, so an adapted model is scored
on ground it was not trained to reproduce. That ground is lost to adaptation, so with ``--adapt`` the check keeps
at most :data:`ADAPT_SHARE` of the grid's cells (on a 256-px scene, one 128-px window). Measured on the report
split's 256-px real scenes, holding out all four cells cost adaptation 1 dB inside the real cloud, one cell 0.66 dB
(docs/measurements.md, *Scene check*); on a large scene four windows are a few per cent of its clear ground.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from engine.outputs import metrics
from engine.progress import Progress
from engine.refine import baselines, colour_anchor, prior
from engine.refine.synthetic_clouds import add_clouds

WINDOW = 256  # px: a checked window (scenes under 512 px: half their side, so that several windows fit)
MIN_WINDOW = 80  # px: below this the scene is too small to check (the adaptation crop as well)
CANDIDATES = 16  # windows read to choose from
CHECKS = 4  # the clearest kept
MIN_CLEAR = 0.3  # share of a window's pixels that must be usable for it to be checked
MIN_SCORED = 500  # usable pixels a window's synthetic cloud must cover to count, and must leave to the baselines
ADAPT_SHARE = 0.25  # with --adapt, the grid cells the check may hold out of adaptation (the scene's clear ground)
SEED = 1  # not scene_adapt.SEED: the checked windows are not adaptation's pool


@dataclass
class HeldOut:
    """One checked window: where it is, its input with the synthetic cloud, the cloud, and what is scored."""

    window: Window
    clouded: np.ndarray  # (bands, h, w) normalised optical with the synthetic cloud
    packed: np.ndarray  # the model's other inputs on the window (SAR, ...), as the tiles pack them
    clear: np.ndarray  # (bands, h, w) the window as acquired: the exact target under the synthetic cloud
    cloud: np.ndarray  # (h, w) bool: the synthetic cloud (or its shadow)
    unusable: np.ndarray  # (h, w) bool: the window's real cloud (grown) or missing inputs

    def paste_into(self, win: Window, optical: np.ndarray, unusable: np.ndarray) -> None:
        """Put this window, as the check sees it, into another window's ``optical`` and mark its synthetic cloud
        ``unusable`` there (adaptation's read of an overlapping window)."""
        y0 = max(int(win.row_off), int(self.window.row_off))
        x0 = max(int(win.col_off), int(self.window.col_off))
        y1 = min(int(win.row_off + win.height), int(self.window.row_off + self.window.height))
        x1 = min(int(win.col_off + win.width), int(self.window.col_off + self.window.width))
        if y0 >= y1 or x0 >= x1:
            return
        dst = (slice(y0 - int(win.row_off), y1 - int(win.row_off)), slice(x0 - int(win.col_off), x1 - int(win.col_off)))
        src = (slice(y0 - int(self.window.row_off), y1 - int(self.window.row_off)),
               slice(x0 - int(self.window.col_off), x1 - int(self.window.col_off)))  # fmt: skip
        optical[(slice(None), *dst)] = self.clouded[(slice(None), *src)]
        unusable[dst] |= self.cloud[src]


@dataclass
class SceneCheck:
    """The scores inside the synthetic clouds (mean PSNR over the checked windows, dB) and the margin."""

    windows: int
    model_db: float
    flat_db: float
    fill_db: float
    margin_db: float  # mean over windows of the model's PSNR minus the better baseline's
    wins: int  # windows where the model beats both baselines
    adapted: bool = False  # the model was adapted to the scene first (the checked clouds held out)
    anchored: bool = False  # its output was colour-anchored in each window, as --colour-anchor does in the run
    prior_db: float | None = None  # the engine's estimate alone (engine.refine.prior), for a model that takes it

    @property
    def beats_baselines(self) -> bool:
        """A positive mean margin and the better method on most windows."""
        return self.margin_db > 0 and self.wins * 2 > self.windows

    def sentence(self) -> str:
        """One line for the CLI and the plugin."""
        verdict = ("on this ground it beats both" if self.beats_baselines
                   else "a flat colour or a smooth fill does as well or better on this ground: read its output "
                   "inside the cloud as a guess")  # fmt: skip
        which = ("adapted " if self.adapted else "") + ("colour-anchored " if self.anchored else "")
        estimate = "" if self.prior_db is None else f", the non-learned estimate {self.prior_db:.1f}"
        return (f"scene check: under synthetic clouds on {self.windows} clear window(s) of this scene the "
                f"{which}model scores {self.model_db:.1f} dB, flat {self.flat_db:.1f}, "
                f"fill {self.fill_db:.1f}{estimate} (margin {self.margin_db:+.1f} dB over the better of flat and fill, "
                f"best on {self.wins} of {self.windows}); {verdict}")

    def as_tag(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def window_size(shape: tuple[int, int]) -> int:
    """The checked windows' size, a multiple of 8: :data:`WINDOW`, or half a smaller scene's side but at least
    :data:`MIN_WINDOW` (0: the scene is smaller than that)."""
    side = min(shape)
    if side < MIN_WINDOW:
        return 0
    return max(MIN_WINDOW, min(WINDOW, side // 2) // 8 * 8)


def plan_check(read: Any, shape: tuple[int, int], progress: Progress, share: float = 1.0) -> list[HeldOut] | str:
    """The checked windows of a scene of ``shape`` (H, W), each with its seeded synthetic cloud; ``read(window)`` is
    :func:`engine.refine.scene_adapt.read_sample`'s reader; at most ``share`` of the grid's cells are kept (at least
    one). A string says why the scene cannot be checked."""
    size = window_size(shape)
    if not size:
        return f"--scene-check skipped: the scene ({shape[1]}×{shape[0]} px) is smaller than {MIN_WINDOW} px"
    rng = np.random.default_rng(SEED)
    cells = [(r * size, c * size) for r in range(shape[0] // size) for c in range(shape[1] // size)]
    corners = sorted(cells[int(k)] for k in rng.permutation(len(cells))[:CANDIDATES])
    read_windows = []
    for i, (y, x) in enumerate(corners):
        progress.check_cancelled()
        progress.update(0.0, f"scene check: reading window {i + 1}/{len(corners)}")
        window = Window(x, y, size, size)
        sample = read(window)
        if 1.0 - float(sample["mask"].mean()) >= MIN_CLEAR:
            read_windows.append((window, sample))
    read_windows.sort(key=lambda ws: float(ws[1]["mask"].mean()))
    held: list[HeldOut] = []
    keep = min(CHECKS, max(1, int(share * len(cells))))
    for window, sample in read_windows:
        if len(held) == keep:
            break
        unusable = sample["mask"][0] > 0.5
        clouded = add_clouds({"optical": sample["optical"], "mask": np.zeros_like(sample["mask"])}, rng)
        cloud = clouded["mask"][0] > 0.5
        if min(int((cloud & ~unusable).sum()), int((~cloud & ~unusable).sum())) >= MIN_SCORED:
            held.append(HeldOut(window, clouded["optical"], sample["sar"], sample["optical"], cloud, unusable))
    if not held:
        return (f"--scene-check skipped: no {size}-px window of the scene is at least {100 * MIN_CLEAR:.0f} % clear "
                "with every input present")  # fmt: skip
    return held


@torch.no_grad()
def score_check(module: nn.Module, held: list[HeldOut], device: torch.device, adapted: bool = False,
                anchored: bool = False, with_prior: prior.PriorInput | None = None) -> SceneCheck:  # fmt: skip
    """Score ``module`` (called as ``module(optical, packed)``) and the baselines inside each window's synthetic
    cloud, on its usable pixels. The module runs in fp32 here, before the runner exists; the tiles may run in bf16,
    which moved the report split's inside-cloud PSNR by under 0.01 dB. ``anchored``: the output is scored as
    ``--colour-anchor`` makes it, its drift fitted in each window against that window's clear pixels (the run fits
    one drift over the whole scene). ``with_prior``: the model takes the engine's estimate, packed after the other
    inputs from each window's clouded image (clear = usable and outside the check's cloud); the estimate is scored
    too (``prior_db``)."""
    was_training = module.training
    module.eval()
    rows, priors = [], []
    for item in held:
        x = torch.from_numpy(np.ascontiguousarray(item.clouded[None])).to(device)
        scored = item.cloud & ~item.unusable
        hidden = item.cloud | item.unusable  # what the baselines may not read
        packed_np, estimate = item.packed, None
        if with_prior is not None:
            sar = item.packed[: with_prior.sar_channels]
            channels = prior.channels(item.clouded, ~hidden, with_prior.colours, sar)
            packed_np, estimate = np.concatenate([packed_np, channels]), np.clip(channels[:-1], 0.0, 1.0)
        packed = torch.from_numpy(np.ascontiguousarray(packed_np[None])).to(device)
        pred = module(x, packed).float().clamp(0, 1)[0].cpu().numpy()
        if anchored:
            clear = np.where(item.unusable[None], np.nan, item.clouded)  # the anchor's clear pixels: usable ones
            pred, _ = colour_anchor.anchor(pred, clear, item.cloud, used=~item.unusable)
        flat = baselines.flat(item.clouded, hidden)
        fill = baselines.fill(item.clouded, hidden)
        rows.append([metrics.psnr(img, item.clear, mask=scored) for img in (pred, flat, fill)])
        priors.append(None if estimate is None else metrics.psnr(estimate, item.clear, mask=scored))
    module.train(was_training)
    scores = np.asarray(rows)
    margins = scores[:, 0] - scores[:, 1:].max(axis=1)
    return SceneCheck(windows=len(rows), model_db=float(scores[:, 0].mean()), flat_db=float(scores[:, 1].mean()),
                      fill_db=float(scores[:, 2].mean()), margin_db=float(margins.mean()),
                      wins=int((margins > 0).sum()), adapted=adapted, anchored=anchored,
                      prior_db=None if with_prior is None else float(np.mean(priors)))  # fmt: skip
