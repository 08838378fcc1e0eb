"""What the dock says about a section, and what it still needs before a prediction (no Qt).

- :func:`describe_section`: what is really there — the dataset's own spots (how many, which
  grid, measured or not) or, for a slide alone, a lattice laid over the tissue — and where the
  µm-per-pixel comes from.
- :func:`section_needs`: what the user must supply: the full-resolution image of a Visium
  folder or ``.h5ad`` (Space Ranger does not copy it into its outputs), or the µm per pixel of a
  plain image without that metadata; each with a guess where one can be made, and why.
- :func:`data_notices`: the reader's notes, panel coverage and species, in one list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_dkan._widgets.sources import SectionSource
from napari_dkan.io.dataset import Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.spots import GridLayout

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide",
                  ".tif", ".tiff", ".jpg", ".jpeg", ".png")
MPP_HELP = ("This image carries no µm-per-pixel. Enter your scanner's value (in the scan's "
            "metadata; about 0.25 µm/px at 40×, 0.5 at 20×): spot size and image tiles depend on it.")
IMAGE_HELP = ("Predicting needs the full-resolution H&E image the spots were aligned to (Space "
              "Ranger does not keep it); the image shown is low resolution.")
_MPP_SOURCES = {"user": "given by you", "metadata": "from the image's metadata",
                "dataset": "from the dataset's scale factors", "spot pitch": "estimated from the spot pitch"}


def is_slide_alone(source: SectionSource) -> bool:
    """A slide file opened by itself: no spots of its own, a lattice over its tissue."""
    p = Path(source.path)
    return source.section is None and p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES


@dataclass(frozen=True)
class Needs:
    image: bool = False
    mpp: bool = False
    image_guess: str = ""
    image_why: str = ""
    mpp_guess: float | None = None
    mpp_why: str = ""

    @property
    def any(self) -> bool:
        return self.image or self.mpp


def describe_section(section: Section, source: SectionSource) -> str:
    """One or two lines: what the section's spots are and where its scale comes from."""
    if is_slide_alone(source):
        text = (f"{Path(source.path).name}: no spot data in this file — predictions are made on a "
                "lattice of 55 µm spots, 100 µm apart, laid over the detected tissue")
        mpp = _known_mpp(section)
        return text + (f" · {mpp}" if mpp else "")
    spots = section.spots
    grid = ("Visium-like grid" if spots.layout is GridLayout.HEX else "legacy ST grid")
    if section.has_counts:
        measured = "measured expression"
    elif _is_saved_prediction(source):
        measured = "a saved napari-dkan prediction"
    else:
        measured = "no measured expression"
    what = (f"{section.name}: {len(spots)} spots from the dataset ({grid}: "
            f"{spots.diameter_um:g} µm spots, {spots.pitch_um:g} µm apart)")
    parts = [what, measured]
    if not section.has_image:
        parts.append("no full-resolution image")
    mpp = _known_mpp(section)
    if mpp:
        parts.append(mpp)
    return " · ".join(parts)


def _is_saved_prediction(source: SectionSource) -> bool:
    from napari_dkan._reader import _is_prediction_file

    p = Path(source.path)
    return p.suffix.lower() == ".h5ad" and p.is_file() and _is_prediction_file(p)


def _known_mpp(section: Section) -> str:
    try:
        value = section.mpp
    except DataError:
        return ""
    return f"{value:.3f} µm/px ({_MPP_SOURCES.get(section.mpp_source, section.mpp_source)})"


def section_needs(section: Section, source: SectionSource) -> Needs:
    """What must be supplied before predicting on ``section``."""
    if is_slide_alone(source):
        if source.mpp is not None or _slide_mpp(Path(source.path)) is not None:
            return Needs()
        return Needs(mpp=True, mpp_why=MPP_HELP)
    if section.has_image:
        return Needs()
    guess, why = guess_image(source, section)
    return Needs(image=True, image_guess=guess, image_why=IMAGE_HELP + (f" {why}" if why else ""))


def _slide_mpp(path: Path) -> float | None:
    from napari_dkan.io.slides import open_slide

    try:
        with open_slide(path) as slide:
            return slide.mpp
    except DataError:
        return None


def guess_image(source: SectionSource, section: Section) -> tuple[str, str]:
    """A slide file that is probably the section's full-resolution image, and why."""
    root = Path(source.path)
    folders = [root, root / "outs", root.parent] if root.is_dir() else [root.parent]
    found = [f for d in folders if d.is_dir() for f in sorted(d.iterdir())
             if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES and not f.name.startswith("tissue_")]
    stored = _stored_image_name(root)
    if stored:
        for f in found:
            if f.name == stored:
                return str(f), f"Prefilled: {f.name}, the name the dataset stores, found beside it."
    if len(found) == 1:
        return str(found[0]), f"Prefilled: {found[0].name}, the one slide file beside the data."
    return "", ""


def _stored_image_name(root: Path) -> str:
    if root.suffix.lower() != ".h5ad":
        return ""
    try:
        import h5py

        with h5py.File(root, "r") as f:
            for lib in f.get("uns/spatial", {}):
                key = f"uns/spatial/{lib}/metadata/source_image_path"
                if key in f:
                    value = f[key][()]
                    return Path(value.decode() if isinstance(value, bytes) else str(value)).name
    except OSError:
        return ""
    return ""


def data_notices(section: Section, model: Any | None) -> list[str]:
    """The reader's notes, then the model's panel coverage and species, for the dock.

    The notes fill as the section's image and counts are read, so both are read here (once:
    the section keeps them).
    """
    try:
        _ = section.preview
        if section.has_counts:
            _ = section.counts
    except DataError as exc:
        return [*section.notes, str(exc)]
    notices = []
    if model is not None and section.has_counts:
        from napari_dkan.io.coverage import panel_coverage

        trained_on = str((getattr(model, "config", {}) or {}).get("dataset", {}).get("name", ""))
        message = panel_coverage(section, model.panel).message(trained_on)
        if message:
            notices.append(message)
    return notices + list(section.notes)  # what bears on the model's output first
