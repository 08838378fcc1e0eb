"""Gene panels and training targets (method.md §4).

- Panel: the ``n`` genes with the highest mean raw count over all spots of the dataset, among
  genes present in every section, in descending order (ties keep the first section's column
  order).  On the 36 HER2ST sections this reproduces the DKAN/TRIPLEX 250-gene list exactly.
  ``method="hvg"`` picks highly variable genes instead: the largest variance of
  ``log1p(counts per 10,000)`` over all spots.
- Target: panel counts scaled to sum 10,000 per spot over the panel, then ``log10(1 + x)``; a
  spot with no panel counts stays all zero.
- Smoothing (on by default, as the paper): each spot's vector becomes the mean over itself and
  its existing grid neighbours — the 8 cells at ±1 row/col on legacy-ST square grids, the 6 hex
  neighbours ((r, c±2), (r±1, c±1)) on Visium and lattice grids.  Missing neighbours are left
  out of the mean.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from napari_dkan.io.dataset import Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.spots import SpotTable

TARGET_SUM = 10_000.0
#: the largest target value there is: a gene holding the whole panel total of its spot
TARGET_MAX = float(np.log10(1.0 + TARGET_SUM))


class PanelMethod(str, enum.Enum):
    MEAN = "mean"
    HVG = "hvg"

    def __str__(self) -> str:
        return self.value


def select_panel(
    sections: Iterable[Section],
    n: int = 250,
    method: PanelMethod | str = PanelMethod.MEAN,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The gene panel of a dataset: top ``n`` by mean raw count (or variability).

    ``progress(done, total)`` is called after each section's counts are read.
    """
    method = PanelMethod(method)
    sections = [s for s in sections if s.has_counts]
    if not sections:
        raise DataError("no section has a count matrix: a gene panel needs measured counts")
    if n <= 0:
        raise DataError(f"panel size must be positive, got {n}")
    order: list[str] | None = None
    common: set[str] | None = None
    sums: dict[str, float] = {}
    sq: dict[str, float] = {}
    total = 0
    for k, sec in enumerate(sections):
        counts = sec.load_counts()  # raw table; spot alignment is irrelevant for sums
        genes = counts.genes
        names = list(dict.fromkeys(genes))
        if order is None:
            order = names
        common = set(names) if common is None else common & set(names)
        m = counts.matrix
        if method is PanelMethod.MEAN:
            col = np.asarray(m.sum(axis=0)).ravel()
        else:
            lib = np.asarray(m.sum(axis=1)).ravel()
            lib[lib == 0] = 1.0
            norm = m.multiply(1.0 / lib[:, None]).tocsr() * TARGET_SUM
            norm.data = np.log1p(norm.data)
            col = np.asarray(norm.sum(axis=0)).ravel()
            sqcol = np.asarray(norm.multiply(norm).sum(axis=0)).ravel()
        seen = set()
        for j, g in enumerate(genes):
            if g in seen:
                continue
            seen.add(g)
            sums[g] = sums.get(g, 0.0) + float(col[j])
            if method is PanelMethod.HVG:
                sq[g] = sq.get(g, 0.0) + float(sqcol[j])
        total += counts.n_spots
        if progress is not None:
            progress(k + 1, len(sections))
    assert order is not None and common is not None
    candidates = [g for g in order if g in common]
    if not candidates:
        raise DataError("no gene is present in every section")
    if method is PanelMethod.MEAN:
        score = np.array([sums[g] / total for g in candidates])
    else:
        mean = np.array([sums[g] / total for g in candidates])
        score = np.array([sq[g] / total for g in candidates]) - mean**2
    ranked = np.argsort(-score, kind="stable")
    return [candidates[i] for i in ranked[:n]]


def check_panel(genes: Sequence[str], sections: Iterable[Section]) -> None:
    """Raise when panel genes are absent from some sections' counts, naming which and where."""
    sections = [s for s in sections if s.has_counts]
    absent = {}
    for sec in sections:
        have = set(sec.load_counts().genes)
        gaps = [g for g in genes if g not in have]
        if gaps:
            absent[sec.name] = gaps
    if not absent:
        return
    nowhere = [g for g in genes if all(g in absent.get(s.name, ()) for s in sections)]
    detail = "; ".join(f"{name}: {', '.join(g[:5])}{'…' if len(g) > 5 else ''}" for name, g in absent.items())
    raise DataError(
        f"the gene panel asks for genes absent from {len(absent)} of {len(sections)} section(s) "
        f"({len(nowhere)} of them in no section): {detail}. Choose a panel from this data "
        "(`napari-dkan panel`) or map the symbols."
    )


def normalize(panel_counts: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    """``log10(1 + target_sum · x / Σx)`` per spot over the panel; empty spots stay 0."""
    x = np.asarray(panel_counts, dtype=np.float64)
    if (x < 0).any():
        raise DataError("counts must be non-negative")
    lib = x.sum(axis=1, keepdims=True)
    scaled = np.divide(x * target_sum, lib, out=np.zeros_like(x), where=lib > 0)
    return np.log10(1.0 + scaled).astype(np.float32)


def smooth(values: np.ndarray, spots: SpotTable) -> np.ndarray:
    """Mean of each spot's vector with its existing grid neighbours (module docstring)."""
    values = np.asarray(values, dtype=np.float32)
    if values.shape[0] != len(spots):
        raise DataError(f"{values.shape[0]} expression rows for {len(spots)} spots")
    nbr = spots.neighbour_index(include_self=True)
    valid = nbr >= 0
    gathered = values[np.where(valid, nbr, 0)]  # N×K×G
    gathered *= valid[..., None]
    return (gathered.sum(axis=1) / valid.sum(axis=1, keepdims=True)).astype(np.float32)


def section_targets(
    section: Section,
    panel: Sequence[str],
    smoothing: bool = True,
    missing: str = "error",
) -> np.ndarray:
    """Training targets (spots × panel) of a section, in its spot order."""
    return targets_from_counts(section_panel_counts(section, panel, missing), section.spots, smoothing)


def section_panel_counts(section: Section, panel: Sequence[str], missing: str = "error") -> np.ndarray:
    """Raw counts (spots × panel) of a section, in its spot order."""
    try:
        return np.asarray(section.counts.take_genes(list(panel), missing=missing))
    except DataError as exc:
        raise DataError(f"section {section.name}: {exc}") from exc


def targets_from_counts(panel_counts: np.ndarray, spots: SpotTable, smoothing: bool = True) -> np.ndarray:
    """Targets from a section's raw panel counts (normalised, then smoothed when asked)."""
    y = normalize(panel_counts)
    return smooth(y, spots) if smoothing else y


def read_panel_file(path: str) -> list[str]:
    """A gene panel file: one symbol per line; blank lines and ``#`` comments ignored."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise DataError(f"gene panel file not found: {p}")
    genes = [ln.split("#", 1)[0].strip() for ln in p.read_text().splitlines()]
    genes = [g for g in genes if g]
    if not genes:
        raise DataError(f"gene panel file {p} lists no genes")
    dup = sorted({g for g in genes if genes.count(g) > 1})
    if dup:
        raise DataError(f"gene panel file {p} repeats gene(s): {', '.join(dup[:5])}")
    return genes
