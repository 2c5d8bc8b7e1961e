"""The global tile grid, the blending window, and chunked accumulation that equals the whole-scene blend.

Tiles: ``tile`` pixels a side, origins every ``stride = tile - overlap`` pixels from (0, 0); on an axis shorter
than ``tile`` a tile is the scene's length on that axis, with no overlap (one tile row or column), so a tile never
costs more than the scene (:class:`TileGrid`). The number of tiles per axis is the least that covers the image;
tiles running past the right/bottom edge are filled by reflect padding (DSen2-CR / BasicSR test-time tiling pad
the same way; reflection keeps texture statistics, zero padding would look like a black border to the network).

Blending: each tile prediction is weighted by a separable window that is 1 in the tile's core and ramps down with
a raised cosine (Hann half-window) over the ``overlap`` pixels of each side, to a positive ``floor`` at the very
edge, and the mosaic is ``Σ w·pred / Σ w``. The cosine ramp makes adjacent tiles cross-fade with a continuous
first derivative, so a model whose output depends on tile position (padding, global pooling, BatchNorm-free
statistics) shows no step at tile borders; the floor keeps the normalisation well defined where only one tile
covers a pixel, e.g. the image border.

Chunking: memory must not grow with the scene, yet the result must be *identical* to blending the whole scene at
once. Tiles are grouped into chunks of ``c × c`` tile origins (a chunk owns the tiles whose origin lies in it).
A tile sticks out of its chunk by at most ``overlap`` pixels to the right and bottom, so a chunk's accumulator is
its own area plus an ``overlap``-wide margin. The right margin is carried to the next chunk in the row, the bottom
margin into an ``overlap × width`` carry for the next chunk row; a chunk's own area is final once its tiles and
the carries have been added. Memory: one chunk accumulator plus two ``overlap``-row carries, independent of the
height and only the carries (≈ 0.7 MB per 1000 px of width for 4 bands, 32 px overlap) grow with the width.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

WINDOW_FLOOR = 1e-3


@dataclass(frozen=True)
class Tile:
    """One tile: its index in the grid and its pixel origin (row, col) in the image; it is ``tile`` px square."""

    row: int
    col: int
    y: int
    x: int


@dataclass(frozen=True)
class TileGrid:
    """The global tile grid over an image of ``height × width`` pixels, for tiles of ``tile`` px asked for.

    A tile never exceeds the scene (issue 15: ``--tile 4096`` on a 300² image padded every tile to 4096², 20 GB,
    and a 1 × 100000 strip ran 447 tiles of 256² for 100 000 pixels): on an axis shorter than ``tile`` the tiles
    are the scene's size on that axis (``tile_h`` / ``tile_w``) and there is one tile row (column), so no overlap
    is needed there (``overlap_y`` / ``overlap_x`` = 0). The network pads such a tile to its own multiple itself.
    """

    height: int
    width: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if not 0 <= 2 * self.overlap < self.tile:
            raise ValueError(f"overlap must be in [0, tile/2), got tile={self.tile} overlap={self.overlap}")

    @property
    def tile_h(self) -> int:
        return max(1, min(self.tile, self.height))

    @property
    def tile_w(self) -> int:
        return max(1, min(self.tile, self.width))

    @property
    def overlap_y(self) -> int:
        return self.overlap if self.tile_h == self.tile else 0

    @property
    def overlap_x(self) -> int:
        return self.overlap if self.tile_w == self.tile else 0

    @property
    def stride_y(self) -> int:
        return self.tile_h - self.overlap_y

    @property
    def stride_x(self) -> int:
        return self.tile_w - self.overlap_x

    @property
    def stride(self) -> int:
        """The stride of full-size tiles (``tile - overlap``)."""
        return self.tile - self.overlap

    @staticmethod
    def _count(size: int, overlap: int, stride: int) -> int:
        return max(1, math.ceil((size - overlap) / stride))

    @property
    def rows(self) -> int:
        return self._count(self.height, self.overlap_y, self.stride_y)

    @property
    def cols(self) -> int:
        return self._count(self.width, self.overlap_x, self.stride_x)

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile_at(self, row: int, col: int) -> Tile:
        return Tile(row=row, col=col, y=row * self.stride_y, x=col * self.stride_x)

    def __iter__(self) -> Iterator[Tile]:
        for r in range(self.rows):
            for c in range(self.cols):
                yield self.tile_at(r, c)

    def window(self, floor: float = WINDOW_FLOOR) -> np.ndarray:
        """(tile_h, tile_w) blending weights (see :func:`blend_window`)."""
        return np.outer(_ramp(self.tile_h, self.overlap_y, floor), _ramp(self.tile_w, self.overlap_x, floor)).astype(
            np.float32
        )


def _ramp(tile: int, overlap: int, floor: float) -> np.ndarray:
    """1-D weights: 1 in the core, raised-cosine ramps to ``floor`` over ``overlap`` px at each end."""
    w = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        i = np.arange(overlap, dtype=np.float64)
        ramp = floor + (1.0 - floor) * 0.5 * (1.0 - np.cos(np.pi * (i + 0.5) / overlap))
        w[:overlap] = ramp
        w[tile - overlap :] = ramp[::-1]
    return w


def blend_window(tile: int, overlap: int, floor: float = WINDOW_FLOOR) -> np.ndarray:
    """(tile, tile) float32 weights: 1 in the core, raised-cosine ramps to ``floor`` over ``overlap`` px per side."""
    w = _ramp(tile, overlap, floor)
    return np.outer(w, w).astype(np.float32)


def reflect_pad(data: np.ndarray, pad_bottom: int, pad_right: int) -> np.ndarray:
    """Pad (..., h, w) at the bottom/right by reflection (edge replication when a side is 1 px)."""
    if pad_bottom == 0 and pad_right == 0:
        return data
    widths = [(0, 0)] * (data.ndim - 2)
    out = data
    if pad_bottom:
        mode = "reflect" if out.shape[-2] > 1 else "edge"
        out = np.pad(out, [*widths, (0, pad_bottom), (0, 0)], mode=mode)
    if pad_right:
        mode = "reflect" if out.shape[-1] > 1 else "edge"
        out = np.pad(out, [*widths, (0, 0), (0, pad_right)], mode=mode)
    return out


@dataclass(frozen=True)
class Chunk:
    """A group of tiles and the image area whose blend it completes.

    ``tiles`` are the tiles it owns; ``acc_y, acc_x`` / ``acc_h, acc_w`` are its accumulator (own area + the
    overlap margins); ``out_y, out_x, out_h, out_w`` is the image area that is final after this chunk, clipped to
    the image (the margins are final too on the last chunk row / column).
    """

    index: tuple[int, int]
    tiles: tuple[Tile, ...]
    acc_y: int
    acc_x: int
    acc_h: int
    acc_w: int
    own_h: int
    own_w: int
    last_row: bool
    last_col: bool
    out_y: int
    out_x: int
    out_h: int
    out_w: int


def chunk_tiles(grid: TileGrid, chunk_px: int) -> tuple[int, int]:
    """Tiles per chunk side (rows, cols): ``chunk_px`` rounded down to whole tile strides, at least one."""
    return max(1, chunk_px // grid.stride_y), max(1, chunk_px // grid.stride_x)


def output_block_height(grid: TileGrid, chunk_px: int, largest: int = 512, smallest: int = 256) -> int:
    """A GeoTIFF block height that divides the chunk-row height, so every written block is complete when written.

    A chunk row ends at a multiple of ``c × stride`` (896 px for the defaults), which 512-row blocks straddle: the
    straddling blocks are half-written, evicted from GDAL's bounded cache on wide scenes, re-read and appended
    again when the next chunk row completes them — compressed GeoTIFFs cannot reuse the old space, so the file grew
    by ~24 % on a 16384² scene. The largest multiple of 16 (a TIFF requirement) in [``smallest``, ``largest``]
    dividing the chunk-row height avoids that (448 for the defaults); when there is none, ``largest`` is used.
    """
    rows = chunk_tiles(grid, chunk_px)[0] * grid.stride_y
    for h in range(largest, smallest - 1, -16):
        if rows % h == 0:
            return h
    return largest


def chunks(grid: TileGrid, chunk_px: int) -> list[Chunk]:
    """Row-major chunks of about ``chunk_px`` pixels a side (a whole number of tile strides, at least one)."""
    cy, cx = chunk_tiles(grid, chunk_px)
    n_rows = math.ceil(grid.rows / cy)
    n_cols = math.ceil(grid.cols / cx)
    out: list[Chunk] = []
    sy, sx, oy, ox = grid.stride_y, grid.stride_x, grid.overlap_y, grid.overlap_x
    for ci in range(n_rows):
        r0, r1 = ci * cy, min((ci + 1) * cy, grid.rows)
        for cj in range(n_cols):
            c0, c1 = cj * cx, min((cj + 1) * cx, grid.cols)
            tiles = tuple(grid.tile_at(r, k) for r in range(r0, r1) for k in range(c0, c1))
            last_row, last_col = ci == n_rows - 1, cj == n_cols - 1
            own_h, own_w = (r1 - r0) * sy, (c1 - c0) * sx
            y, x = r0 * sy, c0 * sx
            out_h = min((own_h + oy) if last_row else own_h, grid.height - y)
            out_w = min((own_w + ox) if last_col else own_w, grid.width - x)
            out.append(
                Chunk(
                    index=(ci, cj),
                    tiles=tiles,
                    acc_y=y,
                    acc_x=x,
                    acc_h=own_h + oy,
                    acc_w=own_w + ox,
                    own_h=own_h,
                    own_w=own_w,
                    last_row=last_row,
                    last_col=last_col,
                    out_y=y,
                    out_x=x,
                    out_h=max(0, out_h),
                    out_w=max(0, out_w),
                )
            )
    return out


class ChunkBlender:
    """Accumulates weighted tile predictions chunk by chunk and hands out final, normalised image areas.

    Use: for each chunk of :func:`chunks` (in order) call :meth:`start`, :meth:`add` for every tile it owns, then
    :meth:`finish`, which returns ``(y, x, data)`` with ``data`` (bands, out_h, out_w) float32 — the exact
    whole-scene blend for that area.
    """

    def __init__(self, grid: TileGrid, bands: int, floor: float = WINDOW_FLOOR) -> None:
        self.grid = grid
        self.bands = bands
        self.window = grid.window(floor)
        full_w = grid.cols * grid.stride_x + grid.overlap_x
        # Carries hold Σw·pred in channels [:bands] and Σw in channel [bands].
        self._bottom_prev = np.zeros((bands + 1, grid.overlap_y, full_w), dtype=np.float32)
        self._bottom_next = np.zeros_like(self._bottom_prev)
        self._right: np.ndarray | None = None
        self._acc: np.ndarray | None = None
        self._chunk: Chunk | None = None

    def start(self, chunk: Chunk) -> None:
        oy, ox = self.grid.overlap_y, self.grid.overlap_x
        acc = np.zeros((self.bands + 1, chunk.acc_h, chunk.acc_w), dtype=np.float32)
        if oy and chunk.index[0] > 0:
            # The chunk row above spilled into our top rows. Take our own width only (the right margin's share
            # reaches the next chunk through it), except on the last column, which has no right neighbour.
            w = chunk.acc_w if chunk.last_col else chunk.own_w
            acc[:, :oy, :w] += self._bottom_prev[:, :, chunk.acc_x : chunk.acc_x + w]
        if ox and chunk.index[1] > 0 and self._right is not None:  # the chunk to the left spilled into our left cols
            acc[:, : self._right.shape[1], :ox] += self._right
        self._acc = acc
        self._chunk = chunk

    def add(self, tile: Tile, prediction: np.ndarray) -> None:
        """Add one (bands, tile_h, tile_w) prediction of a tile owned by the current chunk."""
        assert self._acc is not None and self._chunk is not None
        y = tile.y - self._chunk.acc_y
        x = tile.x - self._chunk.acc_x
        th, tw = self.grid.tile_h, self.grid.tile_w
        self._acc[: self.bands, y : y + th, x : x + tw] += prediction * self.window
        self._acc[self.bands, y : y + th, x : x + tw] += self.window

    def finish(self) -> tuple[int, int, np.ndarray]:
        assert self._acc is not None and self._chunk is not None
        ch, acc = self._chunk, self._acc
        oy, ox = self.grid.overlap_y, self.grid.overlap_x
        if ox:
            # On the last chunk row the bottom margin is output too, so it travels right with the right margin
            # instead of waiting for a next chunk row that does not exist.
            self._right = acc[:, : ch.acc_h if ch.last_row else ch.own_h, ch.own_w :].copy()
        if oy:
            self._bottom_next[:, :, ch.acc_x : ch.acc_x + ch.acc_w] += acc[:, ch.own_h :, :]
        if ch.last_col:  # the chunk row is complete: its bottom spill becomes the next row's top carry
            if oy:
                self._bottom_prev, self._bottom_next = self._bottom_next, self._bottom_prev
                self._bottom_next[:] = 0.0
            self._right = None
        region = acc[:, : ch.out_h, : ch.out_w]
        weight = region[self.bands]
        data = region[: self.bands] / np.maximum(weight, np.float32(1e-12))
        self._acc = None
        self._chunk = None
        return ch.out_y, ch.out_x, data
