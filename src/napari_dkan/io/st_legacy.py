"""Legacy Spatial Transcriptomics datasets in the HER2ST layout (Andersson et al. 2021).

Layout of the root::

    ST-cnts/<section>.tsv.gz              spots × genes raw counts, index "<x>x<y>"
    ST-spotfiles/<section>_selection.tsv  x y new_x new_y pixel_x pixel_y selected
    ST-imgs/<patient>/<section>/*.jpg     full-resolution H&E (may be absent)

``x``/``y`` are the integer array column/row and join the count index; ``pixel_x`` (column)
and ``pixel_y`` (row) are the spot centre in full-resolution pixels.  A spot file may list a
few spots more than the count table; those have no expression and are left out.  The images
carry no resolution, so µm/px is estimated from the 200 µm spot pitch.  The patient is the
section name's letter (A1 → A).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from napari_dkan.io.counts import read_st_counts, read_st_index
from napari_dkan.io.dataset import Dataset, Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.spots import GridLayout, SpotTable

ST_PITCH_UM = 200.0
ST_DIAMETER_UM = 100.0
_COUNT_SUFFIXES = (".tsv.gz", ".tsv")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".svs", ".ndpi")


def is_st_root(path: Path) -> bool:
    return (path / "ST-cnts").is_dir() and (path / "ST-spotfiles").is_dir()


def read_st_dataset(root: Path) -> Dataset:
    """Every section that has a count table or a spot file under ``root``."""
    names = set()
    for f in (root / "ST-cnts").iterdir():
        for suf in _COUNT_SUFFIXES:
            if f.name.endswith(suf):
                names.add(f.name[: -len(suf)])
    for f in (root / "ST-spotfiles").glob("*_selection.tsv"):
        names.add(f.name[: -len("_selection.tsv")])
    if not names:
        raise DataError(f"{root} has ST-cnts/ and ST-spotfiles/ but no section files in them")
    sections = [_section(root, n) for n in sorted(names, key=_natural_key)]
    return Dataset(name=root.name, root=root, kind="legacy-st", sections=sections)


def _natural_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def _patient_of(name: str) -> str:
    m = re.match(r"[A-Za-z]+", name)
    return m.group(0) if m else name


def _count_file(root: Path, name: str) -> Path | None:
    for suf in _COUNT_SUFFIXES:
        f = root / "ST-cnts" / f"{name}{suf}"
        if f.is_file():
            return f
    return None


def _image_file(root: Path, name: str, patient: str) -> Path | None:
    for folder in (root / "ST-imgs" / patient / name, root / "ST-imgs" / name):
        if folder.is_dir():
            images = sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            if images:
                return images[0]
    return None


def _section(root: Path, name: str) -> Section:
    patient = _patient_of(name)
    count_file = _count_file(root, name)
    spot_file = root / "ST-spotfiles" / f"{name}_selection.tsv"

    def load_spots() -> SpotTable:
        if not spot_file.is_file():
            raise DataError(
                f"section {name} has no spot file: expected {spot_file}. Without it the spots "
                "cannot be placed on the image."
            )
        index = read_st_index(count_file) if count_file is not None else None
        return read_spot_file(spot_file, count_index=index, section=name)

    load_counts = (lambda: read_st_counts(count_file)) if count_file is not None else None
    return Section(
        name=name,
        patient=patient,
        image_path=_image_file(root, name, patient),
        load_spots=load_spots,
        load_counts=load_counts,
        dataset=root.name,
        missing_image_hint="Legacy-ST images live under ST-imgs/<patient>/<section>/.",
    )


def read_spot_file(
    path: Path, count_index: np.ndarray | None = None, section: str = ""
) -> SpotTable:
    """A ``*_selection.tsv`` spot file, joined to a count table's ``"<x>x<y>"`` index."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse spot file {path}: {exc}") from exc
    required = {"x", "y", "pixel_x", "pixel_y"}
    if not required <= set(frame.columns):
        raise DataError(
            f"spot file {path.name} lacks column(s) {sorted(required - set(frame.columns))}; "
            "expected the HER2ST columns x y new_x new_y pixel_x pixel_y selected"
        )
    if "selected" in frame:
        frame = frame[frame["selected"].astype(int) == 1]
    for col in required:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            raise DataError(f"spot file {path.name}: column {col!r} is not numeric")
    ids = frame["x"].round().astype(int).astype(str) + "x" + frame["y"].round().astype(int).astype(str)
    frame = frame.assign(spot_id=ids.to_numpy())
    if count_index is not None:
        known = set(frame["spot_id"])
        orphans = [s for s in count_index if s not in known]
        if orphans:
            raise DataError(
                f"{len(orphans)} row(s) of the count table of section {section or path.stem} "
                f"match no spot in {path.name}, e.g. {', '.join(orphans[:5])}. The count index "
                "must be '<x>x<y>' with x, y from the spot file."
            )
        frame = frame.set_index("spot_id", drop=False)
        if frame.index.duplicated().any():
            dup = frame.index[frame.index.duplicated()][0]
            raise DataError(f"duplicate spot id {dup!r} in spot file {path.name}")
        frame = frame.loc[list(count_index)]
    return SpotTable(
        spot_id=frame["spot_id"].to_numpy(),
        array_row=frame["y"].round().astype(int).to_numpy(),
        array_col=frame["x"].round().astype(int).to_numpy(),
        x=frame["pixel_x"].to_numpy(float),
        y=frame["pixel_y"].to_numpy(float),
        in_tissue=np.ones(len(frame), dtype=bool),
        diameter_px=None,
        layout=GridLayout.SQUARE,
        pitch_um=ST_PITCH_UM,
        diameter_um=ST_DIAMETER_UM,
        source=str(path),
    )
