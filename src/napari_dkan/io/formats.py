"""The dataset formats this tool reads, and :func:`open_dataset`, which picks one.

Each format is a :class:`DatasetFormat`: a name, a ``claims(path)`` test that looks at the path
(and at most a file header) without parsing it, and a ``read(path, image, mpp)`` that returns a
:class:`~napari_dkan.io.dataset.Dataset`.  :data:`FORMATS` lists them in the order they are
asked; the first that claims a path reads it.  The readers import :mod:`napari_dkan.io.dataset`
for its types and this module imports the readers: the dependency runs one way.

- a legacy-ST root in the HER2ST layout (``ST-cnts/``, ``ST-spotfiles/``, ``ST-imgs/``);
- a Visium Space Ranger output folder (1.x, 2.x or 3.x), with the full-resolution image given
  separately as Space Ranger's ``--image`` was;
- an AnnData ``.h5ad`` file in the scanpy convention (one section per library);
- a slide file alone: one section whose spots are a lattice laid over the detected tissue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from napari_dkan.io import anndata_io, lattice, st_legacy, visium
from napari_dkan.io.dataset import Dataset, Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.slides import check_not_empty, is_slide_file

#: ``read(path, image, mpp)``: ``image`` is a full-resolution image given beside spot data
Reader = Callable[[Path, Path | None, float | None], Dataset]


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    claims: Callable[[Path], bool]
    read: Reader


FORMATS: list[DatasetFormat] = [
    DatasetFormat("legacy-ST root", lambda p: p.is_dir() and st_legacy.is_st_root(p),
                  lambda p, image, mpp: st_legacy.read_st_dataset(p)),
    DatasetFormat("Space Ranger folder",
                  lambda p: p.is_dir() and visium.find_spaceranger_outs(p) is not None,
                  lambda p, image, mpp: visium.read_visium_dataset(p, image=image)),
    DatasetFormat("AnnData file", lambda p: p.is_file() and p.suffix.lower() == ".h5ad",
                  lambda p, image, mpp: anndata_io.read_h5ad_dataset(p, image=image)),
    DatasetFormat("slide", lambda p: is_slide_file(p),
                  lambda p, image, mpp: lattice.slide_dataset(p, mpp=mpp)),
]


def open_dataset(
    path: str | Path,
    image: str | Path | None = None,
    mpp: float | None = None,
) -> Dataset:
    """Recognise and open a dataset: HER2ST-style root, Visium folder, ``.h5ad`` or a slide.

    ``image`` is the full-resolution image of a Visium folder (or of a single-library AnnData
    file); ``mpp`` overrides the µm per pixel of every section.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p} does not exist")
    check_not_empty(p)
    fmt = next((f for f in FORMATS if f.claims(p)), None)
    if fmt is None:
        if p.is_dir():
            raise DataError(
                f"{p} is not a dataset this tool recognises: expected a legacy-ST root "
                "(ST-cnts/ and ST-spotfiles/), a Space Ranger output folder (spatial/"
                "tissue_positions*), an .h5ad file or a slide file"
            )
        raise DataError(
            f"unsupported file {p.name}: {_not_a_slide_reason(p)}give a dataset folder, an .h5ad "
            "file or a slide image"
        )
    ds = fmt.read(p, Path(image).expanduser() if image is not None else None, mpp)
    if mpp is not None:
        for s in ds.sections:
            s.mpp_override = float(mpp)
    return ds


def _not_a_slide_reason(p: Path) -> str:
    from napari_dkan.io.slides import PLAIN_IMAGE_SUFFIXES

    if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return (f"it is named like an image ({p.suffix}) but its contents are not an image "
                "(a renamed or damaged file?); ")
    return ""


def open_section(
    path: str | Path,
    section: str | None = None,
    spots: str | Path | None = None,
    image: str | Path | None = None,
    mpp: float | None = None,
) -> Section:
    """One section to predict on.

    ``path`` is a slide or a dataset (``section`` names one of a dataset's sections).  ``spots``
    is ``"lattice"`` (a lattice over the tissue replaces the section's own spots) or a spot file
    (Visium folder, ``.h5ad``) whose spots are placed on the slide ``path``; ``image`` is the
    full-resolution image of a Visium folder or ``.h5ad`` given as ``path``.
    """
    if spots not in (None, "lattice"):
        ds = open_dataset(spots, image=path, mpp=mpp)
    else:
        ds = open_dataset(path, image=image, mpp=mpp)
    if section:
        chosen = ds[section]
    elif len(ds) == 1:
        chosen = ds.sections[0]
    else:
        raise DataError(
            f"{ds.name} holds {len(ds)} sections ({', '.join(ds.section_names[:8])}"
            f"{'…' if len(ds) > 8 else ''}): name the one to use"
        )
    if spots == "lattice" and ds.kind != "slide":
        chosen = lattice.lattice_section(chosen)
    return chosen
