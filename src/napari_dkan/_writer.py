"""napari writer: points layers of this plugin to ``.h5ad`` (predictions) or ``.csv``.

The work is in :mod:`napari_dkan._widgets.export`; this module stays import-light because
napari imports it when it lists writers.
"""

from __future__ import annotations

from typing import Any


def write_points(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: returns the written path (napari's contract)."""
    from napari.utils.notifications import show_info

    from napari_dkan._widgets.export import write_points_layer

    written = write_points_layer(path, data, meta)
    show_info(f"napari-dkan wrote {written}")
    return [str(written)]
