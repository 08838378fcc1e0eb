"""Raw count matrices: reading them from ST tables and 10x HDF5 files, and caching the parse.

A :class:`Counts` holds spots × genes raw UMI counts as a sparse matrix, with the spot ids of
its rows and the gene symbols of its columns.  Parsing a legacy-ST count table (a gzipped TSV of
~700 × 15,000 integers) takes about a second; the parse is cached on disk, keyed by the file's
path, size and modification time, so a dataset is parsed once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from napari_dkan.io.errors import DataError
from napari_dkan.paths import cache_dir

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


@dataclass(frozen=True, eq=False)
class Counts:
    """Raw counts of one section: ``matrix[i, j]`` is spot ``spot_id[i]``, gene ``genes[j]``."""

    matrix: sp.csr_matrix
    genes: np.ndarray
    spot_id: np.ndarray
    #: the file the counts were read from, named in errors
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", sp.csr_matrix(self.matrix, dtype=np.float32))
        object.__setattr__(self, "genes", np.asarray(self.genes).astype(str))
        object.__setattr__(self, "spot_id", np.asarray(self.spot_id).astype(str))
        n, g = self.matrix.shape
        if len(self.spot_id) != n or len(self.genes) != g:
            raise DataError(
                f"count matrix is {n}×{g} but has {len(self.spot_id)} spot ids and "
                f"{len(self.genes)} gene names"
            )
        self._check_values()

    def _check_values(self) -> None:
        """Raw counts are finite and ≥ 0: refuse anything else when it is read, naming the file
        (log-normalised or scaled values would otherwise surface as a bare error much later)."""
        m = self.matrix
        bad, what = ~np.isfinite(m.data), "missing or infinite"
        if not bad.any():
            bad, what = m.data < 0, "negative"
            if not bad.any():
                return
        k = int(np.flatnonzero(bad)[0])
        i, j = int(np.searchsorted(m.indptr, k, side="right")) - 1, int(m.indices[k])
        n = int(bad.sum())
        raise DataError(
            f"{what} counts in {self.source or 'the count matrix'}: {n} value{'s' * (n > 1)}, e.g. "
            f"spot '{self.spot_id[i]}', gene '{self.genes[j]}' = {m.data[k]:g}. Raw counts must "
            "be finite and ≥ 0: give the raw (integer) counts, not normalised or scaled values."
        )

    @property
    def n_spots(self) -> int:
        return self.matrix.shape[0]

    def gene_positions(self) -> dict[str, int]:
        """Gene symbol → column; for a repeated symbol its first column."""
        pos: dict[str, int] = {}
        for j, g in enumerate(self.genes):
            pos.setdefault(g, j)
        return pos

    def take_genes(self, genes: list[str] | np.ndarray, missing: str = "error") -> np.ndarray:
        """Dense spots × ``genes`` counts in the given order.

        ``missing="error"`` raises when a gene is absent; ``"zero"`` fills it with zeros.
        """
        pos = self.gene_positions()
        absent = [g for g in genes if g not in pos]
        if absent and missing == "error":
            raise DataError(
                f"{len(absent)} of {len(genes)} panel genes are absent from these counts: "
                f"{', '.join(absent[:8])}{'…' if len(absent) > 8 else ''}"
            )
        out = np.zeros((self.n_spots, len(genes)), dtype=np.float32)
        present = [(k, pos[g]) for k, g in enumerate(genes) if g in pos]
        if present:
            cols_out, cols_in = zip(*present)
            out[:, list(cols_out)] = self.matrix[:, list(cols_in)].toarray()
        return out

    def align(self, spot_ids: np.ndarray, source: str = "") -> Counts:
        """Rows reordered to ``spot_ids``; every spot must have a row."""
        row = {s: i for i, s in enumerate(self.spot_id)}
        missing = [s for s in spot_ids if s not in row]
        if missing:
            raise DataError(
                f"{len(missing)} spots have no counts in {source or 'the count matrix'}, e.g. "
                f"{', '.join(map(str, missing[:5]))}"
            )
        idx = np.array([row[s] for s in spot_ids], dtype=np.int64)
        return Counts(self.matrix[idx], self.genes, self.spot_id[idx], self.source)


# ---------------------------------------------------------------------------------------
# legacy ST tables


def read_st_counts(path: Path) -> Counts:
    """A legacy-ST count table (spots × genes TSV, optionally gzipped), cached on disk."""
    if not path.is_file():
        raise DataError(f"count file not found: {path}")
    return _cached(path, _parse_st_counts)


def read_st_index(path: Path) -> np.ndarray:
    """Only the spot ids (first column) of a legacy-ST count table; cheap, no parsing."""
    cached = _load_cache(path)
    if cached is not None:
        return cached.spot_id
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as fh:  # type: ignore[operator]
            fh.readline()
            return np.array([line.split("\t", 1)[0] for line in fh if line.strip()], dtype=str)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read count file {path}: {exc}") from exc


def _parse_st_counts(path: Path) -> Counts:
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", index_col=0, low_memory=False)
    except (OSError, EOFError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot parse count file {path}: {exc}") from exc
    if frame.shape[1] == 0:
        raise DataError(f"count file {path} has no gene columns (is it tab-separated?)")
    bad = [c for c, t in frame.dtypes.items() if not np.issubdtype(t, np.number)]
    if bad:
        col = bad[0]
        values = pd.to_numeric(frame[col], errors="coerce")
        row = frame.index[values.isna() & frame[col].notna()]
        example = f" (spot {row[0]!r}: {frame.at[row[0], col]!r})" if len(row) else ""
        raise DataError(
            f"non-numeric counts in {path.name}: column {col!r}{example}"
            f"{f' and {len(bad) - 1} more columns' if len(bad) > 1 else ''}. Counts must be numbers."
        )
    values = frame.to_numpy(dtype=np.float32)
    if np.isnan(values).any():
        r, c = np.argwhere(np.isnan(values))[0]
        raise DataError(f"missing count in {path.name} at spot {frame.index[r]!r}, gene {frame.columns[c]!r}")
    if frame.index.duplicated().any():
        dup = frame.index[frame.index.duplicated()][0]
        raise DataError(f"duplicate spot id {dup!r} in count file {path.name}")
    return Counts(sp.csr_matrix(values), frame.columns.to_numpy(str), frame.index.to_numpy(str),
                  source=path.name)


# ---------------------------------------------------------------------------------------
# 10x HDF5 (Cell Ranger / Space Ranger feature-barcode matrices)


def read_10x_h5(path: Path) -> Counts:
    """A 10x ``*_feature_bc_matrix.h5`` (v3+ layout, or the v2 per-genome layout)."""
    import h5py

    if not path.is_file():
        raise DataError(f"count matrix not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "matrix" in f:
                g = f["matrix"]
                feats = g["features"]
                names = _strings(feats["name"][:])
                keep = np.ones(len(names), dtype=bool)
                if "feature_type" in feats:
                    keep = _strings(feats["feature_type"][:]) == "Gene Expression"
            else:  # Cell Ranger 2 layout: one group per genome
                genome = next(iter(f.keys()))
                g = f[genome]
                names = _strings(g["gene_names"][:])
                keep = np.ones(len(names), dtype=bool)
            barcodes = _strings(g["barcodes"][:])
            n_genes, n_cells = (int(v) for v in g["shape"][:])
            mat = sp.csc_matrix(
                (g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_genes, n_cells)
            )
    except (OSError, KeyError, StopIteration) as exc:
        raise DataError(f"{path.name} is not a readable 10x feature-barcode matrix: {exc}") from exc
    mat = mat.T.tocsr()[:, np.flatnonzero(keep)]
    return Counts(mat, _unique_names(names[keep]), barcodes, source=path.name)


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=str)


def _unique_names(names: np.ndarray) -> np.ndarray:
    """Repeated gene symbols get ``-1``, ``-2``… suffixes (anndata's convention)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}-{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return np.array(out, dtype=str)


# ---------------------------------------------------------------------------------------
# on-disk cache of parsed tables


def _cache_path(path: Path) -> Path:
    from napari_dkan.storage import file_identity  # storage imports io.errors: not at import time

    key = f"{file_identity(path)}|v{_CACHE_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    return cache_dir("counts") / f"{path.name.split('.')[0]}-{digest}.npz"


def _load_cache(path: Path) -> Counts | None:
    try:
        cp = _cache_path(path)
    except OSError:
        return None
    if not cp.exists():
        return None
    try:
        with np.load(cp, allow_pickle=False) as z:
            mat = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            return Counts(mat, z["genes"], z["spot_id"], source=path.name)
    except Exception:  # noqa: BLE001 - a broken cache file is rebuilt, never trusted
        cp.unlink(missing_ok=True)
        return None


def _cached(path: Path, parse: callable) -> Counts:  # type: ignore[valid-type]
    hit = _load_cache(path)
    if hit is not None:
        return hit
    counts = parse(path)
    from napari_dkan.storage import StorageError, atomic_write

    m = counts.matrix

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: numpy would append ".npz" to a path
            np.savez(fh, data=m.data, indices=m.indices, indptr=m.indptr, shape=np.array(m.shape),
                     genes=counts.genes, spot_id=counts.spot_id)

    try:
        atomic_write(_cache_path(path), write)
    except (StorageError, OSError) as exc:
        log.warning("parsed counts of %s were not cached (%s); continuing without the cache", path.name, exc)
    return counts
