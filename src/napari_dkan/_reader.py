"""napari reader: slides as multiscale RGB layers in µm; spot datasets as slide + measured spots.

napari calls :func:`napari_get_reader` for every path it is asked to open; it returns None
quietly (no exception, no message) for anything this plugin does not handle.

What opens, and as what:

- a slide file (any OpenSlide format, JPEG/PNG/TIFF): one multiscale RGB layer in µm;
- one HER2ST (legacy-ST) section: its image folder ``ST-imgs/<patient>/<section>/`` or the
  image file in it → the slide plus a ``measured`` Points layer;
- a legacy-ST root (``ST-cnts/``, ``ST-spotfiles/``): its first section with an image, the
  same way (a notification says how to open another);
- a Space Ranger (Visium) output folder: the full-resolution image when the folder holds
  exactly one slide file (Space Ranger does not copy it there; put it beside ``spatial/``),
  else Space Ranger's hires PNG scaled onto the spots, plus the measured spots;
- an ``.h5ad`` file in the scanpy convention: its first library, image (the full-resolution one
  when its path is stored, else the hires or lowres image in ``uns["spatial"]``) and measured
  spots; a napari-dkan prediction file: its slide, predicted and measured layers, each for
  what it is (:mod:`napari_dkan._saved_predictions`).

What the reader had to assume or pass over (log-normalised counts, Ensembl ids, a blank image, a
missing scale-factor file…) is said in a notification per point.

The measured layer has one feature column per gene of the section's top-250 panel (its own
genes with the highest mean count, the paper's panel rule), in the model's target space without
smoothing: ``log10(1 + 10⁴·x/Σ_panel)``.  A model chosen in the dock recomputes it in the
model's panel and smoothing, so predicted and measured compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_dkan._widgets.sources import SectionSource
    from napari_dkan.io.dataset import Section

LayerData = tuple[Any, dict[str, Any], str]
_SLIDE_SUFFIXES = {
    ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
    ".tif", ".tiff", ".jpg", ".jpeg", ".png",
}
META_KEY = "napari_dkan"  # same as napari_dkan._widgets.sources.META_KEY (kept import-free)


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        from napari_dkan.io.st_legacy import is_st_root
        from napari_dkan.io.visium import find_spaceranger_outs

        if is_st_root(p) or find_spaceranger_outs(p) is not None or _st_section_of(p) is not None:
            return read_dataset
        return None
    if p.suffix.lower() == ".h5ad" and p.is_file():
        return read_dataset
    if p.suffix.lower() in _SLIDE_SUFFIXES and p.is_file():
        from napari_dkan.io.slides import is_slide_file

        if not is_slide_file(p):  # by its header: a text file renamed .tif is not claimed
            return None
        return read_dataset if _st_section_of(p) is not None else read_slide
    return None


def read_slide(path: str | list[str]) -> list[LayerData]:
    from napari_dkan._widgets.sources import SectionSource
    from napari_dkan.io.slides import open_slide

    p = Path(path[0] if isinstance(path, list) else path)
    slide = open_slide(p)
    slide.check_pixels()  # a truncated image fails now, not in napari's draw loop
    data, meta, kind = slide_layer(slide)
    meta["metadata"][META_KEY]["source"] = SectionSource(path=str(p)).to_metadata()
    return [(data, meta, kind)]


def slide_layer(slide: Any) -> LayerData:
    """A multiscale RGB image layer of a slide, scaled in µm when the scale is known."""
    meta = {
        "name": slide.name,
        "rgb": True,
        "multiscale": True,
        "scale": slide.layer_scale,
        "units": ("µm", "µm") if slide.mpp else ("pixel", "pixel"),
        "metadata": {META_KEY: {"path": str(slide.path), "mpp": slide.mpp, "role": "slide",
                                "pixel_scale": slide.layer_scale}},
    }
    return (slide.pyramid(), meta, "image")


def read_dataset(path: str | list[str]) -> list[LayerData]:
    """The slide and measured spots of one section (see the module docstring for which)."""
    from napari.utils.notifications import show_info, show_warning

    p = Path(path[0] if isinstance(path, list) else path)
    if p.suffix.lower() == ".h5ad" and _is_prediction_file(p):
        from napari_dkan._saved_predictions import saved_prediction_layers

        return saved_prediction_layers(p)
    source, note = _section_source(p)
    section = source.open()
    if note:
        show_info(note.format(section=section.name))
    layers: list[LayerData] = []
    slide = _section_image_layer(section, source)
    if slide is not None:
        layers.append(slide)
    if section.has_counts:
        layers.append(measured_layer(section, source))
    for line in section.notes:  # what the reader assumed or passed over (filled while loading)
        show_warning(f"{section.name}: {line}")
    return layers


def _is_prediction_file(p: Path) -> bool:
    """Written by napari-dkan (uns/napari_dkan/model), judged from the HDF5 keys alone."""
    import h5py

    try:
        with h5py.File(p, "r") as f:
            return "uns/napari_dkan/model" in f
    except OSError:
        return False  # not HDF5: the dataset reader says what is wrong


def _section_source(p: Path) -> tuple[SectionSource, str]:
    """Which section a path names, and a note for the user when we had to choose one."""
    from napari_dkan._widgets.sources import SectionSource
    from napari_dkan.io.formats import open_dataset

    st = _st_section_of(p)
    if st is not None:
        return SectionSource(path=str(st[0]), section=st[1]), ""
    if p.is_dir() and _is_visium(p):
        image = _visium_image(p)
        return SectionSource(path=str(p), image=str(image) if image else None), ""
    ds = open_dataset(p)
    chosen = next((s for s in ds.sections if s.trainable), ds.sections[0])
    note = ""
    if len(ds.sections) > 1:
        note = (f"{p.name} holds {len(ds.sections)} sections; opened {{section}}. Open another "
                "one by its image folder (e.g. ST-imgs/<patient>/<section>).")
    return SectionSource(path=str(p), section=chosen.name), note


def _st_section_of(p: Path) -> tuple[Path, str] | None:
    """(root, section) when ``p`` is a section's image folder, or an image in it, of an ST root."""
    from napari_dkan.io.st_legacy import is_st_root

    folder = p if p.is_dir() else p.parent
    # ST-imgs/<patient>/<section>/ (HER2ST) or ST-imgs/<section>/
    parents = folder.parents
    for depth in (2, 1):
        if len(parents) > depth and parents[depth - 1].name == "ST-imgs" and is_st_root(parents[depth]):
            root, name = parents[depth], folder.name
            # a patient folder (ST-imgs/C) is not a section: the section must have spots
            if (root / "ST-spotfiles" / f"{name}_selection.tsv").is_file():
                return root, name
    return None


