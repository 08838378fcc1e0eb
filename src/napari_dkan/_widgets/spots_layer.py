"""Spots as a napari Points layer whose hover says what a pathologist needs of a spot.

A layer holds one feature column per gene (the whole panel, so colouring by another gene is a
property change, not a new layer).  napari's Points status and tooltip list *every* feature of
the hovered point — 250 genes — after its index and the cursor position in bare numbers; a
:class:`SpotsLayer` shows instead the lines of its :attr:`SpotsLayer.hover` function (the layer
builder sets one from :func:`~napari_dkan._widgets.hover.spot_hover`: the spot, its place in
µm, measured / predicted / residual values of the gene shown) and the cursor in µm.  It
overrides ``Points.get_status`` and ``Points._get_properties`` (napari 0.9: the status bar and
the tooltip); a test guards the override.

A progressive prediction recolours an 11,000-spot layer several times a minute.  napari re-sends
every point (positions, colours, sizes and a ``str()`` per symbol) to vispy on each colour,
border or visibility change — about fifteen times per recolour — so
:meth:`SpotsLayer.colour_by` and :meth:`SpotsLayer.one_redraw` batch those changes into one,
and the symbols are handed over as text, converted once (``_view_symbol``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
from napari.layers import Points

from napari_dkan._widgets.expression import COLOUR_VALUE, SPOT_ID
from napari_dkan._widgets.hover import interval_text, spot_interval
from napari_dkan._widgets.sources import META_KEY


class SpotsLayer(Points):
    """Points with per-gene features; see the module docstring for the hover text."""

    #: the hover lines of a spot (by index), set by the layer builder; None: id and gene value
    hover: Callable[[int], list[str]] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._symbol_text: tuple[np.ndarray, np.ndarray] | None = None
        super().__init__(*args, **kwargs)
        self.events.symbol.connect(self._forget_symbol_text)  # napari may change them in place

    def _forget_symbol_text(self, _event: Any = None) -> None:
        self._symbol_text = None

    @property
    def _view_symbol(self) -> np.ndarray:
        # napari's vispy layer calls str() on each point's symbol on every update: ~1.3 µs for
        # napari's Symbol enum (15 ms per 11,000 spots, each stage and layer), ~40 ns for a str
        known = self._symbol_text
        if known is None or known[0] is not self.symbol:
            text = np.array([str(s) for s in self.symbol], dtype=object)
            known = self._symbol_text = (self.symbol, text)
        return known[1][self._view_indices]

    @property
    def _type_string(self) -> str:
        # napari names a layer type after its class; writers, saving and copying must still
        # see a points layer
        return "points"

    @contextmanager
    def one_redraw(self) -> Iterator[None]:
        """Changes of shown points, face and border colours inside are sent to vispy once, at the
        end (napari's colour and border events each re-send every point)."""
        emitters = (self.events.set_data, self.events.face_color, self.events.border_color,
                    self.events.border_width, self._face.events.colors,
                    self._face.events.color_properties, self._border.events.colors,
                    self._border.events.color_properties)
        with ExitStack() as stack:
            for emitter in emitters:
                stack.enter_context(emitter.blocker())
            yield
        self.events.set_data()  # the one update: vispy reads the view's points and colours

    def colour_by(self, values: np.ndarray, colormap: str, contrast_limits: tuple[float, float],
                  shown: np.ndarray) -> None:
        """Colour the points by ``values`` (the :data:`COLOUR_VALUE` feature) through ``colormap``
        and ``contrast_limits``; only the ``shown`` ones are drawn.  Call inside
        :meth:`one_redraw`: napari recomputes every colour, but vispy gets them once."""
        if not np.array_equal(self.shown, shown):
            self.shown = shown
        self.features[COLOUR_VALUE] = np.asarray(values, dtype=np.float32)  # in place: no event
        # limits first: switching to colormap mode without them makes napari take the values'
        # min and max (NaN, or equal, before any prediction: the colorbar fails on them)
        limits = tuple(float(v) for v in contrast_limits)
        if self.face_contrast_limits is None or tuple(self.face_contrast_limits) != limits:
            self.face_contrast_limits = limits
        if self.face_colormap.name != colormap:
            self.face_colormap = colormap
        face = self._face
        if str(face.color_mode) != "colormap" or face.color_properties is None \
                or face.color_properties.name != COLOUR_VALUE:
            self.face_color = COLOUR_VALUE
        self.refresh_colors(update_color_mapping=False)

    def _spot_at(self, position: Any, **kwargs: Any) -> int | None:
        index = self.get_value(position, **kwargs)
        if index is None or not 0 <= index < len(self.data) or not self.shown[index]:
            return None  # napari picks hidden points too
        return int(index)

    def _get_properties(self, position: Any, *, view_direction: Any = None,
                        dims_displayed: Any = None, world: bool = False) -> list[str]:
        index = self._spot_at(position, view_direction=view_direction,
                              dims_displayed=dims_displayed, world=world)
        if index is None:
            return []
        if self.hover is not None:
            return self.hover(index)
        return hover_lines(self.features, index, self.metadata.get(META_KEY, {}))

    def get_status(self, position: Any = None, *, view_direction: Any = None,
                   dims_displayed: Any = None, world: bool = False) -> dict:
        status = dict(self._get_source_info())
        if position is None:
            status.update(coordinates="", coords="", value="")
            return status
        world_position = np.asarray(position, dtype=float)
        if not world:
            world_position = np.asarray(self.data_to_world(world_position), dtype=float)
        y, x = world_position[-2:]
        unit = _unit_text(self.units[-1])
        coords = f"x {x:,.0f} {unit}, y {y:,.0f} {unit}"
        lines = self._get_properties(position, view_direction=view_direction,
                                     dims_displayed=dims_displayed, world=world)
        value = " · ".join(lines)
        status.update(coordinates=f"{coords}: {value}" if value else coords, coords=coords,
                      value=value)
        return status


def _unit_text(unit: Any) -> str:
    text = str(unit)
    return {"micrometer": "µm", "pixel": "px"}.get(text, text)


def hover_lines(features: Any, index: int, meta: dict[str, Any]) -> list[str]:
    """Without a session: the spot id and the value of the layer's gene."""
    lines = []
    if SPOT_ID in features:
        lines.append(f"spot {features[SPOT_ID].iloc[index]}")
    gene = meta.get("gene")
    if gene and gene in features:
        value = features[gene].iloc[index]
        what = f"{gene} ({meta['role']})" if meta.get("role") else gene
        bounds = spot_interval(meta.get("interval"), index)  # the current gene's interval per spot
        pm = "" if bounds is None else f" ({interval_text(*bounds, meta.get('interval_level'))})"
        lines.append(f"{what}: {value:.3f}{pm}" if np.isfinite(value) else f"{what}: n/a")
    return lines
