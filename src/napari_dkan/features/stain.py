"""Test-time stain normalisation (Reinhard): map a slide's colours to the model's training slides.

A slide from another lab, scanner or patient is stained and scanned differently; its tiles then
look unlike the tiles the model learned from.  Reinhard's method moves the tissue's colour
statistics in CIE-LAB to those of the training slides: each channel is standardised by the
slide's own tissue mean and standard deviation and rescaled to the reference's.

Tissue pixels are those with L < 88 (not glass) and chroma > 6 (stained, not grey dust or pen).
A slide's statistics come from a sample at most :data:`SAMPLE_SIDE` pixels on its long side: a
plain image (held in memory anyway) is sampled every ``step`` level-0 pixels; a pyramid is read
band by band at the coarsest level no coarser than ``step``, so a 40,000×40,000 scan never has
its level 0 read whole.

The reference (:class:`StainReference`) is written by training into the run folder as
``stain.json`` (the pooled tissue statistics of the training and validation sections).
"""

from __future__ import annotations

import json
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dkan.io.errors import DataError
from napari_dkan.storage import atomic_write, file_identity

if TYPE_CHECKING:
    from napari_dkan.features.pipeline import TileReader
    from napari_dkan.io.dataset import Section
    from napari_dkan.io.slides import Slide

STAIN_FILE = "stain.json"
#: long side of the sample a slide's statistics are computed from (a HER2ST image: every 4th pixel)
SAMPLE_SIDE = 2560
TISSUE_MAX_L, TISSUE_MIN_CHROMA = 88.0, 6.0
_BAND = 512  # rows converted to LAB at a time: bounds the memory of a large sample
_READ_BYTES = 1 << 26  # at most 64 MB of pixels read at a time from a slide


class StainError(DataError):
    """A stain reference is missing or unreadable."""


@dataclass(frozen=True)
class TissueStats:
    """Mean and standard deviation of the tissue pixels' L, a, b, and how many pixels."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixels: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "pixels": self.pixels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TissueStats:
        return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                   int(data["pixels"]))


class _Moments:
    """Running sums of tissue pixels' LAB values and their squares (pooling is exact)."""

    def __init__(self) -> None:
        self.n, self.s, self.ss = 0, np.zeros(3), np.zeros(3)

    def add_rgb(self, rgb: np.ndarray) -> None:
        from skimage.color import rgb2lab

        for r0 in range(0, rgb.shape[0], _BAND):
            lab = rgb2lab(rgb[r0:r0 + _BAND]).reshape(-1, 3)
            keep = (lab[:, 0] < TISSUE_MAX_L) & (np.hypot(lab[:, 1], lab[:, 2]) > TISSUE_MIN_CHROMA)
            t = lab[keep]
            self.n += len(t)
            self.s += t.sum(0)
            self.ss += (t * t).sum(0)

    def add_stats(self, st: TissueStats) -> None:
        m, sd = np.asarray(st.mean), np.asarray(st.std)
        self.n += st.pixels
        self.s += m * st.pixels
        self.ss += (sd**2 + m**2) * st.pixels

    def stats(self, what: str) -> TissueStats:
        if self.n < 100:
            raise DataError(f"{what} shows almost no stained tissue ({self.n} pixels): its staining "
                            "cannot be measured, so it cannot be stain-normalised")
        mean = self.s / self.n
        std = np.sqrt(np.maximum(self.ss / self.n - mean**2, 1e-12))
        return TissueStats(tuple(float(v) for v in mean), tuple(float(v) for v in std), int(self.n))  # type: ignore[arg-type]


def tissue_stats(rgb: np.ndarray) -> TissueStats:
    """Tissue LAB statistics of an RGB uint8 image (H × W × 3)."""
    acc = _Moments()
    acc.add_rgb(np.asarray(rgb)[..., :3])
    return acc.stats("the image")


