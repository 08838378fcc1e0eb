"""napari writer: points layers of this plugin to ``.h5ad`` (predictions) or ``.csv``.

The work is in :mod:`napari_dkan._widgets.export`; this module stays import-light because
napari imports it when it lists writers.

napari swallows a writer's ``ValueError`` (our :class:`~napari_dkan.io.errors.DataError` is one)
and tells the user only that the plugin "is not a valid writer", so the reason is shown here as
a napari error notification, and the writer returns no paths.
"""

from __future__ import annotations

from typing import Any


def write_points(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: returns the written path (napari's contract), or [] on failure."""
    from napari.utils.notifications import show_error, show_info

    from napari_dkan._widgets.export import write_points_layer
    from napari_dkan.io.errors import DataError

    try:
        written = write_points_layer(path, data, meta)
    except (DataError, OSError) as exc:
        show_error(f"napari-dkan could not save {meta.get('name') or 'the layer'} as {path}: {exc}")
        return []
    show_info(f"napari-dkan wrote {written}")
    return [str(written)]
