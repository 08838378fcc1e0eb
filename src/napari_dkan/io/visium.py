"""10x Visium Space Ranger output folders (Space Ranger 1.x, 2.x and 3.x).

What is read, from the ``outs`` folder (or the folder itself when it holds these directly)::

    filtered_feature_bc_matrix.h5        counts of the spots under tissue
    spatial/tissue_positions_list.csv    1.x: no header
    spatial/tissue_positions.csv         2.x: header
    spatial/tissue_positions.parquet     3.x
    spatial/scalefactors_json.json       spot diameter in full-resolution pixels

Position columns (all versions): barcode, in_tissue, array_row, array_col,
pxl_row_in_fullres, pxl_col_in_fullres.  Space Ranger does not copy the full-resolution image
it was given (``--image``) into its outputs, so it is passed separately; without it the
section can be inspected but not used for features, prediction or training.

Visium spots are 55 µm across, 100 µm apart on a hexagonal grid: neighbours of (r, c) are
(r, c±2) and (r±1, c±1), one column step is 50 µm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_dkan.io.counts import Counts, read_10x_h5
from napari_dkan.io.dataset import Dataset, Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.gene_names import symbolise
from napari_dkan.io.preview import Preview, pick_preview
from napari_dkan.io.spots import GridLayout, SpotTable

VISIUM_PITCH_UM = 100.0
VISIUM_DIAMETER_UM = 55.0
#: Space Ranger's ``spot_diameter_fullres`` spans "a theoretical 65 µm spot" (10x's definition),
#: wider than the 55 µm capture spot: its scale is 65 µm per that many pixels
SPACERANGER_SPOT_UM = 65.0
_POSITION_FILES = ("tissue_positions.parquet", "tissue_positions.csv", "tissue_positions_list.csv")
_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
_MATRICES = ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5")
IMAGE_HINT = (
    "Space Ranger does not copy the full-resolution image into its outputs: pass the image "
    "given to Space Ranger's --image (e.g. --image SLIDE.tif, image= in Python)."
)


def true_diameter_px(spot_diameter_fullres: float | None) -> float | None:
    """The 55 µm capture spot in pixels, from Space Ranger's 65 µm ``spot_diameter_fullres``."""
    if not spot_diameter_fullres:
        return None
    return float(spot_diameter_fullres) * VISIUM_DIAMETER_UM / SPACERANGER_SPOT_UM


def spaceranger_diameter(diameter_px: float) -> float:
    """Space Ranger's ``spot_diameter_fullres`` (65 µm) for a 55 µm spot ``diameter_px`` wide."""
    return float(diameter_px) * SPACERANGER_SPOT_UM / VISIUM_DIAMETER_UM


def find_spaceranger_outs(path: Path) -> Path | None:
    """The folder holding ``spatial/`` positions: ``path`` itself or ``path/outs``."""
    for cand in (path, path / "outs"):
        if any((cand / "spatial" / f).is_file() for f in _POSITION_FILES):
            return cand
    return None


def read_visium_dataset(path: Path, image: str | Path | None = None) -> Dataset:
    outs = find_spaceranger_outs(path)
    if outs is None:
        raise DataError(
            f"{path} is not a Space Ranger output folder: no spatial/tissue_positions"
            "(.csv|.parquet|_list.csv) found in it or in its outs/ folder"
        )
    section = read_visium_section(outs, image=image, name=path.name)
    return Dataset(name=path.name, root=path, kind="visium", sections=[section])


