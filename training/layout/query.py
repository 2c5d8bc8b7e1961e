"""Acquisition layouts and their R-tree query (Cresson et al. 2022, §4.1–4.2, Tables 4–6).

An *acquisition layout* names the items of one sample — e.g. ``t`` (the cloudy image, the reference), ``t'`` (the
cloud-free target), ``t-1``/``t+1`` — and for each: a cloud-cover range (%), an acquisition-time window relative
to the reference (hours; the reference has none), and whether it must be paired with a SAR patch acquired within
±``sar_max_gap_h`` hours. Every patch must also be at least ``min_valid`` valid.

The index is the paper's: one R-tree over the optical patches, with the dimensions

    (cell column, cell row, cloud cover %, acquisition time h, duration to the nearest valid SAR patch h,
     valid fraction)

(the two cell coordinates let one query stay on one location). The duration to the nearest valid SAR patch of the
same cell is computed beforehand by a nearest-neighbour search in time (a sorted array + bisection, the 1-D form of
the paper's KD-tree). A query is one R-tree box per item: first every reference patch; then, for each, every other
item in a box around that cell and the reference time.

When several patches satisfy an item we keep the one acquired nearest in time to the reference (ties: less cloud,
then scene name), and items of one sample use distinct optical scenes (so a cloud-free ``t`` is never its own
target). The paper does not say how it picks; this keeps samples deterministic and the target closest to ``t``.
"""

from __future__ import annotations

import bisect
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rtree import index as rtree_index

from engine.errors import InputError
from training.layout.archive import PatchStats, Scene

HOUR = 3600.0
INF = 1e12


@dataclass(frozen=True)
class LayoutItem:
    """One acquisition of a layout; ``window_h=None`` marks the reference item."""

    name: str
    cloud: tuple[float, float] = (0.0, 100.0)
    window_h: tuple[float, float] | None = None
    sar_max_gap_h: float | None = None


