"""Space Ranger-style images and scale factors for an AnnData, so scanpy and squidpy plot it.

``scanpy.pl.spatial`` draws ``uns["spatial"][library]["images"][img_key]`` under the spots,
placing them with ``scalefactors[f"tissue_{img_key}_scalef"]`` and sizing them with
``spot_diameter_fullres``.  Space Ranger writes a hires image (longest side 2,000 px) and a
lowres one (600 px); this writes the same from the section's slide.

``spot_diameter_fullres`` follows Space Ranger's convention on Visium-like hexagonal grids
(a "theoretical 65 µm spot", see :mod:`napari_dkan.io.visium`), so a file written here reads
back at the right scale; on legacy-ST grids it is the spot's true diameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_dkan.io.dataset import Section
from napari_dkan.io.spots import GridLayout
from napari_dkan.io.visium import VISIUM_PITCH_UM, spaceranger_diameter

HIRES_PX = 2000
LOWRES_PX = 600


def spatial_entry(section: Section) -> dict[str, Any]:
    """``uns["spatial"][library]`` for ``section``: images, scale factors, metadata, µm/px."""
    spots = section.spots
    slide = section.open_slide(check_spots=False)
    try:
        width, height = slide.dimensions
        hires, _ = slide.thumbnail(HIRES_PX)  # one read of the slide (a JPEG decodes whole)
    finally:
        slide.close()
    from PIL import Image

    hires = np.ascontiguousarray(np.asarray(hires)[..., :3], dtype=np.uint8)
    shrink = LOWRES_PX / max(hires.shape[:2])
    lowres = hires if shrink >= 1 else np.asarray(Image.fromarray(hires).resize(
        (max(1, round(hires.shape[1] * shrink)), max(1, round(hires.shape[0] * shrink))),
        Image.Resampling.BOX))
    images = {"hires": hires, "lowres": lowres}
    # each image's exact width gives its scale, whatever rounding made it
    factors = {f"tissue_{kind}_scalef": image.shape[1] / float(width) for kind, image in images.items()}
    mpp = float(section.mpp)
    diameter = spots.diameter_px or spots.diameter_um / mpp
    visium_like = spots.layout is GridLayout.HEX and spots.pitch_um == VISIUM_PITCH_UM
    factors["spot_diameter_fullres"] = spaceranger_diameter(diameter) if visium_like else float(diameter)
    return {
        "images": images,
        "scalefactors": factors,
        "metadata": {"source_image_path": str(section.require_image().resolve())},
        "mpp": mpp,
        "pitch_um": float(spots.pitch_um),
        "diameter_um": float(spots.diameter_um),
        "full_resolution_px": [int(width), int(height)],
    }


def add_spatial_images(adata: Any, section: Section) -> Any:
    """Put Space Ranger-style images and scale factors under ``uns["spatial"][section]``."""
    entry = spatial_entry(section)
    library = (adata.uns.get("spatial") or {}).get(section.name, {}) or {}
    library.update(entry)
    adata.uns["spatial"] = {**(adata.uns.get("spatial") or {}), section.name: library}
    return adata
