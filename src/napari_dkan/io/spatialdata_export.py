"""Predictions as a SpatialData store (``.zarr``), for the scverse tools (napari-spatialdata,
squidpy, spatialdata-plot).

The store holds, for section ``S``:

- ``images/S_image``: the slide as a multiscale image (c, y, x), level 0 at full resolution;
- ``shapes/S_spots``: the predicted spots as circles of their true radius (55 µm Visium, 100 µm
  legacy ST), indexed by spot id;
- ``tables/table``: the AnnData of the prediction annotating those circles — predictions in
  ``X``, measured values in ``layers["measured"]``, interval bounds in ``layers["lower"]`` /
  ``["upper"]`` when the model gives them, the model's summary in ``uns["napari_dkan"]``.

Two coordinate systems: ``global`` in full-resolution pixels (as spatialdata-io reads Space
Ranger output) and ``micrometres``.  ``spatialdata`` is an optional dependency (the
``spatialdata`` extra): it pins dask and distributed below the versions this package otherwise
takes, so it is not installed by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.dataset import Section
from napari_dkan.io.errors import DataError

INSTALL_HINT = "pip install 'napari-dkan[spatialdata]'"
#: successive downsampling factors of the image pyramid (level 0 is the slide itself)
PYRAMID = [2, 2, 2, 2]


def spatialdata_available() -> bool:
    from importlib.util import find_spec

    return find_spec("spatialdata") is not None


def write_spatialdata(path: str | Path, adata: Any, section: Section) -> Path:
    """Write the prediction ``adata`` of ``section`` as a SpatialData store at ``path``."""
    try:
        import spatialdata as sd
        from spatialdata.models import Image2DModel, ShapesModel, TableModel
        from spatialdata.transformations import Identity, Scale
    except ImportError as exc:
        raise DataError(f"SpatialData export needs the spatialdata package ({exc}): {INSTALL_HINT}") from exc
    path = Path(path)
    if path.exists():
        raise DataError(f"{path} already exists: SpatialData stores are folders and are not "
                        "overwritten; choose a new name or delete it")
    name = _element_name(section.name)
    mpp = float(section.mpp)
    frames = {"global": Identity(), "micrometres": Scale([mpp, mpp], axes=("x", "y"))}
    ids = adata.obs_names.to_numpy(str)
    spots = section.spots
    index = {s: i for i, s in enumerate(spots.spot_id)}
    rows = np.array([index[s] for s in ids], dtype=np.int64)
    diameter = spots.diameter_px or spots.diameter_um / mpp
    shapes = ShapesModel.parse(
        np.column_stack([spots.x[rows], spots.y[rows]]), geometry=0,
        radius=np.full(len(rows), diameter / 2.0), index=ids, transformations=frames)
    table = adata.copy()
    for library in (table.uns.get("spatial") or {}).values():
        if isinstance(library, dict):
            library.pop("images", None)  # the image lives in images/, not twice
    table.obs["region"] = f"{name}_spots"
    table.obs["region"] = table.obs["region"].astype("category")
    table.obs["spot_id"] = ids
    table = TableModel.parse(table, region=f"{name}_spots", region_key="region",
                             instance_key="spot_id")
    elements: dict[str, Any] = {"shapes": {f"{name}_spots": shapes}, "tables": {"table": table}}
    if section.has_image:
        elements["images"] = {f"{name}_image": _image(section, frames, Image2DModel)}
    sdata = sd.SpatialData(**elements)
    sdata.write(path)
    return path


def _image(section: Section, frames: dict[str, Any], model: Any) -> Any:
    """The slide's level 0 as (c, y, x), pyramided by spatialdata."""
    slide = section.open_slide(check_spots=False)
    level0 = slide.pyramid()[0]  # (y, x, c) dask array
    data = level0[..., :3].transpose(2, 0, 1)
    return model.parse(data, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                       scale_factors=PYRAMID, transformations=frames, chunks=(3, 1024, 1024))


def _element_name(section: str) -> str:
    """SpatialData element names allow letters, digits, '_', '-' and '.'."""
    clean = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in section)
    return clean or "section"
