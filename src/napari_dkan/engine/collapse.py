"""Gene collapse: do the predicted maps of different genes look alike more than measured ones?

A network that learns one tissue axis (say tumour vs stroma) and paints every gene with it
scores a fair per-gene Pearson r on the genes that follow that axis, yet its maps are copies of
one another.  Two numbers per slide show it, each beside the same number for the measured maps:

- ``GENE-R``: the mean |r| between the maps of two different genes (Pearson r across spots,
  over all gene pairs; genes constant on the slide left out);
- ``PCS90``: how many principal components of the spots × genes matrix (centred per gene,
  unscaled: the targets' own log space) explain 90 % of its variance.

Predicted values near the measured ones (``-PRED`` vs ``-TRUE``) mean the model keeps the genes
apart as much as the tissue does; a higher ``GENE-R-PRED`` and a lower ``PCS90-PRED`` mean collapse.
"""

from __future__ import annotations

import warnings

import numpy as np

COLLAPSE_KEYS = ("GENE-R-PRED", "GENE-R-TRUE", "PCS90-PRED", "PCS90-TRUE")
EXPLAINED = 0.90


def mean_abs_gene_correlation(values: np.ndarray) -> float:
    """Mean |Pearson r| over the pairs of non-constant columns (genes) of spots × genes."""
    x = np.asarray(values, dtype=np.float64)
    x = x[:, x.std(axis=0) > 1e-12]
    g = x.shape[1]
    if g < 2 or x.shape[0] < 3:
        return float("nan")
    r = np.corrcoef(x, rowvar=False)
    upper = np.triu_indices(g, k=1)
    return float(np.abs(r[upper]).mean())


def components_for(values: np.ndarray, fraction: float = EXPLAINED) -> int:
    """The fewest principal components that explain ``fraction`` of the centred variance."""
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    var = s**2
    total = var.sum()
    if total <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(var) / total, fraction - 1e-12) + 1)


def collapse_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The four collapse numbers of one slide (see the module docstring)."""
    return {"GENE-R-PRED": mean_abs_gene_correlation(pred), "GENE-R-TRUE": mean_abs_gene_correlation(truth),
            "PCS90-PRED": float(components_for(pred)), "PCS90-TRUE": float(components_for(truth))}


def mean_collapse(per_slide: list[dict[str, float]]) -> dict[str, float]:
    """The nan-mean of each collapse number over slides (a fold's value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: float(np.nanmean([s[k] for s in per_slide])) for k in COLLAPSE_KEYS}


def describe(mean: dict[str, float]) -> str:
    """One line for a table's footer."""
    return (f"gene collapse: mean |r| between genes {mean['GENE-R-PRED']:.2f} predicted vs "
            f"{mean['GENE-R-TRUE']:.2f} measured; principal components for 90 %: "
            f"{mean['PCS90-PRED']:.1f} predicted vs {mean['PCS90-TRUE']:.1f} measured")
