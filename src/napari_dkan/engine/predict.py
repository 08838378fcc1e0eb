"""Prediction for a section or a spot lattice, written as AnnData.

``obs``: one row per spot (array row/col, full-resolution pixel x/y, in-tissue flag);
``obsm["spatial"]``: (x, y) pixel centres, the scanpy convention; ``var``: the model's gene
panel; ``X``: predictions in the training target space (log10(1 + 10⁴·x/Σ) over the panel,
grid-smoothed when the model was trained on smoothed targets); ``uns["napari_dkan"]``: the
model's config summary; ``uns["spatial"][section]``: spot diameter and image path, so scanpy /
squidpy and this plugin can draw the spots.  When the section has measured counts, their
targets are stored in ``layers["measured"]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from napari_dkan.engine.runs import TrainedModel
from napari_dkan.io.dataset import Section
from napari_dkan.progress import CancelToken


def predict_section(
    model: TrainedModel,
    section: Section,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    cancel: CancelToken | None = None,
    runtime: str = "auto",
) -> Any:
    """An AnnData of the model's predictions for every spot of ``section``.

    ``runtime`` runs the image encoder (see :mod:`napari_dkan.features.runtimes`)."""
    feats_cb = (lambda d, t: progress("features", d, t)) if progress else None
    pred_cb = (lambda d, t: progress("predicting", d, t)) if progress else None
    data = model.section_data(section, with_targets=section.has_counts, progress=feats_cb,
                              cancel=cancel, device=device, runtime=runtime)
    pred = model.predict(data, device=device, progress=pred_cb, cancel=cancel)
    return to_anndata(model, section, pred, measured=data.y)


def to_anndata(model: TrainedModel, section: Section, pred: np.ndarray,
               measured: np.ndarray | None = None, spot_index: np.ndarray | None = None) -> Any:
    import anndata
    import pandas as pd

    spots = section.spots if spot_index is None else section.spots.subset(spot_index)
    obs = pd.DataFrame(
        {"array_row": spots.array_row, "array_col": spots.array_col, "x": spots.x, "y": spots.y,
         "in_tissue": spots.in_tissue.astype(np.int8)},
        index=pd.Index(spots.spot_id, name="spot_id"),
    )
    adata = anndata.AnnData(
        X=np.asarray(pred, dtype=np.float32), obs=obs,
        var=pd.DataFrame(index=pd.Index(model.panel, name="gene")),
        obsm={"spatial": spots.xy},
    )
    if measured is not None:
        adata.layers["measured"] = np.asarray(measured, dtype=np.float32)
    spatial: dict[str, Any] = {"scalefactors": {}, "metadata": {}}
    if spots.diameter_px is not None:
        spatial["scalefactors"]["spot_diameter_fullres"] = float(spots.diameter_px)
    if section.image_path is not None:
        spatial["metadata"]["source_image_path"] = str(section.image_path)
    try:
        spatial["mpp"] = float(section.mpp)
    except Exception:  # noqa: BLE001 - an unknown scale only costs the µm display
        pass
    adata.uns["spatial"] = {section.name: spatial}
    adata.uns["napari_dkan"] = {
        "model": json.dumps(model.describe()),
        "target_space": model.config["target"]["normalisation"],
        "smoothing": model.smoothing,
        "protocol": model.protocol,
        "section": section.name,
    }
    return adata
