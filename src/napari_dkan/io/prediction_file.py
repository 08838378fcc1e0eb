"""Reading back the ``.h5ad`` files napari-dkan writes (``predict``, the dock's export).

Their ``X`` holds predictions in the model's target space (log10(1 + 10⁴·x/Σ), possibly negative
for a regression model), not counts; ``layers["measured"]`` the measured targets of the same
spots, ``layers["lower"]`` / ``["upper"]`` interval bounds when the model gives them, and
``uns["napari_dkan"]`` the model's summary.  Read as a count matrix, such a file fails ("counts
must be non-negative") or shows predictions as measured; :func:`read_prediction_file` keeps each
value for what it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.dataset import Section
from napari_dkan.io.errors import DataError


@dataclass(eq=False)
class PredictionFile:
    """One section's saved prediction: values are spots × genes in the section's spot order."""

    path: Path
    section: Section
    genes: tuple[str, ...]
    predicted: np.ndarray
    measured: np.ndarray | None
    lower: np.ndarray | None
    upper: np.ndarray | None
    #: the model's summary as saved (``TrainedModel.describe()``): run folder, model, panel size
    model: dict[str, Any]
    #: the target space in words, e.g. "log10(1 + 10^4 x / panel total)"
    space: str

    @property
    def run_dir(self) -> str | None:
        """The model's run folder when it still exists here (to predict again or export)."""
        run = self.model.get("run")
        return str(run) if run and Path(str(run)).exists() else None


def read_prediction_file(path: str | Path) -> PredictionFile:
    import anndata

    from napari_dkan.io.anndata_io import is_prediction_file, read_h5ad_dataset

    p = Path(path).expanduser()
    try:
        adata = anndata.read_h5ad(p)
    except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many types for bad files
        raise DataError(f"{p.name} is not a readable .h5ad file: {exc}") from exc
    if not is_prediction_file(adata):
        raise DataError(f"{p.name} is not a napari-dkan prediction file (no uns['napari_dkan'])")
    dataset = read_h5ad_dataset(p)
    if len(dataset) != 1:
        raise DataError(f"{p.name} holds {len(dataset)} sections; a prediction file holds one")
    info = adata.uns["napari_dkan"]
    try:
        model = json.loads(info["model"]) if isinstance(info["model"], str) else dict(info["model"])
    except (TypeError, ValueError):
        model = {}

    def layer(name: str) -> np.ndarray | None:
        return np.asarray(adata.layers[name], dtype=np.float32) if name in adata.layers else None

    smoothing = bool(info.get("smoothing", False))
    space = str(info.get("target_space", ""))
    return PredictionFile(
        path=p.resolve(),
        section=dataset.sections[0],
        genes=tuple(adata.var_names.astype(str)),
        predicted=np.asarray(adata.X, dtype=np.float32),
        measured=layer("measured"),
        lower=layer("lower"),
        upper=layer("upper"),
        model=model,
        space=_space_words(space, smoothing),
    )


def _space_words(normalisation: str, smoothing: bool) -> str:
    # the words the dock uses (napari_dkan._widgets.expression.target_space) for the model's own
    words = ("log10(1 + 10^4 x / panel total)"
             if not normalisation or "panel total" in normalisation else normalisation)
    return words + (", grid-smoothed" if smoothing else "")
