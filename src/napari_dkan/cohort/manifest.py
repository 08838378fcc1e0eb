"""The cohort manifest: which slides to predict, one row each, in a CSV or TSV file.

Columns (a header row names them; order is free; ``#`` starts a comment line):

``slide`` (required)
    a slide file (any format napari-dkan opens), a Visium folder, an ``.h5ad``, or a dataset
    folder (HER2ST-style) together with ``section``.
``spots``
    where the spots are: ``lattice`` (a Visium-like lattice over the detected tissue; the
    default for a slide file alone) or a spot file (Visium folder / ``.h5ad``) placed on
    ``slide``.
``section``
    the section of a dataset folder that holds several.
``mpp``
    µm per pixel, for slides that do not record it.
``name``
    the output's name, ``OUT/<name>.h5ad`` (default: ``section``, else the slide's file name
    without its extension); names must be unique.

Relative paths are relative to the manifest's folder, so a manifest travels with its slides.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from napari_dkan.io.errors import DataError

COLUMNS = ("slide", "spots", "section", "mpp", "name")


@dataclass(frozen=True)
class CohortSlide:
    """One manifest row, with paths resolved."""

    name: str
    slide: Path
    spots: str | None = None  # "lattice", a path, or None (the slide's own spots / a lattice)
    section: str | None = None
    mpp: float | None = None
    line: int = 0

    def output(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}.h5ad"


def read_manifest(path: str | Path) -> list[CohortSlide]:
    """The slides of a manifest; raises :class:`DataError` naming the line of any mistake."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    lines = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"manifest {path} is empty: it needs a header row with a 'slide' column")
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") or "\t" in lines[0][1] else ","
    rows = csv.reader([ln for _, ln in lines], delimiter=delimiter)
    header = [h.strip().lower() for h in next(rows)]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown or "slide" not in header:
        raise DataError(
            f"manifest {path}: the header must name a 'slide' column and may name "
            f"{', '.join(COLUMNS[1:])}; found {', '.join(header) or 'nothing'}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    base = path.parent
    slides = []
    for (line, _), values in zip(lines[1:], rows):
        if len(values) > len(header):
            raise DataError(f"manifest {path}, line {line}: {len(values)} values for {len(header)} columns")
        row = {h: (v.strip() or None) for h, v in zip(header, values)}
        slides.append(_entry(row, base, path, line))
    if not slides:
        raise DataError(f"manifest {path} lists no slides (only a header)")
    _check_names(slides, path)
    return slides


def _entry(row: dict[str, str | None], base: Path, path: Path, line: int) -> CohortSlide:
    where = f"manifest {path}, line {line}"
    if not row.get("slide"):
        raise DataError(f"{where}: the 'slide' value is empty")
    slide = _resolve(row["slide"], base)
    spots = row.get("spots")
    if spots is not None and spots.lower() != "lattice":
        spots = str(_resolve(spots, base))
    elif spots is not None:
        spots = "lattice"
    mpp = None
    if row.get("mpp") is not None:
        try:
            mpp = float(row["mpp"])
        except ValueError:
            mpp = math.nan
        if not (math.isfinite(mpp) and mpp > 0):
            raise DataError(f"{where}: mpp must be a positive number of µm per pixel, got {row['mpp']!r}")
    section = row.get("section")
    name = row.get("name") or section or _stem(slide)
    if "/" in name or "\\" in name or name.startswith(".") or name in ("", ".."):
        raise DataError(f"{where}: {name!r} cannot name an output file; give a plain 'name'")
    return CohortSlide(name, slide, spots, section, mpp, line)


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.suffix else name


def _check_names(slides: list[CohortSlide], path: Path) -> None:
    seen: dict[str, int] = {}
    for s in slides:
        if s.name in seen:
            raise DataError(
                f"manifest {path}: lines {seen[s.name]} and {s.line} both write {s.name}.h5ad; "
                "give them distinct values in a 'name' column"
            )
        seen[s.name] = s.line


def open_section(entry: CohortSlide):  # noqa: ANN201 - a napari_dkan.io.dataset.Section
    """The section a manifest row describes (the same rules as ``napari-dkan predict``)."""
    from napari_dkan.io.formats import open_section as _open

    return _open(entry.slide, entry.section, entry.spots, mpp=entry.mpp)
