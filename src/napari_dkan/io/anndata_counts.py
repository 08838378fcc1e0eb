"""Which matrix of an AnnData holds the counts, and what to do when none holds raw counts.

Users write ``.h5ad`` files after scanpy's usual steps, so ``X`` is often not counts:

- ``layers["counts"]``, then ``.raw``, then ``X`` are tried in that order, and the first whose
  values are whole non-negative numbers is taken as raw counts;
- failing that, an ``X`` of non-negative fractional values up to ~30 is taken as
  ``log1p``-normalised (scanpy's ``normalize_total`` + ``log1p``) and undone with ``expm1`` (in
  the base stored in ``uns["log1p"]``).  That gives counts times a per-spot factor, and the
  model's targets (each spot scaled to 10⁴ over the panel) do not depend on that factor, so the
  targets are the ones raw counts would give;
- larger fractional values are taken as normalised, not logged, and used as they are (the same
  argument);
- negative values (scaled, z-scored data) cannot be undone: refused, saying what to store.

Every choice other than raw counts is said in a note for the user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from napari_dkan.io.errors import DataError

#: log1p of 10⁴ is 9.2 and of 10⁶ is 13.8: fractional values above this are not logged
_LOG_MAX = 30.0
#: columns that hold gene symbols when var_names are ids (scanpy, cellxgene, Seurat exports)
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "feature_name", "symbol")


def _csr(matrix: Any) -> sp.csr_matrix:
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix, dtype=np.float64)
    return sp.csr_matrix(np.asarray(matrix, dtype=np.float64))


def classify(m: sp.csr_matrix) -> str:
    """``counts``, ``log1p``, ``normalised``, ``scaled`` (negative values) or ``invalid``."""
    values = m.data
    if values.size == 0:
        return "counts"
    if not np.isfinite(values).all():
        return "invalid"
    if (values < 0).any():
        return "scaled"
    if np.allclose(values, np.round(values), atol=1e-6):
        return "counts"
    return "log1p" if float(values.max()) <= _LOG_MAX else "normalised"


def count_matrix(adata: Any, source: str) -> tuple[sp.csr_matrix, np.ndarray, list[str]]:
    """(spots × genes counts, gene names, notes) from an AnnData; raises when none is usable."""
    candidates: list[tuple[str, Any, Any]] = []
    if "counts" in adata.layers:
        candidates.append(('layers["counts"]', adata.layers["counts"], adata.var))
    if adata.raw is not None:
        candidates.append((".raw.X", adata.raw.X, adata.raw.var))
    if adata.X is not None:
        candidates.append(("X", adata.X, adata.var))
    if not candidates:
        raise DataError(f"{source} holds no expression matrix (X is empty, no counts layer)")
    kinds = []
    for where, matrix, var in candidates:
        m = _csr(matrix)
        kind = classify(m)
        kinds.append((where, kind))
        if kind == "counts":
            notes = [] if where != ".raw.X" else [f"{source}: raw counts taken from .raw (X is not counts)"]
            return m, gene_names(var), notes
    where, matrix, var = candidates[-1]
    kind = kinds[-1][1]
    m = _csr(matrix)
    if kind == "log1p":
        base = ((adata.uns.get("log1p") or {}).get("base")) if "log1p" in adata.uns else None
        if base is None:
            m.data = np.expm1(m.data)
            how = "expm1"
        else:
            m.data = np.power(float(base), m.data) - 1.0
            how = f"{float(base):g}^x − 1"
        m.eliminate_zeros()
        note = (f"{source}: X holds log-normalised values, not raw counts; undone with {how}. "
                "The model's targets scale each spot to 10⁴ over the panel, so they match raw "
                "counts' as long as X was log1p(counts × a per-spot factor) (scanpy's "
                "normalize_total + log1p)")
        return m, gene_names(var), [note]
    if kind == "normalised":
        note = (f"{source}: X holds normalised, non-integer values, not raw counts; used as "
                "they are (the model's targets scale each spot to 10⁴ over the panel, so a "
                "per-spot factor does not change them)")
        return m, gene_names(var), [note]
    tried = ", ".join(f"{w} ({k})" for w, k in kinds)
    what = "negative values (scaled or z-scored data)" if kind == "scaled" else "NaN or infinite values"
    raise DataError(
        f"{source}: no raw counts found — tried {tried}; {where} holds {what}, which cannot be "
        "turned back into expression. Store raw counts in layers['counts'] (or .raw) before "
        "scaling, and write the file again"
    )


def gene_names(var: Any) -> np.ndarray:
    """Gene symbols: var_names, or a symbol column when var_names are Ensembl ids."""
    from napari_dkan.io.gene_names import ensembl_share

    names = var.index.to_numpy(str)
    if ensembl_share(names) >= 0.5:
        for col in SYMBOL_COLUMNS:
            if col in var.columns:
                symbols = var[col].astype(str).to_numpy()
                if ensembl_share(symbols) < 0.5:
                    return np.where((symbols == "") | (symbols == "nan"), names, symbols)
    return names
