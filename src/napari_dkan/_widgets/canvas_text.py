"""Text drawn on the canvas with a layer: panel titles ("ERBB2 · measured") and colorbar titles.

napari 0.9 has a text overlay for the whole canvas (one text, repeated in every grid panel) and
a layer-name overlay (the layer's name, nothing else), but no layer overlay with free text, and
its colorbar has no title.  :class:`LayerTextOverlay` is that missing overlay: it lives in a
layer's overlays, so napari draws it in the layer's own grid panel, hides it with the layer and
stacks it with the layer's other overlays in the same corner (a title above the colorbar).  Its
visual is registered in napari's overlay table the first time this module is imported; that
table is private API, so :func:`set_layer_text` returns False (and draws nothing) where napari
changed it, rather than failing the dock.
"""

from __future__ import annotations

from typing import Any

from napari.components.overlays import TextOverlay

_REGISTERED: list[bool] = []


class LayerTextOverlay(TextOverlay):
    """Free text in a layer's grid panel (see the module docstring)."""


def _register() -> bool:
    if _REGISTERED:
        return _REGISTERED[0]
    try:
        from napari._vispy.overlays.text import _VispyLayerTextOverlay
        from napari._vispy.utils.visual import overlay_to_visual

        class VispyLayerText(_VispyLayerTextOverlay):
            overlay: LayerTextOverlay

            def _connect_events(self) -> None:
                self.overlay.events.text.connect(self._on_text_change)

            def _on_text_change(self) -> None:
                self.node.text = self.overlay.text
                self._on_position_change()

        overlay_to_visual[LayerTextOverlay] = VispyLayerText
        _REGISTERED.append(True)
    except (ImportError, AttributeError, TypeError):  # a napari whose overlay internals moved
        _REGISTERED.append(False)
    return _REGISTERED[0]


def set_layer_text(layer: Any, key: str, text: str, *, visible: bool = True,
                   position: str = "top_left", font_size: float = 12) -> bool:
    """Show ``text`` in ``layer``'s panel (one overlay per ``key``); False when unsupported."""
    if not _register():
        return False
    overlays = layer._overlays
    overlay = overlays.get(key)
    if overlay is None:
        overlay = LayerTextOverlay(text=text, position=position, font_size=font_size,
                                   visible=visible and bool(text), box=True)
        overlays[key] = overlay
        return True
    overlay.text = text
    overlay.visible = visible and bool(text)
    return True


def layer_text(layer: Any, key: str) -> str | None:
    """The text the layer's ``key`` overlay shows, or None when it is absent or hidden."""
    overlay = getattr(layer, "_overlays", {}).get(key)
    if overlay is None or not overlay.visible:
        return None
    return overlay.text