def slide_tissue_stats(slide: Slide, sample_side: int = SAMPLE_SIDE) -> TissueStats:
    """Tissue LAB statistics of a whole slide from a sample (see the module notes)."""
    w, h = slide.dimensions
    step = max(1, math.ceil(max(w, h) / sample_side))
    level = 0 if slide.backend == "image" else slide.best_level_for(step)
    lv = slide.levels[level]
    stride = max(1, round(step / lv.downsample))
    acc = _Moments()
    band = stride * max(1, _READ_BYTES // (3 * lv.width * stride))  # rows a read, a multiple of the stride
    for y0 in range(0, lv.height, band):
        rows = min(band, lv.height - y0)
        acc.add_rgb(slide.read_region(level, 0, y0, lv.width, rows)[::stride, ::stride])
    return acc.stats(slide.path.name)


_SLIDE_STATS: dict[str, TissueStats] = {}
_SLIDE_LOCK = threading.Lock()


def section_tissue_stats(section: Section) -> TissueStats:
    """A section image's tissue statistics, computed once per file (and process)."""
    path = section.require_image()
    key = file_identity(Path(path))
    with _SLIDE_LOCK:
        hit = _SLIDE_STATS.get(key)
    if hit is None:
        with section.open_slide(check_spots=False) as slide:
            hit = slide_tissue_stats(slide)
        with _SLIDE_LOCK:
            _SLIDE_STATS[key] = hit
    return hit


@dataclass(frozen=True)
class StainReference:
    """The target of stain normalisation: pooled tissue statistics of a model's training slides."""

    stats: TissueStats
    sections: tuple[str, ...]

    @property
    def identity(self) -> str:
        """What the feature cache keys on: the method and the target, rounded (stable across
        rewrites of the same reference)."""
        m = ",".join(f"{v:.4f}" for v in (*self.stats.mean, *self.stats.std))
        return f"reinhard-lab-v1:{m}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": "reinhard-lab", "sample_side": SAMPLE_SIDE,
                "tissue": {"max_L": TISSUE_MAX_L, "min_chroma": TISSUE_MIN_CHROMA},
                "sections": list(self.sections), **self.stats.to_dict()}

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / STAIN_FILE
        atomic_write(path, (json.dumps(self.to_dict(), indent=1) + "\n").encode())
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> StainReference:
        path = Path(run_dir) / STAIN_FILE
        if not path.is_file():
            raise StainError(f"the model in {run_dir} has no stain reference ({STAIN_FILE}): it was "
                             "trained before stain normalisation existed. Write one from its training "
                             "dataset with `napari-dkan trust DATASET --model RUN --only-stain`, or "
                             "predict without stain normalisation")
        try:
            data = json.loads(path.read_text())
            return cls(TissueStats.from_dict(data), tuple(data.get("sections") or ()))
        except (ValueError, KeyError, TypeError) as exc:
            raise StainError(f"{path} is not a readable stain reference ({exc}); rewrite it with "
                             "`napari-dkan trust DATASET --model RUN --only-stain`") from exc


def reference_from_sections(sections: Sequence[Section]) -> StainReference:
    """The pooled tissue statistics of ``sections`` (those without an image are skipped)."""
    with_image = [s for s in sections if s.has_image]
    if not with_image:
        raise StainError("no section with an image to take a stain reference from")
    acc = _Moments()
    for sec in with_image:
        acc.add_stats(section_tissue_stats(sec))
    return StainReference(acc.stats("the reference sections"), tuple(s.name for s in with_image))


def write_reference(run_dir: str | Path, sections: Sequence[Section]) -> StainReference:
    """Write ``stain.json`` for a run trained (and selected) on ``sections``."""
    ref = reference_from_sections(sections)
    ref.save(run_dir)
    return ref


@dataclass(frozen=True)
class ReinhardTransform:
    """Maps tiles of a slide with tissue statistics ``source`` to the ``target`` reference."""

    source: TissueStats
    target: StainReference

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (… × 3) in, uint8 RGB of the same shape out."""
        from skimage.color import lab2rgb, rgb2lab

        _quiet_gamut_warnings()
        src_m, src_s = np.asarray(self.source.mean), np.asarray(self.source.std)
        tgt_m, tgt_s = np.asarray(self.target.stats.mean), np.asarray(self.target.stats.std)
        lab = (rgb2lab(rgb) - src_m) * (tgt_s / src_s) + tgt_m
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        return np.clip(lab2rgb(lab) * 255 + 0.5, 0, 255).astype(np.uint8)

    def record(self) -> dict[str, Any]:
        """What a prediction records of the normalisation it used."""
        return {"method": "reinhard-lab", "source": self.source.to_dict(),
                "target": self.target.stats.to_dict(), "reference_sections": list(self.target.sections)}


_QUIET: list[bool] = []


def _quiet_gamut_warnings() -> None:
    """A colour mapped just outside sRGB is clipped, as intended: not worth a warning per tile
    (the filter is installed once, not from every reading thread)."""
    with _SLIDE_LOCK:
        if not _QUIET:
            warnings.filterwarnings("ignore", "Conversion from CIE-LAB", UserWarning)
            _QUIET.append(True)


def section_transform(section: Section, reference: StainReference) -> ReinhardTransform:
    """The transform from ``section``'s staining to ``reference``."""
    return ReinhardTransform(section_tissue_stats(section), reference)


def normalised_reader(read: TileReader, transform: ReinhardTransform | None) -> TileReader:
    """``read`` with each tile passed through ``transform`` (``read`` itself without one)."""
    if transform is None:
        return read
    return lambda i: transform(read(i))
