"""Sections and datasets: what the model trains and predicts on.

A :class:`Section` is one tissue section: its spots, optionally its raw counts and its
full-resolution image, and the patient it came from.  Spots and counts load on first use (a
HER2ST dataset lists 36 sections without parsing 36 count tables).  A :class:`Dataset` is a
named set of sections.  The formats that make them, and
:func:`~napari_dkan.io.formats.open_dataset`, live in :mod:`napari_dkan.io.formats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from napari_dkan.io.counts import Counts
from napari_dkan.io.errors import DataError
from napari_dkan.io.preview import Preview
from napari_dkan.io.slides import Slide, open_slide
from napari_dkan.io.spots import SpotTable


@dataclass(eq=False)
class Section:
    """One tissue section.  ``spots`` and ``counts`` share one spot order."""

    name: str
    patient: str
    image_path: Path | None
    load_spots: Callable[[], SpotTable] = field(repr=False)
    load_counts: Callable[[], Counts] | None = field(default=None, repr=False)
    #: µm per pixel given by the user; overrides metadata and estimates
    mpp_override: float | None = None
    #: µm per pixel known without opening the image (e.g. from an AnnData file)
    mpp_hint: float | None = None
    dataset: str = ""
    #: a short explanation shown when an image is required but absent
    missing_image_hint: str = ""
    #: a low-resolution image of the section (Space Ranger PNG, AnnData ``uns`` image), if any
    load_preview: Callable[[], Preview | None] | None = field(default=None, repr=False)
    #: what the reader assumed or passed over, in words for the user (shown by reader and dock)
    notes: list[str] = field(default_factory=list)

    @property
    def has_counts(self) -> bool:
        return self.load_counts is not None

    @property
    def has_image(self) -> bool:
        return self.image_path is not None

    @property
    def trainable(self) -> bool:
        """Usable for training and evaluation: image, counts and spots."""
        return self.has_image and self.has_counts

    @cached_property
    def spots(self) -> SpotTable:
        spots = self.load_spots()
        if spots.diameter_px is None:
            mpp = self._mpp_without_image()
            if mpp is not None:
                spots = spots.with_scale(mpp)
        return spots

    @cached_property
    def counts(self) -> Counts:
        if self.load_counts is None:
            raise DataError(f"section {self.name} has no measured expression (no count matrix)")
        counts = self.load_counts()
        return counts.align(self.spots.spot_id, source=f"the counts of section {self.name}")

    @cached_property
    def preview(self) -> Preview | None:
        """The section's low-resolution image, or None (read once, on first use)."""
        return self.load_preview() if self.load_preview is not None else None

    def require_image(self) -> Path:
        if self.image_path is None:
            hint = f" {self.missing_image_hint}" if self.missing_image_hint else ""
            raise DataError(f"section {self.name} has no full-resolution image.{hint}")
        return self.image_path

    def open_slide(self, check_spots: bool = True) -> Slide:
        """The section's image with its µm/px resolved, its spots checked to lie inside it."""
        slide = open_slide(self.require_image())
        slide.require_colour()  # the model and tissue detection read H&E's colours
        slide.mpp = self.mpp  # explicit > metadata > spot-pitch estimate
        if check_spots:
            w, h = slide.dimensions
            self.spots.check_inside(w, h, where=f"the image of section {self.name}")
        return slide

    @property
    def mpp(self) -> float:
        """µm per level-0 pixel: given by the user, else image metadata, else the spot pitch."""
        return self._resolved_mpp[0]

    @property
    def mpp_source(self) -> str:
        """Where :attr:`mpp` came from: ``user``, ``metadata``, ``dataset`` or ``spot pitch``."""
        return self._resolved_mpp[1]

    @cached_property
    def _resolved_mpp(self) -> tuple[float, str]:
        if self.mpp_override is not None:
            return float(self.mpp_override), "user"
        if self.image_path is not None:
            slide = open_slide(self.image_path)  # reads the header only for plain images
            if slide.mpp is not None:
                return slide.mpp, "metadata"
        if self.mpp_hint is not None:
            return float(self.mpp_hint), "dataset"
        return self.load_spots().estimate_mpp(), "spot pitch"

    def _mpp_without_image(self) -> float | None:
        for value in (self.mpp_override, self.mpp_hint):
            if value is not None:
                return value
        if self.image_path is not None:
            return self.mpp
        try:
            return self.load_spots().estimate_mpp()
        except DataError:
            return None

    def summary(self, load: bool = True) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "patient": self.patient,
            "has_image": self.has_image,
            "has_counts": self.has_counts,
            "trainable": self.trainable,
            "image": str(self.image_path) if self.image_path else None,
        }
        if load:
            spots = self.spots
            info["spots"] = len(spots)
            info["layout"] = str(spots.layout)
            if self.has_image or spots.diameter_px is not None:
                mpp = self.mpp
                info["mpp"] = round(mpp, 5) if math.isfinite(mpp) else None
                info["mpp_source"] = self.mpp_source
        return info


@dataclass(eq=False)
class Dataset:
    """A named set of sections, each with a patient id."""

    name: str
    root: Path
    kind: str
    sections: list[Section]

    def __post_init__(self) -> None:
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise DataError(f"dataset {self.name} has repeated section names")

    def __len__(self) -> int:
        return len(self.sections)

    def __iter__(self):  # noqa: ANN204
        return iter(self.sections)

    def __getitem__(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise DataError(
            f"no section {name!r} in dataset {self.name}; it has: "
            f"{', '.join(s.name for s in self.sections)}"
        )

    @property
    def section_names(self) -> list[str]:
        return [s.name for s in self.sections]

    def select(self, names: Iterable[str] | None) -> Dataset:
        """The dataset restricted to ``names`` (in that order); None keeps every section."""
        if names is None:
            return self
        chosen = [self[n] for n in names]
        return Dataset(self.name, self.root, self.kind, chosen)

    def trainable(self) -> Dataset:
        """Only the sections with image, counts and spots."""
        return Dataset(self.name, self.root, self.kind, [s for s in self.sections if s.trainable])

    @property
    def patients(self) -> dict[str, list[Section]]:
        out: dict[str, list[Section]] = {}
        for s in self.sections:
            out.setdefault(s.patient, []).append(s)
        return out

    def summary(self, load_spots: bool = True) -> dict[str, Any]:
        secs = [s.summary(load=load_spots) for s in self.sections]
        return {
            "path": str(self.root),
            "kind": self.kind,
            "name": self.name,
            "n_sections": len(secs),
            "n_with_counts": sum(s["has_counts"] for s in secs),
            "n_with_images": sum(s["has_image"] for s in secs),
            "n_trainable": sum(s["trainable"] for s in secs),
            "patients": sorted(self.patients),
            "sections": secs,
        }


def __getattr__(name: str) -> Any:
    """``open_dataset`` lives in :mod:`napari_dkan.io.formats` (the reader registry, which imports
    this module); it is still importable from here, resolved on first use so that no cycle forms."""
    if name == "open_dataset":
        from napari_dkan.io.formats import open_dataset

        return open_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
