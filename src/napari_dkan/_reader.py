"""napari reader: slides as multiscale RGB layers in µm; datasets as slide + measured spots.

napari calls :func:`napari_get_reader` for every path it is asked to open; it returns None
quietly (no exception, no message) for anything this plugin does not handle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

LayerData = tuple[Any, dict[str, Any], str]
_SLIDE_SUFFIXES = {
    ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
    ".tif", ".tiff", ".jpg", ".jpeg", ".png",
}


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        from napari_dkan.io.st_legacy import is_st_root
        from napari_dkan.io.visium import find_spaceranger_outs

        if is_st_root(p) or find_spaceranger_outs(p) is not None:
            return read_dataset
        return None
    if p.suffix.lower() == ".h5ad" and p.is_file():
        return read_dataset
    if p.suffix.lower() in _SLIDE_SUFFIXES and p.is_file():
        from napari_dkan.io.slides import is_slide_file

        return read_slide if is_slide_file(p) else None
    return None


def read_slide(path: str | list[str]) -> list[LayerData]:
    from napari_dkan.io.slides import open_slide

    p = Path(path[0] if isinstance(path, list) else path)
    slide = open_slide(p)
    return [slide_layer(slide)]


def slide_layer(slide: Any) -> LayerData:
    """A multiscale RGB image layer of a slide, scaled in µm when the scale is known."""
    meta = {
        "name": slide.name,
        "rgb": True,
        "multiscale": True,
        "scale": slide.layer_scale,
        "units": ("µm", "µm") if slide.mpp else ("pixel", "pixel"),
        "metadata": {"napari_dkan": {"path": str(slide.path), "mpp": slide.mpp}},
    }
    return (slide.pyramid(), meta, "image")


def read_dataset(path: str | list[str]) -> list[LayerData]:
    from napari_dkan.io.dataset import open_dataset

    p = Path(path[0] if isinstance(path, list) else path)
    ds = open_dataset(p)
    section = next((s for s in ds.sections if s.trainable), ds.sections[0])
    layers: list[LayerData] = []
    if section.has_image:
        layers.append(slide_layer(section.open_slide()))
    return layers
