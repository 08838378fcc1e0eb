"""Spots for a slide without spatial transcriptomics: a lattice laid over the detected tissue.

Tissue is found on a low-resolution overview: H&E-stained tissue is coloured (saturated) while
glass is white or grey, so the saturation channel is thresholded with Otsu's method (with a
floor, so a blank slide yields no tissue rather than noise), very dark pixels (pen marks,
scanner borders) are dropped, and the mask is cleaned by closing, hole filling and removing
specks.  The lattice is Visium-like by default: hexagonal, 55 µm spots 100 µm apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_dkan.io.dataset import Dataset, Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.slides import Slide, open_slide
from napari_dkan.io.spots import GridLayout, SpotTable, hex_lattice

LATTICE_PITCH_UM = 100.0
LATTICE_DIAMETER_UM = 55.0
#: saturation below this is never tissue, whatever Otsu says (white glass is ~0.02)
MIN_SATURATION = 0.07
#: connected tissue pieces smaller than this fraction of the overview are dropped
MIN_PIECE_FRACTION = 0.0005


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask of an overview and its downsample factor from level 0."""

    mask: np.ndarray
    downsample: float

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Whether level-0 pixel positions fall on tissue."""
        h, w = self.mask.shape
        c = np.clip((np.asarray(x) / self.downsample).astype(int), 0, w - 1)
        r = np.clip((np.asarray(y) / self.downsample).astype(int), 0, h - 1)
        return self.mask[r, c]


def detect_tissue(slide: Slide, max_size: int = 2048) -> TissueMask:
    """Tissue mask of ``slide`` from an overview of at most ``max_size`` pixels."""
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    overview, downsample = slide.thumbnail(max_size)
    hsv = rgb2hsv(overview)
    sat, val = hsv[..., 1], hsv[..., 2]
    threshold = MIN_SATURATION
    if np.ptp(sat) > 1e-3:
        threshold = max(float(threshold_otsu(sat)), MIN_SATURATION)
    mask = (sat > threshold) & (val > 0.15)
    radius = max(1, round(min(mask.shape) / 300))
    structure = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    mask = ndimage.binary_closing(mask, structure=structure)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= MIN_PIECE_FRACTION * mask.size
        mask = keep[labels]
    return TissueMask(mask=mask, downsample=downsample)


def lattice_spots(
    slide: Slide,
    pitch_um: float = LATTICE_PITCH_UM,
    diameter_um: float = LATTICE_DIAMETER_UM,
    tissue: TissueMask | None = None,
) -> SpotTable:
    """A hexagonal lattice of spots over the tissue of ``slide`` (which needs µm/px)."""
    if pitch_um <= 0 or diameter_um <= 0:
        raise DataError(f"lattice pitch and diameter must be positive, got {pitch_um}, {diameter_um}")
    mpp = slide.require_mpp()
    slide.require_colour()  # tissue is found by the stain's colour
    tissue = tissue if tissue is not None else detect_tissue(slide)
    if not tissue.mask.any():
        raise DataError(
            f"no tissue detected on {slide.path.name}: the slide looks empty (white or grey "
            "glass only). Give spot positions instead, or check that this is the right slide."
        )
    rows_any = np.flatnonzero(tissue.mask.any(axis=1))
    cols_any = np.flatnonzero(tissue.mask.any(axis=0))
    ds = tissue.downsample
    x0, x1 = cols_any[0] * ds, (cols_any[-1] + 1) * ds
    y0, y1 = rows_any[0] * ds, (rows_any[-1] + 1) * ds
    pitch_px = pitch_um / mpp
    rows, cols, xs, ys = hex_lattice(x0, y0, x1 - x0, y1 - y0, pitch_px)
    w, h = slide.dimensions
    keep = tissue.contains(xs, ys) & (xs < w) & (ys < h)
    if not keep.any():
        raise DataError(
            f"the tissue on {slide.path.name} is smaller than one lattice pitch ({pitch_um} µm); "
            "use a smaller pitch"
        )
    rows, cols, xs, ys = rows[keep], cols[keep], xs[keep], ys[keep]
    return SpotTable(
        spot_id=np.array([f"r{r}c{c}" for r, c in zip(rows, cols)]),
        array_row=rows,
        array_col=cols,
        x=xs,
        y=ys,
        in_tissue=np.ones(len(xs), bool),
        diameter_px=diameter_um / mpp,
        layout=GridLayout.HEX,
        pitch_um=pitch_um,
        diameter_um=diameter_um,
        source=f"lattice over {slide.path.name}",
    )


def slide_dataset(
    path: Path,
    mpp: float | None = None,
    pitch_um: float = LATTICE_PITCH_UM,
    diameter_um: float = LATTICE_DIAMETER_UM,
) -> Dataset:
    """A one-section dataset for a slide alone; its spots are a lattice over the tissue."""
    slide = open_slide(path, mpp=mpp)  # fail early on unreadable files and grey images
    slide.require_colour()

    def load_spots() -> SpotTable:
        with open_slide(path, mpp=mpp) as s:
            return lattice_spots(s, pitch_um=pitch_um, diameter_um=diameter_um)

    section = Section(
        name=slide.name,
        patient=slide.name,
        image_path=Path(path),
        load_spots=load_spots,
        load_counts=None,
        mpp_override=mpp,
        dataset=slide.name,
    )
    slide.close()
    return Dataset(name=slide.name, root=Path(path), kind="slide", sections=[section])


def lattice_section(
    section: Section, pitch_um: float = LATTICE_PITCH_UM, diameter_um: float = LATTICE_DIAMETER_UM
) -> Section:
    """The section's slide with a lattice over its tissue instead of its own spots (no counts)."""
    image = section.require_image()
    mpp = section.mpp

    def load_spots() -> SpotTable:
        with open_slide(image, mpp=mpp) as s:
            return lattice_spots(s, pitch_um=pitch_um, diameter_um=diameter_um)

    return replace(section, name=f"{section.name}-lattice", load_spots=load_spots, load_counts=None,
                   mpp_override=mpp)
