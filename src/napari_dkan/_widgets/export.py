"""Writing predictions: ``.h5ad`` as the engine writes it, ``.csv``, or SpatialData ``.zarr``
(no Qt).

``.h5ad`` files come from :func:`napari_dkan.engine.predict.to_anndata` (spots in ``obs``, the
panel in ``var``, predictions in ``X``, measured values in ``layers["measured"]`` when known,
``obsm["spatial"]``, the model's summary in ``uns``), with Space Ranger-style hires and lowres
images and scale factors in ``uns["spatial"][section]`` when the section has its slide, so
scanpy, squidpy and this plugin's reader open and plot them.  ``.csv`` files hold one row per
spot: id, array row/col, level-0 pixel x/y, then one column per gene.  ``.zarr`` is a
SpatialData store (:mod:`napari_dkan.io.spatialdata_export`; needs the ``spatialdata`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dkan._widgets.expression import SPOT_ID, Expression, gene_columns
from napari_dkan._widgets.session import SpotSession
from napari_dkan._widgets.sources import META_KEY, SectionSource
from napari_dkan.io.errors import DataError
from napari_dkan.storage import anndata_size_hint, atomic_write

if TYPE_CHECKING:
    import pandas as pd

SUFFIXES = (".h5ad", ".csv", ".zarr")


def write_predictions(session: SpotSession, path: str | Path) -> Path:
    """Write the session's prediction to ``path`` (``.h5ad`` or ``.csv``); returns the path."""
    path = Path(path)
    kind = _kind(path)
    adata = session.to_anndata()
    if kind == ".zarr":
        from napari_dkan.io.spatialdata_export import write_spatialdata

        path.parent.mkdir(parents=True, exist_ok=True)
        return write_spatialdata(path, adata, session.section)
    if kind == ".h5ad":
        if session.section.has_image:
            from napari_dkan.io.spatial_images import add_spatial_images

            add_spatial_images(adata, session.section)
        atomic_write(path, adata.write_h5ad, anndata_size_hint(adata))
    else:
        atomic_write(path, predictions_frame(adata).to_csv)
    return path


def predictions_frame(adata: Any) -> pd.DataFrame:
    """Spots × (position columns, genes) from an engine AnnData."""
    import pandas as pd

    values = pd.DataFrame(np.asarray(adata.X), index=adata.obs_names, columns=adata.var_names)
    frame = pd.concat([adata.obs[["array_row", "array_col", "x", "y"]], values], axis=1)
    frame.index.name = SPOT_ID
    return frame


def write_points_layer(path: str | Path, data: np.ndarray, meta: dict[str, Any]) -> Path:
    """The napari writer's work: a points layer of this plugin (or any with a spot_id) to a file.

    ``.csv`` needs only the layer: its positions and features.  ``.h5ad`` is for predictions: it
    reopens the model and the section named in the layer's metadata, so the file carries the
    same provenance as the dock's export.
    """
    path = Path(path)
    kind = _kind(path)
    features = meta.get("features")
    info = (meta.get("metadata") or {}).get(META_KEY, {})
    if features is None or len(features.columns) == 0:
        raise DataError("this points layer has no per-spot values to write")
    genes = gene_columns(features)
    values = features[genes].to_numpy(dtype=np.float32, na_value=np.nan)
    rows = np.flatnonzero(np.isfinite(values).any(axis=1))  # spots that carry a value
    if kind == ".csv":
        import pandas as pd

        ids = features[SPOT_ID].to_numpy(str) if SPOT_ID in features else np.arange(len(data)).astype(str)
        frame = pd.DataFrame({"x": data[rows, -1], "y": data[rows, -2]},
                             index=pd.Index(ids[rows], name=SPOT_ID))
        frame = pd.concat([frame, pd.DataFrame(values[rows], index=frame.index, columns=genes)], axis=1)
        atomic_write(path, frame.to_csv)
        return path
    if info.get("role") != "predicted" or "model" not in info or "source" not in info:
        raise DataError(
            ".h5ad export is for predicted layers made by the DKAN dock (it needs their model "
            "and section); save this layer as .csv instead"
        )
    from napari_dkan.engine.runs import TrainedModel

    source = SectionSource.from_metadata(info["source"])
    session = SpotSession(source, source.open())
    model = TrainedModel.load(info["model"])
    if list(model.panel) != genes:
        raise DataError(f"the layer's genes do not match the panel of the model in {info['model']}")
    session.set_model(model, measured=None)
    session.set_prediction(Expression(tuple(genes), values[rows], rows, info.get("space", "")))
    return write_predictions(session, path)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"cannot write {path.name}: choose a .h5ad, .csv or .zarr (SpatialData) "
                        "file name")
    return suffix
