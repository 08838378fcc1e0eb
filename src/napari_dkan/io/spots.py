"""The spot table: where each capture spot (or lattice spot) sits on the array and on the slide.

One structure serves legacy ST, Visium, AnnData and spot lattices.  Array coordinates are the
integer (row, col) of the capture array; pixel coordinates are level-0 pixels of the
full-resolution image, ``x`` the column and ``y`` the row.

Two grid layouts exist:

- ``square`` (legacy ST, HER2ST): spots on a square grid, ``pitch`` apart in rows and columns;
  a spot's neighbours are the 8 cells at ±1 row and col.
- ``hex`` (Visium and our lattices): rows are offset by half a pitch; a spot at (r, c) has the
  6 neighbours (r, c±2) and (r±1, c±1), and one column step is half a pitch.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace

import numpy as np

from napari_dkan.io.errors import DataError


class GridLayout(str, enum.Enum):
    SQUARE = "square"
    HEX = "hex"

    def __str__(self) -> str:
        return self.value


_NEIGHBOUR_OFFSETS = {
    GridLayout.SQUARE: [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)],
    GridLayout.HEX: [(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)],
}


def neighbour_reach(layout: GridLayout) -> tuple[int, int]:
    """The largest (|row|, |col|) step from a spot to a grid neighbour: how far smoothing reaches."""
    offsets = _NEIGHBOUR_OFFSETS[layout]
    return max(abs(dr) for dr, _ in offsets), max(abs(dc) for _, dc in offsets)


def layout_of(array_row: np.ndarray, array_col: np.ndarray) -> GridLayout:
    """The grid a set of array positions lies on: hexagonal (Visium: row + col always of one
    parity) or square (legacy ST)."""
    parity = (np.asarray(array_row) + np.asarray(array_col)) % 2
    return GridLayout.HEX if len(parity) and (parity == parity[0]).all() else GridLayout.SQUARE


def grid_neighbour_index(array_row: np.ndarray, array_col: np.ndarray, layout: GridLayout,
                         include_self: bool = False) -> np.ndarray:
    """N×K indices of each spot's grid neighbours on ``layout``, -1 where the neighbour is absent."""
    lookup = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(array_row, array_col))}
    offsets = list(_NEIGHBOUR_OFFSETS[layout])
    if include_self:
        offsets = [(0, 0), *offsets]
    out = np.full((len(array_row), len(offsets)), -1, dtype=np.int64)
    for i, (r, c) in enumerate(zip(array_row, array_col)):
        for k, (dr, dc) in enumerate(offsets):
            out[i, k] = lookup.get((int(r) + dr, int(c) + dc), -1)
    return out


