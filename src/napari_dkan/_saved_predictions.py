"""napari layers for a napari-dkan prediction file: slide, predicted and measured spots.

The predicted layer is marked ``saved`` (the file it came from): the dock leaves it alone when
a model makes its own predicted layer for the section, so a saved prediction is never replaced
by an empty one.  Both spot layers share colormap and contrast limits, as in the dock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan._reader import META_KEY, LayerData, low_res_layer, slide_layer


def saved_prediction_layers(path: Path) -> list[LayerData]:
    from napari.utils.notifications import show_info

    from napari_dkan._widgets.sources import SectionSource
    from napari_dkan.io.prediction_file import read_prediction_file

    saved = read_prediction_file(path)
    section = saved.section
    source = SectionSource(path=str(saved.path), section=section.name).to_metadata()
    layers: list[LayerData] = []
    if section.has_image:
        data, meta, kind = slide_layer(section.open_slide())
        meta["name"] = f"{section.name} · slide"
        meta["metadata"][META_KEY]["source"] = source
        layers.append((data, meta, kind))
    else:
        image = low_res_layer(section, source)
        if image is not None:
            layers.append(image)
    gene = saved.genes[0]
    both = saved.predicted[:, 0] if saved.measured is None else np.concatenate(
        [saved.predicted[:, 0], saved.measured[:, 0]])
    from napari_dkan._widgets.session import percentile_limits

    limits = percentile_limits(both, 1.0, 99.0)
    if saved.measured is not None:
        layers.append(_spots(saved, saved.measured, "measured", source, gene, limits))
    layers.append(_spots(saved, saved.predicted, "predicted", source, gene, limits))
    model = saved.model.get("model", "a model")
    show_info(f"{path.name}: predictions of {model} ({len(saved.genes)} genes) for "
              f"{section.name}" + ("" if saved.measured is None else ", with measured values")
              + ("; no image: its path is not stored or no longer exists" if not layers
                 or layers[0][2] != "image" else ""))
    for line in section.notes:
        show_info(f"{section.name}: {line}")
    return layers


def _spots(saved: Any, values: np.ndarray, role: str, source: dict[str, Any], gene: str,
           limits: tuple[float, float]) -> LayerData:
    from napari_dkan._widgets.expression import spot_features

    section = saved.section
    spots = section.spots
    mpp = float(section.mpp)
    diameter = spots.diameter_px or spots.diameter_um / mpp
    info: dict[str, Any] = {"role": role, "source": source, "gene": gene, "space": saved.space,
                            "saved": str(saved.path)}
    if role == "predicted" and saved.run_dir is not None:
        info["model"] = saved.run_dir  # lets the writer save it again as .h5ad
    meta = {
        "name": f"{section.name} · {role} (saved)",
        "features": spot_features(spots.spot_id, saved.genes, values),
        "face_color": gene,
        "face_colormap": "viridis",
        "face_contrast_limits": limits,
        "size": diameter,
        "border_width": 0,
        "opacity": 0.9,
        "scale": (mpp, mpp),
        "units": ("µm", "µm"),
        "visible": role == "predicted",
        "metadata": {META_KEY: info},
    }
    return np.column_stack([spots.y, spots.x]), meta, "points"
