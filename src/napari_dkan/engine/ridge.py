"""Ridge regression on frozen patch features (the HEST benchmark's linear probe).

Features are standardised on the training spots; the penalty is chosen on the inner
validation split (the same split the neural models stop on) from a log grid, by mean per-gene
Pearson r; the final model is the one fitted on the training spots with that penalty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_dkan.engine.data import SectionData
from napari_dkan.engine.metrics import pearson_per_gene

ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


@dataclass
class RidgeModel:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # D×G
    intercept: np.ndarray  # G
    alpha: float
    history: list[dict] = field(default_factory=list)

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return (z @ self.coef + self.intercept).astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}

    @classmethod
    def from_tensors(cls, t: dict, alpha: float) -> RidgeModel:
        a = {k: np.asarray(v, np.float64) for k, v in t.items()}
        return cls(a["mean"], a["scale"], a["coef"], a["intercept"], alpha)


def _solve(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import Ridge

    reg = Ridge(alpha=alpha, fit_intercept=True).fit(z, y)
    return reg.coef_.T.astype(np.float64), reg.intercept_.astype(np.float64)


def fit_ridge(train: Sequence[SectionData], val: Sequence[SectionData], alphas: Sequence[float] = ALPHAS) -> RidgeModel:
    x = np.concatenate([s.patch_feat for s in train]).astype(np.float64)
    y = np.concatenate([s.y for s in train]).astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    z = (x - mean) / scale
    history = []
    best_alpha, best_score = float(alphas[len(alphas) // 2]), -np.inf
    if val:
        for alpha in alphas:
            coef, icpt = _solve(z, y, alpha)
            model = RidgeModel(mean, scale, coef, icpt, alpha)
            scores = [np.nanmean(pearson_per_gene(model.predict(s.patch_feat), s.y)) for s in val]
            score = float(np.nanmean(scores))
            history.append({"alpha": alpha, "val_pcc": score})
            if score > best_score:
                best_alpha, best_score = alpha, score
    coef, icpt = _solve(z, y, best_alpha)
    return RidgeModel(mean, scale, coef, icpt, best_alpha, history)