def read_visium_section(outs: Path, image: str | Path | None = None, name: str | None = None) -> Section:
    name = name or outs.name
    image_path = None
    if image is not None:
        image_path = Path(image).expanduser()
        if not image_path.is_file():
            raise DataError(f"full-resolution image not found: {image_path}")
    matrix = next((outs / m for m in _MATRICES if (outs / m).is_file()), None)

    def load_spots() -> SpotTable:
        positions = read_tissue_positions(outs / "spatial")
        diameter = read_scalefactors(outs / "spatial").get("spot_diameter_fullres")
        if matrix is not None:
            barcodes = read_10x_h5(matrix).spot_id
            known = set(positions["barcode"])
            orphans = [b for b in barcodes if b not in known]
            if orphans:
                raise DataError(
                    f"{len(orphans)} barcode(s) of {matrix.name} have no row in the tissue "
                    f"positions, e.g. {', '.join(orphans[:3])}: the matrix and spatial/ folder "
                    "come from different runs"
                )
            positions = positions.set_index("barcode", drop=False).loc[list(barcodes)]
        else:
            positions = positions[positions["in_tissue"] == 1]
        return SpotTable(
            spot_id=positions["barcode"].to_numpy(str),
            array_row=positions["array_row"].to_numpy(),
            array_col=positions["array_col"].to_numpy(),
            x=positions["pxl_col_in_fullres"].to_numpy(float),
            y=positions["pxl_row_in_fullres"].to_numpy(float),
            in_tissue=positions["in_tissue"].to_numpy() == 1,
            diameter_px=true_diameter_px(diameter),
            layout=GridLayout.HEX,
            pitch_um=VISIUM_PITCH_UM,
            diameter_um=VISIUM_DIAMETER_UM,
            source=str(outs),
        )

    notes: list[str] = []
    spatial = outs / "spatial"
    pngs = [f.name for f in sorted(spatial.glob("tissue_*_image.png"))]
    if pngs and not (spatial / "scalefactors_json.json").is_file():
        notes.append(
            f"{spatial / 'scalefactors_json.json'} is missing: {' and '.join(pngs)} cannot be "
            "placed under the spots, so no image is shown, and the spot size comes from the "
            "spot pitch; copy the file from the Space Ranger output"
        )

    def load_counts() -> Counts:
        counts, found = symbolise(read_10x_h5(matrix), matrix.name)
        notes.extend(n for n in found if n not in notes)
        return counts

    def load_preview() -> Preview | None:
        preview = low_res_image(spatial)
        if preview is not None and preview.note and preview.note not in notes:
            notes.append(preview.note)
        return preview

    diameter = read_scalefactors(spatial).get("spot_diameter_fullres")
    return Section(
        name=name,
        patient=name,
        image_path=image_path,
        mpp_hint=SPACERANGER_SPOT_UM / diameter if diameter else None,
        load_spots=load_spots,
        load_counts=load_counts if matrix is not None else None,
        dataset=name,
        missing_image_hint=IMAGE_HINT,
        load_preview=load_preview,
        notes=notes,
    )


def read_tissue_positions(spatial: Path):  # noqa: ANN201 - a pandas DataFrame
    """Spot positions from whichever Space Ranger version wrote ``spatial``."""
    import pandas as pd

    for fname in _POSITION_FILES:
        f = spatial / fname
        if not f.is_file():
            continue
        try:
            if f.suffix == ".parquet":
                frame = pd.read_parquet(f)
            elif fname == "tissue_positions_list.csv":
                frame = pd.read_csv(f, header=None)
                if frame.shape[1] != len(_COLUMNS):
                    raise DataError(f"{f} has {frame.shape[1]} columns, expected {len(_COLUMNS)}")
                frame.columns = _COLUMNS
            else:
                frame = pd.read_csv(f)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types
            raise DataError(f"cannot read spot positions {f}: {exc}") from exc
        missing = [c for c in _COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{f} lacks column(s) {missing}")
        frame = frame[_COLUMNS].copy()
        frame["barcode"] = frame["barcode"].astype(str)
        for col in _COLUMNS[1:]:
            if not pd.api.types.is_numeric_dtype(frame[col]):
                raise DataError(f"{f}: column {col!r} is not numeric")
        return frame
    raise DataError(f"no tissue positions file in {spatial} (expected one of {', '.join(_POSITION_FILES)})")


def read_scalefactors(spatial: Path) -> dict[str, float]:
    f = spatial / "scalefactors_json.json"
    if not f.is_file():
        return {}
    try:
        return {k: float(v) for k, v in json.loads(f.read_text()).items() if isinstance(v, (int, float))}
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {f}: {exc}") from exc


def low_res_image(spatial: Path) -> Preview | None:
    """Space Ranger's hires PNG, else its lowres PNG (whichever has content), with its scale."""
    from PIL import Image

    factors = read_scalefactors(spatial)

    def candidates():  # noqa: ANN202 - a generator of (kind, image, scale)
        for kind in ("hires", "lowres"):
            f = spatial / f"tissue_{kind}_image.png"
            if f.is_file():
                try:
                    with Image.open(f) as im:
                        image = np.asarray(im.convert("RGBA"))
                except OSError as exc:
                    raise DataError(f"cannot read {f}: {exc}") from exc
                yield kind, image, factors.get(f"tissue_{kind}_scalef")

    return pick_preview(candidates())
