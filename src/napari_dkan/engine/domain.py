"""Out-of-domain score: how unlike a model's training images a slide (and each spot) looks.

A model stores a compact summary of the frozen image features (the spots' patch features) it
was trained on: their per-dimension mean and standard deviation, and a seeded sample of at most
1,000 training spots, standardised (float16).

- **Per-spot score**: the mean Euclidean distance, in that standardised feature space, from the
  spot to its ``k = 10`` nearest training spots, divided by the same quantity for a typical
  training spot (the median over the reference sample, each spot's own entry left out).  About
  1 for tissue like the training tissue; larger for anything else.  Standardising every feature
  dimension makes the features that training tissue hardly uses (and other images do) count.
- **Slide score**: the median of the per-spot scores of the slide's spots.
- **Threshold**: set from held-out training sections — each training section is scored by the
  summary of the *other* training sections (and validation sections by the full summary); the
  threshold is the largest of those held-out slide scores times a margin (2).  A slide above it
  is reported out of domain.  The margin leaves room for a new patient's breast cancer (HER2ST B4
  held out from patient C's sections scores 1.6 where C sections score ≈ 1; other tissue ≥ 5:
  ``benchmarks/README.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DOMAIN_FILE = "domain.safetensors"
REFERENCE_SPOTS = 1000
NEIGHBOURS = 10
MARGIN = 2.0
SCORE_DOC = ("median over the slide's spots of the mean standardised-feature distance to the 10 "
             "nearest training spots, relative to a typical training spot (about 1 in domain)")


def _knn_mean_distance(reference: np.ndarray, queries: np.ndarray, k: int, skip_self: bool = False,
                       chunk: int = 512) -> np.ndarray:
    """Mean distance of each query to its k nearest reference rows (brute force: high dimension)."""
    ref = np.asarray(reference, dtype=np.float32)
    ref_sq = (ref * ref).sum(axis=1)
    out = np.empty(len(queries), dtype=np.float64)
    kk = k + 1 if skip_self else k
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start:start + chunk], dtype=np.float32)
        d2 = (q * q).sum(axis=1)[:, None] + ref_sq[None, :] - 2.0 * q @ ref.T
        np.maximum(d2, 0.0, out=d2)
        part = np.partition(d2, kk - 1, axis=1)[:, :kk]
        part.sort(axis=1)
        if skip_self:
            part = part[:, 1:]
        out[start:start + chunk] = np.sqrt(part).mean(axis=1)
    return out


@dataclass
class DomainSummary:
    """What a model knows of its training images: feature scales and a reference sample."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,) standard deviation of each feature dimension
    reference: np.ndarray  # (R, D) standardised training spots
    typical: float  # median leave-self-out neighbour distance of the reference spots
    threshold: float = float("inf")  # slide scores above it are out of domain
    sections: list[str] = field(default_factory=list)  # the sections summarised
    held_out: dict[str, float] = field(default_factory=dict)  # held-out slide scores → threshold
    neighbours: int = NEIGHBOURS

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.scale

    def spot_scores(self, features: np.ndarray) -> np.ndarray:
        """Each spot's out-of-domain score (1 ≈ a typical training spot)."""
        if len(features) == 0:
            return np.zeros(0)
        k = min(self.neighbours, len(self.reference))
        return _knn_mean_distance(self.reference, self.standardise(features), k) / self.typical

    def slide_score(self, features: np.ndarray) -> float:
        return float(np.median(self.spot_scores(features)))

    def save(self, path: Path, extra: Mapping[str, Any] | None = None) -> None:
        from napari_dkan.engine import checkpoint as ckpt

        meta = {"typical": self.typical, "threshold": self.threshold, "sections": self.sections,
                "held_out": self.held_out, "neighbours": self.neighbours, "score": SCORE_DOC,
                "margin": MARGIN, **(extra or {})}
        ckpt.save_tensors(Path(path), {
            "mean": self.mean.astype(np.float32), "scale": self.scale.astype(np.float32),
            "reference": self.reference.astype(np.float16),
        }, metadata={"domain": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> DomainSummary:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["domain"])
        return cls(arrays["mean"].astype(np.float64), arrays["scale"].astype(np.float64),
                   arrays["reference"].astype(np.float32),
                   float(meta["typical"]), float(meta["threshold"]), list(meta.get("sections", [])),
                   {k: float(v) for k, v in meta.get("held_out", {}).items()},
                   int(meta.get("neighbours", NEIGHBOURS)))


def fit_summary(features: Sequence[np.ndarray], sections: Sequence[str] = (),
                reference_spots: int = REFERENCE_SPOTS, neighbours: int = NEIGHBOURS,
                seed: int = 0) -> DomainSummary:
    """The summary of some training spots' patch features (one array per section)."""
    x = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
    if len(x) < 3:
        raise ValueError(f"an image-domain summary needs at least 3 training spots, got {len(x)}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-30), scale, 1.0)
    z = (x - mean) / scale
    if len(z) > reference_spots:
        z = z[np.random.default_rng(seed).choice(len(z), reference_spots, replace=False)]
    z = z.astype(np.float16).astype(np.float32)  # as stored
    k = min(neighbours, len(z) - 1)
    typical = float(np.median(_knn_mean_distance(z, z, k, skip_self=True)))
    return DomainSummary(mean, scale, z, max(typical, 1e-12), sections=list(sections), neighbours=k)


def fit_with_threshold(train: Mapping[str, np.ndarray], validation: Mapping[str, np.ndarray] | None = None,
                       margin: float = MARGIN, **kw: Any) -> DomainSummary:
    """A summary of every training section with its threshold set from held-out sections.

    Each training section is scored by the summary of the others (when there are at least two),
    each validation section by the full summary; the threshold is the largest held-out slide
    score × ``margin``.  With nothing held out, the threshold stays infinite (never warns).
    """
    names = list(train)
    summary = fit_summary([train[n] for n in names], names, **kw)
    held: dict[str, float] = {}
    if len(names) >= 2:
        for n in names:
            others = [train[m] for m in names if m != n]
            held[n] = fit_summary(others, **kw).slide_score(train[n])
    for n, feats in (validation or {}).items():
        if n not in held:
            held[n] = summary.slide_score(feats)
    summary.held_out = held
    if held:
        summary.threshold = float(max(held.values()) * margin)
    return summary


@dataclass(frozen=True)
class DomainCheck:
    """A slide's out-of-domain verdict."""

    score: float
    threshold: float
    spot_scores: np.ndarray

    @property
    def out_of_domain(self) -> bool:
        return bool(self.score > self.threshold)


def check_domain(summary: DomainSummary, features: np.ndarray) -> DomainCheck:
    spots = summary.spot_scores(features)
    return DomainCheck(float(np.median(spots)) if len(spots) else float("nan"), summary.threshold, spots)
