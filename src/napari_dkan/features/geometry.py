"""Where the tiles are: the spot patches and the 5×5 region grids, in level-0 pixels.

Both modes give, for every spot, 25 region slots in row-major (dy, dx) order from (-2, -2) to
(2, 2) (slot 12 is the centre) and a list of tile centres to encode.  A slot points at a tile
(an index into the encoded tiles) or is masked (``-1``).

- ``exact`` (the paper): slot (dy, dx) is the tile centred on spot + (dx, dy)·step.  The centre
  slot *is* the spot's patch, so it points at the patch rather than encoding it twice.
- ``shared``: one grid of step-sized cells anchored at the image origin.  Each spot's region is
  the 5×5 cells around the cell holding its centre; a cell is encoded once, however many spots
  use it.  Only cells within two cells of some spot's cell exist, never the whole slide.

``step`` is the tile side in level-0 pixels: ``tile_px`` at the slide's own resolution, or
``tile_px × target_mpp / mpp`` when tiles are resampled to a target µm/px.

Masking: a slot is masked when its tile's centre lies outside the image (x or y < 0, or ≥ the
level-0 width / height).  A tile whose centre is inside but which reaches past the border is
kept and read with white padding, like the patch of a spot near the border.  One exception in
``shared`` mode: a partial grid cell at the right or bottom edge can hold a spot while its centre
lies past the border; a cell that holds a spot is always kept, so no spot loses its own cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID = 5
SLOTS = GRID * GRID
CENTRE_SLOT = SLOTS // 2
#: (dy, dx) of each slot, row-major
OFFSETS = np.array([(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)], dtype=np.int64)
MASKED = -1


@dataclass(frozen=True)
class RegionLayout:
    """The tiles to encode for a section and how each spot's 25 slots map onto them.

    Encoded tiles are numbered patches first (``0 … n_spots-1``, one per spot, centred on it),
    then the region tiles (``n_spots + k`` is ``tile_centres[k]``).
    """

    patch_centres: np.ndarray  # (N, 2) float64 (x, y)
    tile_centres: np.ndarray  # (M, 2) float64 (x, y)
    slots: np.ndarray  # (N, 25) int64: encoded-tile index or MASKED
    step: float
    mode: str

    @property
    def n_spots(self) -> int:
        return len(self.patch_centres)

    @property
    def mask(self) -> np.ndarray:
        """(N, 25) bool: True where the slot is off the image."""
        return self.slots == MASKED

    @property
    def n_tiles(self) -> int:
        """Encoder passes: the patches plus the region tiles."""
        return self.n_spots + len(self.tile_centres)


def _inside(cx: np.ndarray, cy: np.ndarray, width: int, height: int) -> np.ndarray:
    return (cx >= 0) & (cy >= 0) & (cx < width) & (cy < height)


def exact_layout(x: np.ndarray, y: np.ndarray, step: float, width: int, height: int) -> RegionLayout:
    """The paper's layout: a 5×5 grid of tiles centred on each spot."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    cx = x[:, None] + OFFSETS[None, :, 1] * step
    cy = y[:, None] + OFFSETS[None, :, 0] * step
    inside = _inside(cx, cy, width, height)
    slots = np.full((n, SLOTS), MASKED, dtype=np.int64)
    slots[:, CENTRE_SLOT] = np.arange(n)  # the spot's own patch
    encode = inside.copy()
    encode[:, CENTRE_SLOT] = False
    k = int(encode.sum())
    slots[encode] = n + np.arange(k)  # row-major over (spot, slot)
    centres = np.column_stack([cx[encode], cy[encode]])
    return RegionLayout(np.column_stack([x, y]), centres.reshape(k, 2), slots, float(step), "exact")


def shared_layout(x: np.ndarray, y: np.ndarray, step: float, width: int, height: int) -> RegionLayout:
    """One grid of cells shared by all spots; each cell in use is encoded once."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    cell_row = np.floor(y / step).astype(np.int64)
    cell_col = np.floor(x / step).astype(np.int64)
    rows = cell_row[:, None] + OFFSETS[None, :, 0]
    cols = cell_col[:, None] + OFFSETS[None, :, 1]
    cx, cy = (cols + 0.5) * step, (rows + 0.5) * step
    inside = _inside(cx, cy, width, height)
    inside[:, CENTRE_SLOT] = True  # the cell holding the spot (see the module notes)
    if not inside.all():
        # and the same cell seen from a neighbour's region: keep masks a property of the cell
        occupied = {(int(r), int(c)) for r, c in zip(cell_row, cell_col)}
        edge = ~inside
        inside[edge] = [(int(r), int(c)) in occupied for r, c in zip(rows[edge], cols[edge])]
    slots = np.full((n, SLOTS), MASKED, dtype=np.int64)
    if inside.any():
        # the cells in (row, col) order, as np.unique(axis=0) would give them; one int64 key per
        # cell sorts ~20× faster than rows of two (0.4 s for 11,000 spots, holding the GIL)
        cell_rows, cell_cols = rows[inside], cols[inside]
        r0, c0 = cell_rows.min(), cell_cols.min()
        span = int(cell_cols.max() - c0) + 1
        keys, inverse = np.unique((cell_rows - r0) * span + (cell_cols - c0), return_inverse=True)
        slots[inside] = n + inverse.reshape(-1)
        centres = np.column_stack([(keys % span + c0 + 0.5) * step, (keys // span + r0 + 0.5) * step])
    else:
        centres = np.zeros((0, 2))
    return RegionLayout(np.column_stack([x, y]), centres, slots, float(step), "shared")


def make_layout(mode: str, x: np.ndarray, y: np.ndarray, step: float, width: int, height: int) -> RegionLayout:
    if mode == "exact":
        return exact_layout(x, y, step, width, height)
    if mode == "shared":
        return shared_layout(x, y, step, width, height)
    raise ValueError(f"unknown region mode {mode!r}; choose 'exact' or 'shared'")


def gather_regions(slots: np.ndarray, features: np.ndarray, dtype: type = np.float16) -> np.ndarray:
    """(N, 25, D) region features from the (N, 25) slots of a layout and the features of its
    encoded tiles (patches first, then region tiles); zeros where masked."""
    out = np.zeros((slots.shape[0], SLOTS, features.shape[1]), dtype=dtype)
    valid = slots != MASKED
    out[valid] = features[slots[valid]]
    return out
