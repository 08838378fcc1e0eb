"""Per-spot, per-gene prediction intervals by normalised split-conformal prediction.

Calibration uses spots the model did not train on (a run's inner-validation spots).  They are
split at random into two halves:

1. **Scale** (half A): for each gene, a ridge regression of the absolute residual |y − ŷ| on
   what is known at prediction time — the gene's prediction ŷ_g, the spot's mean prediction over
   the panel, and the spot's out-of-domain score (how far its image lies from the training
   images; image-feature axes were tried and made the intervals wider on unseen sections).  Its output, floored at
   a fraction of the gene's mean absolute residual, is the spot's scale σ_g(x).
2. **Conformal** (half B): the normalised scores |y − ŷ| / σ_g(x); for a nominal level 1 − α the
   interval is ŷ ± q·σ_g(x) with q the ⌈(n + 1)(1 − α)⌉-th smallest score of the gene.  Under
   exchangeability of calibration and test spots each gene's interval covers with probability
   ≥ 1 − α; sections that differ from the calibration section (depth, staining) break that
   assumption, and the benchmark table says where.

The scores are stored, so any level can be asked for later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dkan.engine.domain import DomainSummary

CALIBRATION_FILE = "calibration.safetensors"
DEFAULT_LEVEL = 0.9
RIDGE = 1.0
FLOOR = 0.1  # σ ≥ FLOOR × the gene's mean absolute residual
METHOD = ("normalised split-conformal: per-gene ridge model of |residual| on the prediction, the "
          "spot's mean prediction and its out-of-domain score "
          "(fitted on half of the calibration spots), conformal quantile on the other half")


def spot_context(pred: np.ndarray, features: np.ndarray | None, domain: DomainSummary | None) -> np.ndarray:
    """The per-spot inputs of the scale model shared by all genes (N × S)."""
    pred = np.asarray(pred, dtype=np.float64)
    cols = [pred.mean(axis=1, keepdims=True)]
    if domain is not None and features is not None:
        cols.append(np.log(np.maximum(domain.spot_scores(features), 1e-6))[:, None])
    return np.concatenate(cols, axis=1)


@dataclass
class ScaleModel:
    """σ_g(x) = max(floor_g, [1, ŷ_g, context(x)] · coef_g)."""

    coef: np.ndarray  # (G, 2 + S)
    floor: np.ndarray  # (G,)
    centre: np.ndarray  # (1 + S,) mean of [ŷ_g, context] inputs … per design column (ŷ pooled)
    width: np.ndarray  # (1 + S,)

    def _design(self, pred: np.ndarray, context: np.ndarray, g: slice | int = slice(None)) -> np.ndarray:
        # (N, G, 2 + S): intercept, standardised prediction of each gene, standardised context
        n, ng = pred[:, g].reshape(len(pred), -1).shape
        yhat = (pred[:, g].reshape(n, ng) - self.centre[0]) / self.width[0]
        ctx = (context - self.centre[1:]) / self.width[1:]
        return np.concatenate([np.ones((n, ng, 1)), yhat[:, :, None],
                               np.broadcast_to(ctx[:, None, :], (n, ng, ctx.shape[1]))], axis=2)

    def scale(self, pred: np.ndarray, context: np.ndarray) -> np.ndarray:
        pred = np.asarray(pred, dtype=np.float64)
        sigma = np.einsum("ngf,gf->ng", self._design(pred, context), self.coef)
        return np.maximum(sigma, self.floor[None, :])


def fit_scale(pred: np.ndarray, truth: np.ndarray, context: np.ndarray, ridge: float = RIDGE) -> ScaleModel:
    pred = np.asarray(pred, dtype=np.float64)
    absres = np.abs(np.asarray(truth, dtype=np.float64) - pred)
    centre = np.concatenate([[pred.mean()], context.mean(axis=0)])
    width = np.concatenate([[pred.std() or 1.0], context.std(axis=0)])
    width[width < 1e-12] = 1.0
    model = ScaleModel(np.zeros((pred.shape[1], 2 + context.shape[1])), np.zeros(pred.shape[1]),
                       centre, width)
    design = model._design(pred, context)
    penalty = ridge * np.eye(design.shape[2])
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    for g in range(pred.shape[1]):
        x = design[:, g, :]
        model.coef[g] = np.linalg.solve(x.T @ x + penalty, x.T @ absres[:, g])
    model.floor = np.maximum(FLOOR * absres.mean(axis=0), 1e-6)
    return model


@dataclass
class Calibration:
    """A model's conformal calibration: its scale model and the sorted normalised scores."""

    scale_model: ScaleModel
    scores: np.ndarray  # (n, G) normalised scores of the conformal half, sorted per gene
    sections: list[str]
    genes: list[str]

    def quantile(self, level: float = DEFAULT_LEVEL) -> np.ndarray:
        """Per gene, the conformal quantile of the normalised scores at a nominal level."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"a nominal level is a fraction between 0 and 1, got {level}")
        n = len(self.scores)
        rank = int(np.ceil((n + 1) * level))
        if rank > n:
            return np.full(self.scores.shape[1], np.inf)
        return self.scores[rank - 1]

    def interval_halfwidth(self, pred: np.ndarray, context: np.ndarray,
                           level: float = DEFAULT_LEVEL) -> np.ndarray:
        """Half-width of each spot's interval per gene (N × G)."""
        return self.scale_model.scale(pred, context) * self.quantile(level)[None, :]

    def save(self, path: Path, extra: dict | None = None) -> None:
        from napari_dkan.engine import checkpoint as ckpt

        sm = self.scale_model
        meta = {"method": METHOD, "sections": self.sections, "genes": self.genes,
                "n_scores": len(self.scores), **(extra or {})}
        ckpt.save_tensors(Path(path), {
            "coef": sm.coef.astype(np.float32), "floor": sm.floor.astype(np.float32),
            "centre": sm.centre.astype(np.float32), "width": sm.width.astype(np.float32),
            "scores": self.scores.astype(np.float32),
        }, metadata={"calibration": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> Calibration:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        a = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["calibration"])
        return cls(ScaleModel(a["coef"], a["floor"], a["centre"], a["width"]), a["scores"],
                   list(meta["sections"]), list(meta["genes"]))


def calibrate(pred: np.ndarray, truth: np.ndarray, context: np.ndarray, genes: Sequence[str],
              sections: Sequence[str] = (), seed: int = 0) -> Calibration:
    """Fit the scale on one random half of the calibration spots, the scores on the other."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    n = len(pred)
    if n < 20:
        raise ValueError(f"conformal calibration needs at least 20 held-out spots, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    half_a, half_b = order[: n // 2], order[n // 2:]
    scale = fit_scale(pred[half_a], truth[half_a], context[half_a])
    sigma = scale.scale(pred[half_b], context[half_b])
    scores = np.sort(np.abs(truth[half_b] - pred[half_b]) / sigma, axis=0)
    return Calibration(scale, scores, list(sections), list(genes))


def coverage_and_width(pred: np.ndarray, truth: np.ndarray, halfwidth: np.ndarray) -> tuple[float, float]:
    """Fraction of spot × gene values inside ŷ ± half-width, and the mean interval width."""
    inside = np.abs(np.asarray(truth) - np.asarray(pred)) <= halfwidth
    return float(inside.mean()), float(2.0 * np.mean(halfwidth))
