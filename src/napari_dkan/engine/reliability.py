"""Per-gene reliability: how well a model predicts each gene on sections it did not train on.

Stored in a run folder as ``reliability.json``: per panel gene the Pearson r between predicted
and measured values over held-out spots — the mean over folds (and its spread) for a
leave-one-section-out cross-validation of the model's recipe, or over a trained run's
validation spots — with the protocol that produced it named in the file.

A gene is called *reliable* at expected r ≥ 0.3, *weak* from 0.1 and *unreliable* below 0.1
(or when r could not be measured: a gene constant on the held-out spots).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RELIABILITY_FILE = "reliability.json"
FORMAT = "napari-dkan-reliability/1"
RELIABLE = 0.3
UNRELIABLE = 0.1


def verdict(r: float | None) -> str:
    """``reliable`` / ``weak`` / ``unreliable`` for an expected r (NaN or None: unreliable)."""
    if r is None or not math.isfinite(r) or r < UNRELIABLE:
        return "unreliable"
    return "reliable" if r >= RELIABLE else "weak"


@dataclass
class GeneReliability:
    """Expected Pearson r per gene on unseen sections, with how it was measured."""

    genes: list[str]
    r: np.ndarray  # (G,) mean over folds (NaN: not measurable)
    spread: np.ndarray  # (G,) std over folds (NaN with a single fold: unknown)
    protocol: str
    sections: list[str] = field(default_factory=list)  # the held-out sections scored
    per_fold: dict[str, list[float]] = field(default_factory=dict)

    def of(self, gene: str) -> float | None:
        try:
            value = float(self.r[self.genes.index(gene)])
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    def describe(self, gene: str) -> str:
        """E.g. ``ERBB2 — expected r 0.55 on unseen sections: reliable``."""
        r = self.of(gene)
        if gene not in self.genes:
            return f"{gene} — no reliability recorded for this gene"
        if r is None:
            return f"{gene} — expected r not measurable on unseen sections: unreliable"
        spread = float(self.spread[self.genes.index(gene)])
        pm = f" ± {spread:.2f}" if len(self.per_fold) > 1 and math.isfinite(spread) else ""
        return f"{gene} — expected r {r:.2f}{pm} on unseen sections: {verdict(r)}"

    def order(self) -> list[str]:
        """The genes from most to least reliable (unmeasurable last)."""
        key = np.where(np.isfinite(self.r), self.r, -np.inf)
        return [self.genes[i] for i in np.argsort(-key, kind="stable")]

    def to_dict(self) -> dict[str, Any]:
        def clean(a: Any) -> list[float | None]:
            return [None if not math.isfinite(float(v)) else round(float(v), 4) for v in a]

        return {"format": FORMAT, "protocol": self.protocol, "sections": self.sections,
                "thresholds": {"reliable": RELIABLE, "unreliable": UNRELIABLE},
                "genes": self.genes, "r": clean(self.r), "spread": clean(self.spread),
                "per_fold": {k: clean(v) for k, v in self.per_fold.items()}}

    def save(self, path: Path) -> None:
        from napari_dkan.engine import checkpoint as ckpt

        ckpt.write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: Path) -> GeneReliability:
        from napari_dkan.engine import checkpoint as ckpt

        data = ckpt.read_json(Path(path))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        def arr(a: Any) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in a], dtype=np.float64)

        return cls(list(data["genes"]), arr(data["r"]), arr(data["spread"]), data["protocol"],
                   list(data.get("sections", [])),
                   {k: list(arr(v)) for k, v in (data.get("per_fold") or {}).items()})


def from_folds(genes: Sequence[str], per_fold: Mapping[str, np.ndarray], protocol: str) -> GeneReliability:
    """Reliability from per-gene r of several folds (one held-out section or group each)."""
    import warnings

    stack = np.stack([np.asarray(v, dtype=np.float64) for v in per_fold.values()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN genes stay NaN
        mean = np.nanmean(stack, axis=0)
        # one fold says nothing of how much r varies between sections: unknown, not 0 (per gene:
        # a gene with an r in a single fold only, too)
        spread = np.where(np.isfinite(stack).sum(axis=0) > 1, np.nanstd(stack, axis=0), np.nan)
    return GeneReliability(list(genes), mean, spread, protocol, list(per_fold),
                           {k: list(np.asarray(v, dtype=np.float64)) for k, v in per_fold.items()})
