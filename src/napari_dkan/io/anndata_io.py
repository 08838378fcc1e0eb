"""AnnData ``.h5ad`` files in the scanpy / squidpy spatial convention.

- ``obsm["spatial"]``: spot centres in full-resolution pixels, columns (x, y);
- ``obs["array_row"]``, ``obs["array_col"]``: capture-array coordinates (when absent they are
  inferred from the positions and the grid is treated as unknown-square);
- ``uns["spatial"][library_id]["scalefactors"]["spot_diameter_fullres"]``;
- ``uns["spatial"][library_id]["metadata"]["source_image_path"]``: the full-resolution image,
  when it still exists (else pass ``image=``);
- several libraries in one file are split by ``obs["library_id"]`` into sections; an
  ``obs["patient"]`` column, when present, names each section's patient.

Raw counts are taken from ``layers["counts"]`` when present, else from ``X``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.counts import Counts
from napari_dkan.io.dataset import Dataset, Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.spots import GridLayout, SpotTable

DEFAULT_PITCH_UM = 100.0
DEFAULT_DIAMETER_UM = 55.0


def read_h5ad_dataset(path: Path, image: str | Path | None = None) -> Dataset:
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many types for bad files
        raise DataError(f"{path.name} is not a readable .h5ad file: {exc}") from exc
    if "spatial" not in adata.obsm:
        raise DataError(
            f"{path.name} has no obsm['spatial'] (spot positions in full-resolution pixels); "
            "it is not a spatial transcriptomics AnnData"
        )
    libraries: dict[str, Any] = dict(adata.uns.get("spatial", {}) or {})
    if "library_id" in adata.obs and adata.obs["library_id"].nunique() > 1:
        groups = [(str(lib), np.flatnonzero((adata.obs["library_id"].astype(str) == str(lib)).to_numpy()))
                  for lib in adata.obs["library_id"].astype(str).unique()]
    else:
        lib = next(iter(libraries), path.stem)
        groups = [(str(lib), np.arange(adata.n_obs))]
    if image is not None and len(groups) > 1:
        raise DataError(f"{path.name} holds {len(groups)} libraries: give images per library, not one")
    sections = []
    for lib, rows in groups:
        sub = adata[rows]
        meta = libraries.get(lib, {}) or {}
        sections.append(_section(path, lib, sub, meta, image))
    return Dataset(name=path.stem, root=path, kind="anndata", sections=sections)


def _section(path: Path, lib: str, adata: Any, meta: dict, image: str | Path | None) -> Section:
    import scipy.sparse as sp

    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise DataError(f"{path.name}: obsm['spatial'] must be N×2 (x, y), got {xy.shape}")
    obs = adata.obs
    if {"array_row", "array_col"} <= set(obs.columns):
        row, col = obs["array_row"].to_numpy(int), obs["array_col"].to_numpy(int)
        hexagonal = len(row) > 0 and np.unique((row + col) % 2).size == 1 and np.unique(col % 2).size == 2
        layout = GridLayout.HEX if hexagonal else GridLayout.SQUARE
    else:
        row, col = _infer_grid(xy)
        layout = GridLayout.SQUARE
    scalefactors = meta.get("scalefactors", {}) or {}
    diameter = scalefactors.get("spot_diameter_fullres")
    image_path = Path(image).expanduser() if image is not None else None
    source_image = (meta.get("metadata", {}) or {}).get("source_image_path")
    if image_path is None and source_image and Path(str(source_image)).is_file():
        image_path = Path(str(source_image))
    if image_path is not None and not image_path.is_file():
        raise DataError(f"full-resolution image not found: {image_path}")
    pitch = DEFAULT_PITCH_UM if layout is GridLayout.HEX else float(meta.get("pitch_um", 200.0))
    diameter_um = DEFAULT_DIAMETER_UM if layout is GridLayout.HEX else float(meta.get("diameter_um", 100.0))
    spots = SpotTable(
        spot_id=obs.index.to_numpy(str),
        array_row=row,
        array_col=col,
        x=xy[:, 0],
        y=xy[:, 1],
        in_tissue=obs["in_tissue"].to_numpy() == 1 if "in_tissue" in obs else np.ones(len(obs), bool),
        diameter_px=float(diameter) if diameter else None,
        layout=layout,
        pitch_um=pitch,
        diameter_um=diameter_um,
        source=f"{path.name}[{lib}]",
    )
    matrix = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if matrix is None:
        load_counts = None
    else:
        m = sp.csr_matrix(matrix) if not isinstance(matrix, np.ndarray) else sp.csr_matrix(np.asarray(matrix))
        if m.nnz and (not np.isfinite(m.data).all()):
            raise DataError(f"{path.name}: the count matrix holds NaN or infinite values")
        counts = Counts(m, adata.var_names.to_numpy(str), obs.index.to_numpy(str))
        load_counts = lambda: counts  # noqa: E731
    patient = str(obs["patient"].iloc[0]) if "patient" in obs and len(obs) else lib
    metadata = meta.get("metadata") or {}
    mpp = meta.get("mpp") or metadata.get("mpp")
    return Section(
        name=lib,
        patient=patient,
        image_path=image_path,
        load_spots=lambda: spots,
        load_counts=load_counts,
        mpp_hint=float(mpp) if mpp else None,
        dataset=path.stem,
        missing_image_hint=(
            "Give the full-resolution image (image= / --image), or store its path in "
            "uns['spatial'][library]['metadata']['source_image_path']."
        ),
    )


def _infer_grid(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer grid coordinates from positions, using the nearest-neighbour spacing."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return np.zeros(len(xy), int), np.zeros(len(xy), int)
    d, _ = cKDTree(xy).query(xy, k=2)
    step = float(np.median(d[:, 1]))
    if step <= 0:
        raise DataError("spot positions coincide; cannot infer the array grid")
    origin = xy.min(axis=0)
    col = np.round((xy[:, 0] - origin[0]) / step).astype(int)
    row = np.round((xy[:, 1] - origin[1]) / step).astype(int)
    return row, col


def write_spatial_h5ad(
    path: Path,
    counts: Counts,
    spots: SpotTable,
    library_id: str,
    image_path: Path | None = None,
) -> None:
    """Write a section as a scanpy-convention ``.h5ad`` (used by tests and export)."""
    import anndata
    import pandas as pd

    obs = pd.DataFrame(
        {"array_row": spots.array_row, "array_col": spots.array_col, "in_tissue": spots.in_tissue.astype(int)},
        index=pd.Index(spots.spot_id, name="spot_id"),
    )
    meta: dict[str, Any] = {
        "scalefactors": {},
        "pitch_um": float(spots.pitch_um),
        "diameter_um": float(spots.diameter_um),
    }
    if spots.diameter_px is not None:
        meta["scalefactors"]["spot_diameter_fullres"] = float(spots.diameter_px)
    if image_path is not None:
        meta["metadata"] = {"source_image_path": str(image_path)}
    adata = anndata.AnnData(
        X=counts.matrix.copy(),
        obs=obs,
        var=pd.DataFrame(index=pd.Index(counts.genes, name="gene")),
        obsm={"spatial": spots.xy},
        uns={"spatial": {library_id: meta}},
    )
    from napari_dkan.storage import anndata_size_hint, atomic_write  # not at import time: a cycle

    atomic_write(Path(path), adata.write_h5ad, anndata_size_hint(adata))
