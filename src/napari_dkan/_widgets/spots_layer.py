"""Spots as a napari Points layer whose hover names the spot and the current gene's value.

A layer holds one feature column per gene (the whole panel, so colouring by another gene is a
property change, not a new layer).  napari's Points status and tooltip list *every* feature of
the hovered point — 250 genes — so :class:`SpotsLayer` narrows them to the spot id and the
value of the gene the dock shows.  It overrides ``Points._get_properties``, the one hook both
the status bar and the tooltip use (napari 0.9); a test guards the override.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Points

from napari_dkan._widgets.expression import SPOT_ID
from napari_dkan._widgets.sources import META_KEY


class SpotsLayer(Points):
    """Points with per-gene features; see the module docstring for the hover text."""

    @property
    def _type_string(self) -> str:
        # napari names a layer type after its class; writers, saving and copying must still
        # see a points layer
        return "points"

    def _get_properties(self, position: Any, *, view_direction: Any = None,
                        dims_displayed: Any = None, world: bool = False) -> list[str]:
        index = self.get_value(position, view_direction=view_direction,
                               dims_displayed=dims_displayed, world=world)
        if index is None or not 0 <= index < len(self.data) or not self.shown[index]:
            return []  # napari picks hidden points too
        return hover_lines(self.features, int(index), self.metadata.get(META_KEY, {}))


def hover_lines(features: Any, index: int, meta: dict[str, Any]) -> list[str]:
    lines = []
    if SPOT_ID in features:
        lines.append(f"spot {features[SPOT_ID].iloc[index]}")
    gene = meta.get("gene")
    if gene and gene in features:
        value = features[gene].iloc[index]
        what = f"{gene} ({meta['role']})" if meta.get("role") else gene
        half = meta.get("halfwidth")  # the current gene's interval half-width per spot
        pm = ""
        if half is not None and index < len(half) and np.isfinite(half[index]):
            pm = f" ± {half[index]:.3f}"
        lines.append(f"{what}: {value:.3f}{pm}" if np.isfinite(value) else f"{what}: n/a")
    return lines