def _is_visium(p: Path) -> bool:
    from napari_dkan.io.visium import find_spaceranger_outs

    return find_spaceranger_outs(p) is not None


def _visium_image(folder: Path) -> Path | None:
    """The one slide file placed in a Space Ranger folder (or its outs/), if exactly one."""
    found = [f for d in (folder, folder / "outs") if d.is_dir() for f in sorted(d.iterdir())
             if f.is_file() and f.suffix.lower() in _SLIDE_SUFFIXES]
    return found[0] if len(found) == 1 else None


def _section_image_layer(section: Section, source: SectionSource) -> LayerData | None:
    meta_source = source.to_metadata()
    if section.has_image:
        slide = section.open_slide()
        slide.check_pixels()  # a truncated image fails now, not in napari's draw loop
        data, meta, kind = slide_layer(slide)
        meta["name"] = f"{section.name} · slide"
        meta["metadata"][META_KEY]["source"] = meta_source
        return data, meta, kind
    return low_res_layer(section, meta_source)


def low_res_layer(section: Section, source: dict[str, Any]) -> LayerData | None:
    """The section's low-resolution image (Space Ranger PNG, AnnData uns image) under its spots."""
    preview = section.preview
    if preview is None:
        return _placeholder_layer(section, source)
    mpp = float(section.mpp)
    meta = {
        "name": f"{section.name} · {preview.kind} image",
        "rgb": True,
        "scale": (mpp / preview.scale, mpp / preview.scale),
        "units": ("µm", "µm"),
        "metadata": {META_KEY: {"role": "slide", "source": source, "mpp": mpp,
                                "pixel_scale": (mpp, mpp), "low_resolution": True}},
    }
    return preview.image, meta, "image"


def _placeholder_layer(section: Section, source: dict[str, Any]) -> LayerData | None:
    """A plain light canvas under the spots when the data hold no image at all.

    It gives the spots a frame and the dock a slide to follow, whose fields then ask for the
    full-resolution image; its name says what it is.
    """
    import numpy as np
    from napari.utils.notifications import show_warning

    from napari_dkan.io.errors import DataError

    try:
        spots, mpp = section.spots, float(section.mpp)
    except DataError:
        return None
    step = 32.0  # full-resolution pixels per canvas pixel
    margin = 2 * (spots.diameter_px or spots.diameter_um / mpp)
    shape = (int((spots.y.max() + margin) // step) + 1, int((spots.x.max() + margin) // step) + 1)
    show_warning(f"{section.name}: the data hold no image; choose the full-resolution image in "
                 "the Predict expression dock (Slide ▸ image) to see the tissue and predict")
    meta = {
        "name": f"{section.name} · no image",
        "rgb": True,
        "scale": (mpp * step, mpp * step),
        "units": ("µm", "µm"),
        "metadata": {META_KEY: {"role": "slide", "source": source, "mpp": mpp,
                                "pixel_scale": (mpp, mpp), "low_resolution": True,
                                "placeholder": True}},
    }
    return np.full((*shape, 3), 235, dtype=np.uint8), meta, "image"


def measured_layer(section: Section, source: SectionSource) -> LayerData:
    """Measured expression as Points: one feature column per gene of the section's panel."""
    import numpy as np

    from napari_dkan._widgets.expression import measured_expression, reader_panel, spot_features
    from napari_dkan._widgets.session import percentile_limits

    spots = section.spots
    expr = measured_expression(section, reader_panel(section), smoothing=False)
    gene = expr.genes[0]
    mpp = float(section.mpp)
    diameter = spots.diameter_px or spots.diameter_um / mpp
    features = spot_features(spots.spot_id, expr.genes, expr.values)
    meta = {
        "name": f"{section.name} · measured",
        "features": features,
        "face_color": gene,
        "face_colormap": "viridis",
        "face_contrast_limits": percentile_limits(expr.column(gene), 1.0, 99.0),
        "size": diameter,
        "border_width": 0,
        "opacity": 0.9,
        "scale": (mpp, mpp),
        "units": ("µm", "µm"),
        "metadata": {META_KEY: {"role": "measured", "source": source.to_metadata(),
                                "gene": gene, "space": expr.space}},
    }
    return np.column_stack([spots.y, spots.x]), meta, "points"
