"""napari's layer controls for gene-coloured spots: hide what is not true of them.

A Points layer's controls show the colour *new* points would get ("face color: white", "border
color") and a "display text" box.  For spots coloured by a gene through a colormap, those rows
describe nothing on the canvas, so they are hidden (the colormap and limits are set in the
dock, and the colorbar says what a colour means).  The controls are napari's private widgets
(``QtViewer.controls.widgets[layer]``); where they are not found, nothing is hidden.
"""

from __future__ import annotations

from typing import Any

#: attributes of napari 0.9's QtPointsControls whose rows do not apply to gene-coloured spots
HIDDEN_CONTROLS = ("_face_color_control", "_border_color_control", "_text_visibility_control")


def layer_controls(viewer: Any, layer: Any) -> Any:
    """napari's controls widget of ``layer`` (None without a Qt window)."""
    import warnings

    try:
        with warnings.catch_warnings():  # napari warns of private access; nothing public does this
            warnings.simplefilter("ignore", FutureWarning)
            return viewer.window._qt_viewer.controls.widgets.get(layer)
    except AttributeError:
        return None


def hide_colour_controls(viewer: Any, layer: Any) -> int:
    """Hide the rows that do not apply to gene-coloured spots; returns how many were hidden."""
    controls = layer_controls(viewer, layer)
    hidden = 0
    for name in HIDDEN_CONTROLS:
        control = getattr(controls, name, None)
        if control is None:
            continue
        try:
            rows = control.get_widget_controls()
        except (AttributeError, NotImplementedError):
            continue
        for row in rows:
            for widget in row:
                widget.setVisible(False)
        hidden += 1
    return hidden
