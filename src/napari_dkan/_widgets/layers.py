"""napari layers for a :class:`~napari_dkan._widgets.session.SpotSession`, updated in place.

Three Points layers, at most one of each role: ``measured``, ``predicted`` and ``residual``
(predicted − measured).  Each spans every spot of the section (data in level-0 pixels, scaled
like the slide layer) with one feature column per gene; spots without a value are hidden with
``shown``, so switching gene, scope or model changes properties and never adds layers.
Predicted and measured share colormap and contrast limits (napari does not sync Points colour
settings between layers, so it is done here); the residual uses a diverging colormap with
symmetric limits.  Side-by-side view uses napari's grid with stride 2: each overlay is paired
with a slide layer (a twin sharing the slide's pyramid for all but the first), so every
panel shows its spots over the tissue.

What the colours mean is drawn on the canvas with the layers (see
:mod:`~napari_dkan._widgets.canvas_text`): each layer's panel is titled with the gene and what
it shows ("ERBB2 · measured"), and a title above the colorbar gives the gene, the quantity and
the colour scale in use.  A field-of-view prediction is outlined by a rectangle (a Shapes
layer) and its spots are ringed, so they do not blend into the measured spots under them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_dkan._widgets.canvas_text import set_layer_text
from napari_dkan._widgets.colour_scales import (
    colorbar_heading,
    colorbar_title,
    panel_title,
    residual_title,
)
from napari_dkan._widgets.expression import COLOUR_VALUE, spot_features
from napari_dkan._widgets.hover import spot_hover
from napari_dkan._widgets.layer_controls import hide_colour_controls
from napari_dkan._widgets.session import RESIDUAL_COLORMAP, SpotSession
from napari_dkan._widgets.sources import META_KEY
from napari_dkan._widgets.spots_layer import SpotsLayer

MEASURED, PREDICTED, RESIDUAL, TWIN = "measured", "predicted", "residual", "slide twin"
AREA = "predicted area"
ROLES = (MEASURED, PREDICTED, RESIDUAL)
#: keys of the canvas texts in a layer's overlays
TITLE, COLORBAR_TITLE = "napari_dkan_title", "napari_dkan_colorbar_title"
#: a partly predicted section: predicted spots get a ring of this colour and relative width
RING_COLOR, RING_WIDTH = "white", 0.12
AREA_COLOR = "#ffd54f"


def role_of(layer: Any) -> str | None:
    return (getattr(layer, "metadata", None) or {}).get(META_KEY, {}).get("role")



#: every character our canvas texts use: drawn once ahead so their glyphs are rendered then
GLYPHS = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
          " ·:()[]−-–+±%.,/_=<>≥")

class LayerBuilder:
    """Creates and updates the session's layers in ``viewer``."""

    def __init__(self, viewer: Any, session: SpotSession, slide_layer: Any) -> None:
        self.viewer = viewer
        self.session = session
        self.slide_layer = slide_layer
        self.show_residual = False
        self.grid = False
        self._layers: dict[str, SpotsLayer] = {}
        self._made_from: dict[str, tuple] = {}
        #: per role, the values (spots × genes) in the layer's feature table and their genes: a
        #: new prediction of the same panel rewrites only the rows that changed
        self._tables: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        #: per role, what its colours were last made from (unchanged: not recoloured)
        self._coloured: dict[str, tuple] = {}
        self._twins: list[Any] = []
        self._area: Any = None
        self._area_hidden_by_grid = False
        self._fitted = False
        session.values_changed.connect(self._on_values)
        session.gene_changed.connect(self.recolor)
        session.display_changed.connect(self.recolor)

    def close(self) -> None:
        """Stop following the session (its layers stay in the viewer)."""
        self.session.values_changed.disconnect(self._on_values)
        self.session.gene_changed.disconnect(self.recolor)
        self.session.display_changed.disconnect(self.recolor)

    # -- layers --------------------------------------------------------------------------------
    def layer(self, role: str) -> SpotsLayer | None:
        layer = self._layers.get(role)
        if layer is not None and layer not in self.viewer.layers:  # the user deleted it
            del self._layers[role]
            return None
        return layer

    def _values(self, role: str) -> np.ndarray | None:
        """Values over every spot, or None when the role's layer should not exist.

        The predicted layer exists as soon as there is a model, all spots hidden until a
        prediction arrives: napari builds a layer's controls and visuals in ~0.3 s on the GUI
        thread, which belongs to choosing a model, not to the end of a prediction.  The
        residual layer is built the first time it is shown.
        """
        s = self.session
        n = s.n_spots
        if role == PREDICTED:
            if s.model is None:
                return None
            return s.predicted.full(n) if s.predicted is not None else np.full((n, len(s.genes)), np.nan)
        if role == RESIDUAL:
            wanted = self.show_residual or self.layer(RESIDUAL) is not None
            if s.predicted is None or s.measured is None or not wanted:
                return None
            return s.predicted.full(n) - s.measured.full(n)
        return None if s.measured is None else s.measured.full(n)

    def _on_values(self) -> None:
        for role in ROLES:
            self._update(role)
        self.recolor()
        if self.grid:
            self.set_grid(True, fit=False)  # a panel may have come or gone; keep the user's view

    def _inputs(self, role: str) -> tuple:
        """What a role's values are made of: unchanged inputs, unchanged layer."""
        s = self.session
        # the model fixes the panel; without one the panel is the measured values' own
        return (s.model, s.measured if role != PREDICTED else None,
                s.predicted if role != MEASURED else None)

    def _update(self, role: str) -> None:
        layer = self.layer(role)
        inputs = self._inputs(role)
        seen = self._made_from.get(role)
        if layer is not None and seen is not None and all(a is b for a, b in zip(inputs, seen)):
            return  # e.g. the measured layer when a prediction arrives: 250 columns not rebuilt
        values = self._values(role)
        if values is None:
            if layer is not None:
                self.viewer.layers.remove(layer)
                del self._layers[role]
            self._tables.pop(role, None)
            return
        self._made_from[role] = inputs
        genes = tuple(self.session.genes)
        table = self._tables.get(role)
        if layer is not None and table is not None and table[0] == genes:
            if not self._update_rows(layer, genes, table[1], values):
                layer.metadata[META_KEY] = self._metadata(role)
                return  # e.g. the job's result after its last stage: the same values
        else:
            features = spot_features(self.session.section.spots.spot_id, genes, values)
            # the colour column must exist when the table is set: napari keeps a row of defaults
            # per column, and colouring by a column added later fails
            features[COLOUR_VALUE] = np.float32(np.nan)
            if layer is None:
                layer = self._adopt_or_add(role, features)
            else:
                layer.features = features
            self._tables[role] = (genes, values)
        self._coloured.pop(role, None)
        layer.metadata[META_KEY] = self._metadata(role)
        if role == RESIDUAL:
            layer.visible = self.show_residual

    @staticmethod
    def _update_rows(layer: SpotsLayer, genes: tuple[str, ...], table: np.ndarray,
                     values: np.ndarray) -> int:
        """Write the spots whose values changed into ``table`` and the layer's feature table, in
        place (returns how many): a progressive prediction's stage changes a few thousand of
        11,000 spots, and a new feature table costs napari a rebuild of every point's colours
        and text."""
        same = (table == values) | (np.isnan(table) & np.isnan(values))
        rows = np.flatnonzero(~same.all(axis=1))
        if rows.size:
            table[rows] = values[rows]
            features = layer.features
            features.iloc[rows, features.columns.get_indexer(list(genes))] = values[rows]
        return int(rows.size)

    def _interval(self) -> tuple[Any, Any]:
        """The shown gene's prediction interval per spot ((N, 2) lower, upper) and its level,
        when the dock has put them on the predicted layer (a model with a calibration)."""
        layer = self.layer(PREDICTED)
        meta = {} if layer is None else layer.metadata.get(META_KEY, {})
        return meta.get("interval"), meta.get("interval_level")

    def _metadata(self, role: str) -> dict[str, Any]:
        s = self.session
        meta: dict[str, Any] = {"role": role, "source": s.source.to_metadata(), "gene": s.gene}
        expr = s.measured if role == MEASURED else s.predicted
        if expr is not None:
            meta["space"] = expr.space
        if s.model is not None and role != MEASURED:
            meta["model"] = str(s.model.run_dir)
        return meta

    def _adopt_or_add(self, role: str, features: Any) -> SpotsLayer:
        """A new layer, taking the place of a reader-made layer of the same section and role."""
        spots = self.session.section.spots
        mpp_scale, translate, units = self._pixel_frame()
        diameter = spots.diameter_px or spots.diameter_um / float(self.session.section.mpp)
        layer = SpotsLayer(
            np.column_stack([spots.y, spots.x]), features=features, size=diameter,
            scale=mpp_scale, translate=translate, units=units, border_width=0,
            border_width_is_relative=True, opacity=0.9 if role != RESIDUAL else 1.0,
            name=f"{self.session.section.name} · {role}", metadata={META_KEY: self._metadata(role)},
        )
        layer.text.visible = False  # no text labels: napari's "display text" box must say so
        session = self.session

        def hover(index: int) -> list[str]:
            interval, level = self._interval()
            return spot_hover(session, index, interval=interval, level=level)

        layer.hover = hover
        old = self._reader_layer(role)
        if old is not None:
            index = self.viewer.layers.index(old)
            layer.name = old.name
            self.viewer.layers.remove(old)
            self.viewer.layers.insert(index, layer)
        else:
            self.viewer.add_layer(layer)
        hide_colour_controls(self.viewer, layer)
        if role == PREDICTED:  # made before its values (see _values); the others show theirs at once
            self._build_overlays(layer)
        # the colorbar follows what is shown (the eye icon too): hidden layers show no scale
        layer.events.visible.connect(lambda _event: self._update_colorbars())
        self._layers[role] = layer
        return layer

    def _build_overlays(self, layer: SpotsLayer) -> None:
        """Build and draw the layer's colorbar and titles once, then hide them: napari builds an
        overlay's visuals when it is first shown and vispy compiles their shaders when first
        drawn (~0.2 s and ~0.3 s for these three on a 2-core CPU without a GPU), which would
        otherwise come on top of the first colours of a prediction."""
        for key, position, size in ((TITLE, "top_left", 12), (COLORBAR_TITLE, "top_right", 10)):
            set_layer_text(layer, key, GLYPHS, visible=True, position=position, font_size=size)
        layer.face_contrast_limits = (0.0, 1.0)  # a colorbar without limits is not drawn
        layer.face_colorbar.visible = True
        # the canvas label of an unreliable gene (trust_view.mark_reliability) first shows with a
        # prediction's first colours: its shader and glyphs too (~0.15 s), unless drawn here
        from napari_dkan._widgets.trust_view import text_overlay

        label = text_overlay(self.viewer)
        warm_label = label is not None and not label.visible and not label.text
        if warm_label:
            label.text, label.font_size, label.visible = GLYPHS, 12, True
        try:
            self.viewer.screenshot(canvas_only=True)  # one draw, off screen
        except Exception:  # noqa: BLE001 - only a head start; e.g. a viewer without a canvas
            pass
        for key in (TITLE, COLORBAR_TITLE):
            set_layer_text(layer, key, "", visible=False)
        layer.face_colorbar.visible = False
        if warm_label:
            label.visible, label.text = False, ""

    def _reader_layer(self, role: str) -> Any:
        wanted = self.session.source.to_metadata()
        for layer in self.viewer.layers:
            meta = (layer.metadata or {}).get(META_KEY, {})
            saved_prediction = role == PREDICTED and "saved" in meta  # it stays as it is
            if (meta.get("role") == role and meta.get("source") == wanted and not saved_prediction
                    and not isinstance(layer, SpotsLayer)):
                return layer
        return None

    def _pixel_frame(self) -> tuple[tuple[float, float], tuple[float, float], Any]:
        """Scale, translate and units that put level-0 pixels where the slide layer draws them."""
        slide = self.slide_layer
        meta = (slide.metadata or {}).get(META_KEY, {})
        scale = tuple(meta.get("pixel_scale") or tuple(slide.scale[-2:]))
        return scale, tuple(slide.translate[-2:]), tuple(slide.units[-2:])

    # -- colours ---------------------------------------------------------------------------------
    def recolor(self, *_: Any) -> None:
        s = self.session
        gene = s.gene
        if gene is None:
            return
        limits = s.contrast_limits()
        for role in ROLES:
            layer = self.layer(role)
            genes, table = self._tables.get(role, ((), None))
            if layer is None or table is None or gene not in genes:
                continue
            layer.metadata[META_KEY]["gene"] = gene
            if role == RESIDUAL:
                colormap, clim = RESIDUAL_COLORMAP, s.residual_limits()
            else:
                colormap, clim = s.display.colormap, limits
            made_from = (layer, gene, s.display, colormap, tuple(map(float, clim)), self._partial())
            if self._coloured.get(role) == made_from:
                continue  # e.g. the measured layer when the limits stayed as they were
            values = table[:, genes.index(gene)]
            if role == RESIDUAL:
                shown = values
            else:
                shown = s.shown_values(s.measured if role == MEASURED else s.predicted)
            with layer.one_redraw():  # one update of the canvas per layer, not one per setting
                layer.colour_by(shown, colormap, clim, np.isfinite(values))
                if role == PREDICTED:
                    self._ring_partial_prediction(layer)
            self._coloured[role] = made_from
        self._update_colorbars()

    def _partial(self) -> bool:
        s = self.session
        return s.predicted is not None and len(s.predicted) < s.n_spots

    def _ring_partial_prediction(self, layer: SpotsLayer) -> None:
        """Ring the predicted spots when only some are: they must not blend into the measured."""
        width = RING_WIDTH if self._partial() else 0.0
        if not np.allclose(layer.border_width, width):
            layer.border_color = RING_COLOR
            layer.border_width = width

    def has_values(self, role: str) -> bool:
        layer = self.layer(role)
        return layer is not None and bool(np.any(layer.shown))

    def _update_colorbars(self) -> None:
        """One colorbar for the shared scale (predicted, else measured), one for the residual;
        each layer's panel titled with the gene and what it shows."""
        s = self.session
        gene = s.gene or ""
        filled = [self.layer(r) for r in (PREDICTED, MEASURED) if self.has_values(r)]
        # the shown one's (after the flip, measured alone is shown), predicted when both are
        shared = next((layer for layer in filled if layer.visible), filled[0] if filled else None)
        for role in ROLES:
            layer = self.layer(role)
            if layer is None:
                continue
            filled = self.has_values(role)
            show = filled and (layer is shared or (role == RESIDUAL and layer.visible))
            layer.face_colorbar.visible = show
            if role == RESIDUAL:
                bar_title = residual_title(gene)
                title = panel_title(gene, "predicted − measured")
            else:
                d = s.display
                bar_title = colorbar_title(colorbar_heading(gene, s.section.name), d.scale,
                                           d.low_percentile, d.high_percentile)
                title = panel_title(gene, role)
                if role == PREDICTED and s.predicted is not None and len(s.predicted) < s.n_spots:
                    title += f" ({len(s.predicted)} of {s.n_spots} spots)"
            set_layer_text(layer, TITLE, title, visible=filled, position="top_left")
            set_layer_text(layer, COLORBAR_TITLE, bar_title, visible=show, position="top_right",
                           font_size=10)

    def set_residual_visible(self, visible: bool) -> None:
        self.show_residual = visible
        layer = self.layer(RESIDUAL)
        if layer is None and visible:
            self._update(RESIDUAL)
            self.recolor()
            layer = self.layer(RESIDUAL)
        if layer is not None:
            layer.visible = visible
        self._update_colorbars()
        if self.grid:
            self.set_grid(True, fit=False)

    # -- side by side --------------------------------------------------------------------------
    def set_grid(self, enabled: bool, fit: bool = True) -> int:
        """Show each visible overlay in its own panel over the slide; returns the panel count.

        ``fit`` zooms onto the spots afterwards (a panel is smaller than the whole canvas).
        """
        self.grid = enabled
        grid = self.viewer.canvas.grid
        overlays = [lyr for lyr in (self.layer(MEASURED), self.layer(PREDICTED), self.layer(RESIDUAL))
                    if lyr is not None and lyr.visible]
        area = self.area_layer()
        if area is not None:  # a grid cell of its own otherwise; each panel shows its spots
            if enabled and area.visible:
                area.visible, self._area_hidden_by_grid = False, True
            elif not enabled and self._area_hidden_by_grid:
                area.visible, self._area_hidden_by_grid = True, False
        if not enabled or len(overlays) < 2:
            self._drop_twins(0)
            was_on = grid.enabled
            grid.enabled = False
            grid.stride = 1
            if was_on and fit:
                self.fit_to_spots()  # the grid's zoom fitted a panel, not the canvas
            return 1
        selected = set(self.viewer.layers.selection)
        active = self.viewer.layers.selection.active
        self._drop_twins(len(overlays) - 1)
        while len(self._twins) < len(overlays) - 1:
            self._twins.append(self._add_twin())
        # adding a layer selects it; the user's selection (and layer controls) stay as they were
        self.viewer.layers.selection = {lyr for lyr in selected if lyr in self.viewer.layers}
        if active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        slides = [self.slide_layer, *self._twins]
        order = [layer for pair in zip(slides, overlays) for layer in pair]
        rest = [layer for layer in self.viewer.layers if layer not in order]
        for position, layer in enumerate(order + rest):
            current = self.viewer.layers.index(layer)
            if current != position:
                self.viewer.layers.move(current, position)
        for twin, overlay in zip(self._twins, overlays[1:]):
            twin.name = f"{self.slide_layer.name} [{role_of(overlay)}]"
        grid.stride = 2
        grid.shape = (1, len(overlays))
        grid.enabled = True
        if fit:
            self.fit_to_spots()
        return len(overlays)

    def fit_to_spots(self, margin: float = 0.05) -> None:
        """Centre the camera on the section's spots (the tissue) and zoom so they fill a panel."""
        layer = self.layer(MEASURED) or self.layer(PREDICTED)
        if layer is not None and len(layer.data):
            ends = [layer.data_to_world(p)[-2:] for p in (layer.data.min(0), layer.data.max(0))]
            pad = layer.size.max() * np.abs(layer.scale[-2:])
        else:
            spots = self._known_spots()
            if spots is None or len(spots) == 0:
                self.viewer.reset_view()
                return
            scale, translate, _ = self._pixel_frame()
            px = [np.array([spots.y.min(), spots.x.min()]), np.array([spots.y.max(), spots.x.max()])]
            ends = [p * np.asarray(scale) + np.asarray(translate) for p in px]
            diameter = spots.diameter_px or spots.diameter_um / float(self.session.section.mpp)
            pad = diameter * np.abs(np.asarray(scale))
        world = np.array(ends, dtype=float)
        lo, hi = world.min(axis=0) - pad, world.max(axis=0) + pad
        self._fitted = True
        camera = self.viewer.scene.camera
        panel = np.asarray(self.viewer.canvas.viewbox_size(self.viewer.layers), dtype=float)
        zoom = float((1 - margin) * np.min(panel / np.maximum(hi - lo, 1e-9)))
        camera.center = tuple(self._inside_slide((lo + hi) / 2, panel / zoom))
        camera.zoom = zoom

    def _inside_slide(self, centre: np.ndarray, shown: np.ndarray) -> np.ndarray:
        """Move the view's centre so the view stays on the slide where the slide is larger than
        the view, and centre the slide where it is smaller (the spots, inside the slide, stay in
        view): no lopsided band of empty canvas beside the tissue."""
        extent = np.asarray(self.slide_layer.extent.world, dtype=float)[:, -2:]
        lo, hi = extent.min(axis=0), extent.max(axis=0)
        half = shown / 2
        room = (hi - lo) > shown
        clamped = np.clip(centre, lo + half, hi - half)
        return np.where(room, clamped, (lo + hi) / 2)

    def _known_spots(self) -> Any:
        """The section's spots when reading them is cheap (a dataset), else None (a lattice
        needs tissue detection: not on the GUI thread)."""
        section = self.session.section
        if self.session.source.section is None and "spots" not in vars(section):
            return None
        try:
            return section.spots
        except Exception:  # noqa: BLE001 - a view fit is never worth an error
            return None

    def fit_once(self) -> None:
        """Fit the view to the tissue's spots the first time they are known (slides open with
        the tissue filling a fraction of the canvas)."""
        if not self._fitted and not self.grid and (
                self.layer(MEASURED) is not None or self._known_spots() is not None):
            self.fit_to_spots()

    # -- measured ↔ predicted -----------------------------------------------------------------
    def flip(self) -> str | None:
        """Show predicted where measured was shown and back; returns the role now shown."""
        measured, predicted = self.layer(MEASURED), self.layer(PREDICTED)
        if measured is None or predicted is None:
            return None
        show_predicted = not predicted.visible or measured.visible
        predicted.visible, measured.visible = show_predicted, not show_predicted
        self._update_colorbars()
        return PREDICTED if show_predicted else MEASURED

    # -- field of view -------------------------------------------------------------------------
    def area_layer(self) -> Any:
        if self._area is not None and self._area not in self.viewer.layers:
            self._area = None
        return self._area

    def show_predicted_area(self, box: Any) -> None:
        """Outline the field of view a prediction covered (``box`` in level-0 pixels; None:
        every spot was predicted, nothing to outline)."""
        area = self.area_layer()
        if box is None:
            if area is not None:
                self.viewer.layers.remove(area)
                self._area = None
            return
        from napari.layers import Shapes

        corners = np.array([[box.y0, box.x0], [box.y0, box.x1], [box.y1, box.x1], [box.y1, box.x0]])
        width = 0.006 * max(box.x1 - box.x0, box.y1 - box.y0)
        if area is None:
            scale, translate, units = self._pixel_frame()
            area = Shapes([corners], shape_type="rectangle", edge_color=AREA_COLOR,
                          face_color="transparent", edge_width=width, scale=scale,
                          translate=translate, units=units,
                          name=f"{self.session.section.name} · {AREA}",
                          metadata={META_KEY: {"role": AREA}})
            self.viewer.add_layer(area)
            self._area = area
        else:
            area.data = [corners]
            area.edge_width = [width]
            area.edge_color = AREA_COLOR
        area.visible = not self.grid
        self._area_hidden_by_grid = self.grid

    def _add_twin(self) -> Any:
        from napari.layers import Image

        slide = self.slide_layer
        twin = Image(slide.data, rgb=slide.rgb, multiscale=slide.multiscale, scale=slide.scale,
                     translate=slide.translate, units=slide.units, name=f"{slide.name} [twin]",
                     metadata={META_KEY: {"role": TWIN}})
        self.viewer.add_layer(twin)
        return twin

    def _drop_twins(self, keep: int) -> None:
        while len(self._twins) > max(keep, 0):
            twin = self._twins.pop()
            if twin in self.viewer.layers:
                self.viewer.layers.remove(twin)