@dataclass(frozen=True)
class AcquisitionLayout:
    name: str
    items: tuple[LayoutItem, ...]
    min_valid: float = 1.0

    def __post_init__(self) -> None:
        refs = [i for i in self.items if i.window_h is None]
        if len(refs) != 1:
            raise InputError(f"layout '{self.name}' needs exactly one reference item (no time window), has {len(refs)}")
        if len({i.name for i in self.items}) != len(self.items):
            raise InputError(f"layout '{self.name}' has duplicate item names")

    @property
    def reference(self) -> LayoutItem:
        return next(i for i in self.items if i.window_h is None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> AcquisitionLayout:
        try:
            items = tuple(
                LayoutItem(
                    name=i["name"],
                    cloud=tuple(i.get("cloud", (0.0, 100.0))),
                    window_h=tuple(i["window_h"]) if i.get("window_h") is not None else None,
                    sar_max_gap_h=i.get("sar_max_gap_h"),
                )
                for i in d["items"]
            )
            return cls(name=d.get("name", "custom"), items=items, min_valid=float(d.get("min_valid", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed acquisition layout: {exc}") from None

    def with_sar_gap(self, hours: float) -> AcquisitionLayout:
        items = tuple(
            LayoutItem(i.name, i.cloud, i.window_h, hours if i.sar_max_gap_h is not None else None) for i in self.items
        )
        return AcquisitionLayout(self.name, items, self.min_valid)


DAY = 24.0
# Table 4: SSOP — (S1_t, S2_t) within 72 h, any cloud; cloud-free target within ±10 days.
SSOP = AcquisitionLayout(
    "ssop",
    (
        LayoutItem("t", (0.0, 100.0), None, 72.0),
        LayoutItem("target", (0.0, 0.0), (-10 * DAY, 10 * DAY), None),
    ),
)
# Table 5: MSOP — pairs at t-1 in [-18 d, -10 d], t, t+1 in [+10 d, +18 d]; cloud-free target within ±10 days.
MSOP = AcquisitionLayout(
    "msop",
    (
        LayoutItem("t-1", (0.0, 100.0), (-18 * DAY, -10 * DAY), 72.0),
        LayoutItem("t", (0.0, 100.0), None, 72.0),
        LayoutItem("target", (0.0, 0.0), (-10 * DAY, 10 * DAY), None),
        LayoutItem("t+1", (0.0, 100.0), (10 * DAY, 18 * DAY), 72.0),
    ),
)
# Table 6: MSOP_cld — cloud-free t-1 / t+1, fully cloudy t, cloud-free target within ±5 days (gap-filling vs nets).
MSOP_CLD = AcquisitionLayout(
    "msop-cld",
    (
        LayoutItem("t-1", (0.0, 0.0), (-18 * DAY, -10 * DAY), 72.0),
        LayoutItem("t", (100.0, 100.0), None, 72.0),
        LayoutItem("target", (0.0, 0.0), (-5 * DAY, 5 * DAY), None),
        LayoutItem("t+1", (0.0, 0.0), (10 * DAY, 18 * DAY), 72.0),
    ),
)
LAYOUTS = {lay.name: lay for lay in (SSOP, MSOP, MSOP_CLD)}


def load_layout(name_or_path: str) -> AcquisitionLayout:
    if name_or_path in LAYOUTS:
        return LAYOUTS[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" and path.is_file():
        try:
            return AcquisitionLayout.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
    raise InputError(f"unknown layout '{name_or_path}' (known: {', '.join(LAYOUTS)}, or a .json file)")


def _hours(when: datetime) -> float:
    return when.astimezone(UTC).timestamp() / HOUR


@dataclass
class _OpticalPatch:
    stats: PatchStats
    t_h: float
    sar: Scene | None
    sar_gap_h: float


@dataclass(frozen=True)
class SampleItem:
    optical: Scene
    cloud: float
    sar: Scene | None


@dataclass(frozen=True)
class Sample:
    col: int
    row: int
    items: dict[str, SampleItem] = field(hash=False)


class PatchIndex:
    """The R-tree over optical patches (6-D points, see module docstring), plus per-cell SAR time lists."""

    def __init__(self, patches: list[PatchStats], min_sar_valid: float = 1.0) -> None:
        sar_by_cell: dict[tuple[int, int], list[tuple[float, str, Scene]]] = defaultdict(list)
        for p in patches:
            if p.scene.kind == "sar" and p.valid >= min_sar_valid:
                sar_by_cell[(p.col, p.row)].append((_hours(p.scene.when), p.scene.name, p.scene))
        for lst in sar_by_cell.values():
            lst.sort(key=lambda x: (x[0], x[1]))
        self._sar_times = {cell: [x[0] for x in lst] for cell, lst in sar_by_cell.items()}
        self._sar = dict(sar_by_cell)
        prop = rtree_index.Property()
        prop.dimension = 6
        self.tree = rtree_index.Index(properties=prop)
        self.patches: list[_OpticalPatch] = []
        for p in patches:
            if p.scene.kind != "optical":
                continue
            t = _hours(p.scene.when)
            sar, gap = self.nearest_sar(p.col, p.row, t)
            op = _OpticalPatch(p, t, sar, gap)
            point = (p.col, p.row, p.cloud, t, gap, p.valid)
            self.tree.insert(len(self.patches), point + point)
            self.patches.append(op)

    def nearest_sar(self, col: int, row: int, t_h: float) -> tuple[Scene | None, float]:
        """The valid SAR patch of this cell acquired nearest to ``t_h`` (earlier wins a tie) and the gap in hours."""
        times = self._sar_times.get((col, row))
        if not times:
            return None, INF
        i = bisect.bisect_left(times, t_h)
        cands = [j for j in (i - 1, i) if 0 <= j < len(times)]
        j = min(cands, key=lambda k: (abs(times[k] - t_h), k))
        return self._sar[(col, row)][j][2], abs(times[j] - t_h)

    def _search(
        self, item: LayoutItem, min_valid: float, col: tuple[float, float], row: tuple[float, float],
        t: tuple[float, float],
    ) -> list[_OpticalPatch]:
        eps = 1e-9
        gap_hi = item.sar_max_gap_h + eps if item.sar_max_gap_h is not None else INF
        lo = (col[0], row[0], item.cloud[0] - eps, t[0] - eps, -1.0, min_valid - eps)
        hi = (col[1], row[1], item.cloud[1] + eps, t[1] + eps, gap_hi, 1.0 + eps)
        return [self.patches[i] for i in self.tree.intersection(lo + hi)]

    def query(self, layout: AcquisitionLayout) -> list[Sample]:
        """Every sample matching ``layout``, one per reference patch that can be completed, sorted by cell/time."""
        ref_item = layout.reference
        others = [i for i in layout.items if i is not ref_item]
        refs = self._search(ref_item, layout.min_valid, (-INF, INF), (-INF, INF), (-INF, INF))
        refs.sort(key=lambda p: (p.stats.row, p.stats.col, p.t_h, p.stats.scene.name))
        samples = []
        for ref in refs:
            c, r = ref.stats.col, ref.stats.row
            chosen = {ref_item.name: ref}
            used = {ref.stats.scene.path}
            for item in others:
                assert item.window_h is not None
                window = (ref.t_h + item.window_h[0], ref.t_h + item.window_h[1])
                cands = [p for p in self._search(item, layout.min_valid, (c, c), (r, r), window)
                         if p.stats.scene.path not in used]
                if not cands:
                    break
                best = min(cands, key=lambda p: (abs(p.t_h - ref.t_h), p.stats.cloud, p.stats.scene.name))
                chosen[item.name] = best
                used.add(best.stats.scene.path)
            else:
                items = {
                    it.name: SampleItem(
                        chosen[it.name].stats.scene,
                        chosen[it.name].stats.cloud,
                        chosen[it.name].sar if it.sar_max_gap_h is not None else None,
                    )
                    for it in layout.items
                }
                samples.append(Sample(c, r, items))
        return samples
