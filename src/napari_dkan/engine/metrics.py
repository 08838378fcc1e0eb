"""The paper's evaluation metrics, exactly (method.md §7).

Per slide: MAE and MSE over spots × genes, and each gene's Pearson r across the slide's spots
(NaN for a gene that is constant in prediction or truth).  Per fold (one held-out section or
patient): the nan-mean of its slides' values.  Reported: mean ± population std (ddof 0) over
folds of

- PCC-ALL: the nan-mean over all genes;
- PCC-HEG: over the 50 genes with the highest mean ground truth (all evaluated slides);
- PCC-HVG: over the 50 genes with the highest variance after dividing each spot's ground-truth
  vector by its sum (all evaluated slides);
- PCC-HPG: over the 50 "highly predictive genes": genes are ranked by PCC within each fold
  (rank 0 = lowest; NaN ranks lowest), ranks are summed over folds, and the 50 largest sums
  win.  HPG is chosen from the evaluated model's own results: report it, never select on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

METRIC_KEYS = ("MAE", "MSE", "PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG")
TOP_GENES = 50


def pearson_per_gene(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Pearson r of each column across rows; NaN where either column is constant."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    pc = p - p.mean(axis=0)
    tc = t - t.mean(axis=0)
    denom = np.sqrt((pc**2).sum(axis=0) * (tc**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (pc * tc).sum(axis=0) / denom
    r[~(denom > 1e-12)] = np.nan
    return r


@dataclass
class SlideScores:
    name: str
    mae: float
    mse: float
    pcc: np.ndarray  # per gene


def score_slide(name: str, pred: np.ndarray, truth: np.ndarray) -> SlideScores:
    err = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return SlideScores(name, float(np.abs(err).mean()), float((err**2).mean()), pearson_per_gene(pred, truth))


def _nanmean(x: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, by design
        return np.nanmean(x, axis=axis)


@dataclass
class FoldScores:
    fold: str
    slides: list[SlideScores]
    mae: float = field(init=False)
    mse: float = field(init=False)
    pcc: np.ndarray = field(init=False)  # per gene, nan-mean over the fold's slides

    def __post_init__(self) -> None:
        self.mae = float(_nanmean(np.array([s.mae for s in self.slides])))
        self.mse = float(_nanmean(np.array([s.mse for s in self.slides])))
        self.pcc = _nanmean(np.stack([s.pcc for s in self.slides]), axis=0)


def heg_genes(truths: Sequence[np.ndarray], k: int = TOP_GENES) -> np.ndarray:
    """Indices of the k genes with the highest mean ground truth over all spots."""
    allt = np.concatenate(truths)
    return np.argsort(-allt.mean(axis=0), kind="stable")[:k]


def hvg_genes(truths: Sequence[np.ndarray], k: int = TOP_GENES) -> np.ndarray:
    """Indices of the k genes with the highest variance of sum-normalised ground truth."""
    allt = np.concatenate(truths).astype(np.float64)
    sums = allt.sum(axis=1, keepdims=True)
    norm = np.divide(allt, sums, out=np.zeros_like(allt), where=sums > 0)
    return np.argsort(-norm.var(axis=0), kind="stable")[:k]


def hpg_genes(fold_pcc: Sequence[np.ndarray], k: int = TOP_GENES) -> np.ndarray:
    """Indices of the k genes with the largest summed within-fold PCC rank."""
    total = np.zeros(len(fold_pcc[0]))
    for pcc in fold_pcc:
        filled = np.where(np.isnan(pcc), -np.inf, pcc)
        ranks = np.empty(len(pcc))
        ranks[np.argsort(filled, kind="stable")] = np.arange(len(pcc))
        total += ranks
    return np.argsort(-total, kind="stable")[:k]


@dataclass
class Report:
    """Metrics of one evaluation: per fold, their mean and std, and the gene sets used."""

    folds: list[dict]
    mean: dict[str, float]
    std: dict[str, float]
    genes: dict[str, list[str]]

    def to_dict(self) -> dict:
        return {"folds": self.folds, "mean": self.mean, "std": self.std, "gene_sets": self.genes}


def report(folds: Sequence[FoldScores], truths: Sequence[np.ndarray], panel: Sequence[str]) -> Report:
    """The paper's table row from fold scores and every evaluated slide's ground truth."""
    k = min(TOP_GENES, len(panel))
    sets = {
        "PCC-HEG": heg_genes(truths, k),
        "PCC-HVG": hvg_genes(truths, k),
        "PCC-HPG": hpg_genes([f.pcc for f in folds], k),
    }
    rows = []
    for f in folds:
        row = {"fold": f.fold, "MAE": f.mae, "MSE": f.mse, "PCC-ALL": float(_nanmean(f.pcc))}
        for key, idx in sets.items():
            row[key] = float(_nanmean(f.pcc[idx]))
        # genes with a Pearson r (constant measured values have none): PCC leaves the others out
        rows.append({**{k2: row[k2] for k2 in ("fold", *METRIC_KEYS)}, "genes_with_r": int(np.isfinite(f.pcc).sum())})
    mean = {m: float(_nanmean(np.array([r[m] for r in rows]))) for m in METRIC_KEYS}
    std = {m: float(np.nanstd(np.array([r[m] for r in rows]), ddof=0)) for m in METRIC_KEYS}
    genes = {key: [panel[i] for i in idx] for key, idx in sets.items()}
    return Report(rows, mean, std, genes)
