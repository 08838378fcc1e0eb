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
from napari_dkan.io.visium import SPACERANGER_SPOT_UM, true_diameter_px

DEFAULT_PITCH_UM = 100.0
DEFAULT_DIAMETER_UM = 55.0


def read_h5ad_dataset(path: Path, image: str | Path | None = None) -> Dataset:
    import anndata

    try:
        adata = anndata.read_h5ad(path)
    except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many types for bad files
        raise DataError(f"{path.name} is not a readable .h5ad file: {exc}") from exc
    if adata.n_obs == 0:
        raise DataError(f"{path.name} holds no spots (0 observations): there is nothing to show "
                        "or predict on")
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
    own = is_prediction_file(adata)
    sections = []
    for lib, rows in groups:
        sub = adata[rows]
        meta = libraries.get(lib, {}) or {}
        sections.append(_section(path, lib, sub, meta, image, with_counts=not own))
    kind = "napari-dkan predictions" if own else "anndata"
    return Dataset(name=path.stem, root=path, kind=kind, sections=sections)


def is_prediction_file(adata: Any) -> bool:
    """An ``.h5ad`` written by napari-dkan's predict or export: X holds predictions, not counts."""
    info = adata.uns.get("napari_dkan") if hasattr(adata, "uns") else None
    return isinstance(info, dict) and "model" in info


def _section(path: Path, lib: str, adata: Any, meta: dict, image: str | Path | None,
             with_counts: bool = True) -> Section:
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise DataError(f"{path.name}: obsm['spatial'] must be N×2 (x, y), got {xy.shape}")
    obs = adata.obs
    notes: list[str] = []
    scalefactors = meta.get("scalefactors", {}) or {}
    diameter = scalefactors.get("spot_diameter_fullres")
    metadata = meta.get("metadata") or {}
    visium = _is_visium(scalefactors, metadata)
    if {"array_row", "array_col"} <= set(obs.columns):
        row, col = obs["array_row"].to_numpy(int), obs["array_col"].to_numpy(int)
        hexagonal = len(row) > 0 and np.unique((row + col) % 2).size == 1 and np.unique(col % 2).size == 2
        layout = GridLayout.HEX if hexagonal or (visium and len(row) < 3) else GridLayout.SQUARE
    elif visium and diameter:
        row, col = _hex_grid(xy, float(diameter) * DEFAULT_PITCH_UM / SPACERANGER_SPOT_UM)
        layout = GridLayout.HEX
        notes.append(f"{path.name}: no obs array_row/array_col; the Visium grid was inferred from "
                     "the spot positions")
    else:
        row, col = _infer_grid(xy)
        layout = GridLayout.SQUARE
    image_path = Path(image).expanduser() if image is not None else None
    source_image = metadata.get("source_image_path")
    if image_path is None and source_image and Path(str(source_image)).is_file():
        image_path = Path(str(source_image))
    if image_path is not None and not image_path.is_file():
        raise DataError(f"full-resolution image not found: {image_path}")
    pitch = DEFAULT_PITCH_UM if layout is GridLayout.HEX else float(meta.get("pitch_um", 200.0))
    diameter_um = DEFAULT_DIAMETER_UM if layout is GridLayout.HEX else float(meta.get("diameter_um", 100.0))
    if visium and diameter and layout is GridLayout.HEX:
        # Space Ranger's convention: spot_diameter_fullres spans 65 µm, the capture spot 55
        mpp_from_diameter = SPACERANGER_SPOT_UM / float(diameter)
        diameter = true_diameter_px(diameter)
    else:
        mpp_from_diameter = diameter_um / float(diameter) if diameter else None
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
    load_counts = _counts_loader(adata, f"{path.name}[{lib}]", notes) if with_counts else None
    patient = str(obs["patient"].iloc[0]) if "patient" in obs and len(obs) else lib
    mpp = meta.get("mpp") or metadata.get("mpp")
    if not mpp:
        # the spot diameter is known in µm and in pixels: that is the scale
        mpp = mpp_from_diameter
    images = meta.get("images") or {}
    if images and not scalefactors:
        notes.append(f"{path.name}: uns['spatial'][{lib!r}] has images ({', '.join(images)}) but "
                     "no scalefactors, so they cannot be placed under the spots and are not shown")
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
        load_preview=(lambda: _uns_preview(images, scalefactors, notes)) if images else None,
        notes=notes,
    )


def _counts_loader(adata: Any, source: str, notes: list[str]) -> Any:
    from napari_dkan.io.anndata_counts import count_matrix
    from napari_dkan.io.gene_names import symbolise

    try:
        matrix, genes, found = count_matrix(adata, source)
    except DataError as exc:  # spots and image stay usable for prediction
        notes.append(f"{exc}; the section opens without measured expression")
        return None
    counts, more = symbolise(Counts(matrix, genes, adata.obs.index.to_numpy(str), source=source), source)
    notes.extend(n for n in [*found, *more] if n not in notes)
    return lambda: counts


def _uns_preview(images: dict[str, Any], scalefactors: dict[str, Any], notes: list[str]) -> Any:
    from napari_dkan.io.preview import pick_preview

    preview = pick_preview((kind, np.asarray(images[kind]), scalefactors.get(f"tissue_{kind}_scalef"))
                           for kind in ("hires", "lowres") if kind in images)
    if preview is not None and preview.note and preview.note not in notes:
        notes.append(preview.note)
    return preview


def _is_visium(scalefactors: dict[str, Any], metadata: dict[str, Any]) -> bool:
    """Space Ranger wrote it: its scale factors or its software version say so."""
    version = str(metadata.get("software_version", ""))
    return (any(k in scalefactors for k in ("tissue_hires_scalef", "fiducial_diameter_fullres"))
            or version.startswith("spaceranger"))


def _hex_grid(xy: np.ndarray, pitch_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Visium (row, col) from positions on an axis-aligned hexagonal grid of known pitch.

    Relative to the top spot (row 0, col 0): rows are pitch·√3/2 apart, columns half a pitch,
    and a column has its row's parity (Visium's (r, c±2), (r±1, c±1) neighbours).
    """
    ref = int(np.lexsort((xy[:, 0], xy[:, 1]))[0])
    row = np.round((xy[:, 1] - xy[ref, 1]) / (pitch_px * np.sqrt(3) / 2)).astype(int)
    half = (xy[:, 0] - xy[ref, 0]) / (pitch_px / 2)
    col = np.round(half).astype(int)
    wrong = (col - row) % 2 == 1
    col[wrong] += np.where(half[wrong] >= col[wrong], 1, -1)
    col -= 2 * (col.min() // 2)  # non-negative, parity kept
    return row - row.min(), col


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
