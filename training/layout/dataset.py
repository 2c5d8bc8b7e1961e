"""``LayoutDataset``: one split CSV of ``python -m training.build_dataset`` read as tensors.

Kept for its earlier signature ``LayoutDataset(split_csv, archive, bands=(1, 2, 3, 4))`` (1-based bands); the reader
itself — keys, scaling, the temporal contract — is :class:`training.datasets.layout.LayoutSplit`, which the
training loop uses through ``kind = "layout"`` dataset specs.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.layout import ITEM_KEYS, LayoutSplit

__all__ = ["ITEM_KEYS", "LayoutDataset"]


class LayoutDataset(LayoutSplit):
    """Samples of one split CSV; ``archive`` is the folder the CSV's relative scene paths start from."""

    def __init__(self, split_csv: str | Path, archive: str | Path, bands: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        path = Path(split_csv)
        super().__init__(path.parent, archive=archive, csv_file=path, bands=[int(b) - 1 for b in bands])
