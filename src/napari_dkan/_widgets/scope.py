"""Which spots a prediction covers: all of them, or those in the current field of view.

The field of view is the part of the slide the canvas shows, mapped into level-0 pixels of the
slide's image layer.  It is computed from the camera (centre, zoom) and the viewbox size rather
than from the layer's ``corner_pixels × downsample_factors[data_level]``: in napari 0.9
``corner_pixels`` of a multiscale layer are widened to chunk boundaries and kept while the user
zooms in (napari only reloads when the view leaves them), so they can cover several times the
visible area.  The camera gives exactly what the user sees, in grid mode too.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_dkan.io.errors import DataError
from napari_dkan.io.spots import SpotTable


class Scope(str, enum.Enum):
    FIELD_OF_VIEW = "field of view"
    ALL_SPOTS = "all spots"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PixelBox:
    """An axis-aligned box in level-0 pixels: ``x`` columns, ``y`` rows."""

    x0: float
    y0: float
    x1: float
    y1: float

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.asarray(x), np.asarray(y)
        return (x >= self.x0) & (x <= self.x1) & (y >= self.y0) & (y <= self.y1)


def visible_box(viewer: Any, layer: Any) -> PixelBox:
    """The area of ``layer`` (an image layer) shown in ``viewer``'s canvas, in its data pixels.

    For a multiscale layer, data pixels are level-0 pixels whatever level napari is drawing.
    """
    if viewer.dims.ndisplay != 2:
        raise DataError("field-of-view prediction needs the 2D view; switch off 3D or predict all spots")
    height, width = viewer.canvas.viewbox_size(viewer.layers)
    camera = viewer.scene.camera  # napari 0.9 (viewer.camera is its deprecated alias)
    centre = np.asarray(camera.center, dtype=float)[-2:]
    half = np.array([height, width], dtype=float) / 2.0 / float(camera.zoom)
    lo, hi = centre - half, centre + half
    # all four corners: a rotated or flipped layer turns the box around
    corners = [(lo[0], lo[1]), (lo[0], hi[1]), (hi[0], lo[1]), (hi[0], hi[1])]
    lead = list(viewer.dims.point[:-2])  # non-displayed world axes (none for a 2D slide)
    data = np.array([np.asarray(layer.world_to_data([*lead, r, c]))[-2:] for r, c in corners])
    (r0, c0), (r1, c1) = data.min(axis=0), data.max(axis=0)
    return PixelBox(x0=float(c0), y0=float(r0), x1=float(c1), y1=float(r1))


def spots_in_box(spots: SpotTable, box: PixelBox) -> np.ndarray:
    """Indices of the spots whose centre lies in ``box``; raises when there are none."""
    index = np.flatnonzero(box.contains(spots.x, spots.y))
    if index.size == 0:
        raise DataError(
            "no spot centre lies in the field of view: pan to the tissue, zoom out, or choose "
            "'all spots'"
        )
    return index
