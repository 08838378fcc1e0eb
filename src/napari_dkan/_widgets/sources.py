"""How a napari layer names the section it shows, so the dock can reopen it with the data layer.

The reader stores a :class:`SectionSource` in each layer's ``metadata["napari_dkan"]``; the
dock turns it back into a :class:`~napari_dkan.io.dataset.Section`.  A slide opened by another
plugin has no such metadata; its ``layer.source.path`` is then treated as a slide alone, whose
spots are a lattice over the detected tissue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_dkan.io.dataset import Section

META_KEY = "napari_dkan"


@dataclass(frozen=True)
class SectionSource:
    """A dataset path and the section in it, or a slide file alone (``section=None``)."""

    path: str
    section: str | None = None
    #: full-resolution image given beside a Visium folder or an .h5ad file
    image: str | None = None
    mpp: float | None = None

    def open(self) -> Section:
        """The section (cheap: spots and counts load on first use)."""
        from napari_dkan.io.formats import open_dataset

        ds = open_dataset(self.path, image=self.image, mpp=self.mpp)
        if self.section is None:
            return ds.sections[0]
        return ds[self.section]

    @property
    def label(self) -> str:
        """In words: "section C2 of her2st", or "slide CMU-1.svs"."""
        name = Path(self.path).name
        return f"section {self.section} of {name}" if self.section else f"slide {name}"

    def to_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> SectionSource:
        return cls(path=str(meta["path"]), section=meta.get("section"), image=meta.get("image"),
                   mpp=meta.get("mpp"))


def source_of_layer(layer: Any) -> SectionSource | None:
    """The section behind an image or points layer, or None when it names no file."""
    meta = (getattr(layer, "metadata", None) or {}).get(META_KEY) or {}
    if "source" in meta:
        return SectionSource.from_metadata(meta["source"])
    path = getattr(getattr(layer, "source", None), "path", None)
    if path and Path(path).is_file():
        return SectionSource(path=str(path))
    return None