@dataclass(frozen=True, eq=False)
class SpotTable:
    """Spots of one section, in one order that every per-spot array follows."""

    spot_id: np.ndarray
    array_row: np.ndarray
    array_col: np.ndarray
    x: np.ndarray
    y: np.ndarray
    in_tissue: np.ndarray
    #: spot diameter in level-0 pixels (None while the image scale is unknown)
    diameter_px: float | None
    layout: GridLayout
    #: nominal centre-to-centre distance and spot diameter in µm (ST: 200/100, Visium: 100/55)
    pitch_um: float
    diameter_um: float
    source: str = field(default="")

    def __post_init__(self) -> None:
        n = len(self.spot_id)
        coerce = {
            "spot_id": np.asarray(self.spot_id).astype(str),
            "array_row": np.asarray(self.array_row, dtype=np.int64),
            "array_col": np.asarray(self.array_col, dtype=np.int64),
            "x": np.asarray(self.x, dtype=np.float64),
            "y": np.asarray(self.y, dtype=np.float64),
            "in_tissue": np.asarray(self.in_tissue, dtype=bool),
        }
        for name, arr in coerce.items():
            if arr.shape != (n,):
                raise DataError(f"spot table column {name!r} has {arr.shape} values for {n} spots")
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "layout", GridLayout(self.layout))
        ids = coerce["spot_id"]
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dups = uniq[counts > 1]
            raise DataError(
                f"{len(dups)} duplicate spot id(s) in {self.source or 'the spot table'}: "
                f"{', '.join(map(str, dups[:5]))}{'…' if len(dups) > 5 else ''}. Spot ids must be "
                "unique within a section."
            )
        if not (np.isfinite(coerce["x"]).all() and np.isfinite(coerce["y"]).all()):
            raise DataError(f"non-finite pixel positions in {self.source or 'the spot table'}")

    def __len__(self) -> int:
        return len(self.spot_id)

    # -- derived ---------------------------------------------------------------------------
    @property
    def xy(self) -> np.ndarray:
        """N×2 level-0 pixel centres as (x, y)."""
        return np.column_stack([self.x, self.y])

    def subset(self, index: np.ndarray | slice) -> SpotTable:
        """The spots selected by a boolean mask or an index array, in that order."""
        return replace(
            self,
            spot_id=self.spot_id[index],
            array_row=self.array_row[index],
            array_col=self.array_col[index],
            x=self.x[index],
            y=self.y[index],
            in_tissue=self.in_tissue[index],
        )

    def with_scale(self, mpp: float) -> SpotTable:
        """The same spots with the diameter set from the slide's µm per pixel."""
        return replace(self, diameter_px=self.diameter_um / mpp)

    def neighbour_index(self, include_self: bool = False) -> np.ndarray:
        """N×K indices of each spot's grid neighbours, -1 where the neighbour is absent."""
        return grid_neighbour_index(self.array_row, self.array_col, self.layout, include_self)

    def col_step_um(self) -> float:
        """Physical distance of one array-column step."""
        return self.pitch_um / 2 if self.layout is GridLayout.HEX else self.pitch_um

    def estimate_mpp(self) -> float:
        """µm per pixel from the spot lattice: the fitted pixel length of one column step.

        Fits pixel = A·(row, col) + b by least squares, which tolerates rotation and the
        small jitter of hand-aligned ST spots.
        """
        if len(self) < 3 or np.unique(self.array_col).size < 2:
            raise DataError(
                "too few spots to estimate µm per pixel from the spot pitch; give --mpp"
            )
        design = np.column_stack([self.array_row, self.array_col, np.ones(len(self))]).astype(float)
        coef, *_ = np.linalg.lstsq(design, self.xy, rcond=None)
        px_per_col = float(np.hypot(*coef[1]))
        if not px_per_col > 0:
            raise DataError("spot positions do not follow the array columns; give --mpp")
        return self.col_step_um() / px_per_col

    def check_inside(self, width: int, height: int, where: str = "the image") -> None:
        """Raise when spots lie outside a ``width``×``height`` image (wrong image or scale)."""
        outside = (self.x < 0) | (self.y < 0) | (self.x >= width) | (self.y >= height)
        if outside.any():
            k = int(outside.sum())
            i = int(np.flatnonzero(outside)[0])
            raise DataError(
                f"{k} of {len(self)} spots lie outside {where} ({width}×{height} px), e.g. "
                f"{self.spot_id[i]} at x={self.x[i]:.0f}, y={self.y[i]:.0f}. The image does not "
                "match the spot coordinates: check that it is the full-resolution image the "
                "spots were aligned to."
            )


def hex_lattice(
    x0: float, y0: float, width: float, height: float, pitch_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Visium-style hexagonal lattice covering a rectangle: (row, col, x, y) arrays.

    Rows are ``pitch·√3/2`` apart, spots in a row ``pitch`` apart, odd rows shifted by half a
    pitch; array columns advance by 2 along a row so (r, c) and (r±1, c±1) are neighbours.
    """
    if pitch_px <= 0:
        raise DataError(f"lattice pitch must be positive, got {pitch_px}")
    dy = pitch_px * math.sqrt(3) / 2
    n_rows = int(height // dy) + 1
    n_half_cols = int(width // (pitch_px / 2)) + 1
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_half_cols), indexing="ij")
    keep = (rows % 2) == (cols % 2)
    rows, cols = rows[keep], cols[keep]
    xs = x0 + cols * pitch_px / 2
    ys = y0 + rows * dy
    return rows, cols, xs, ys
