"""Out-of-domain score: how unlike a model's training images a slide (and each spot) looks.

A model stores a compact summary of the frozen image features (the spots' patch features) it
was trained on: their mean, the top principal axes with their spreads (whitening), and a seeded
sample of at most a few thousand training spots projected onto those axes.

- **Per-spot score**: the mean Euclidean distance, in that whitened space, from the spot to its
  ``k`` nearest training spots, divided by the same quantity for a typical training spot (the
  median over the reference sample, each spot's own entry left out).  About 1 for tissue like
  the training tissue; larger for anything else.
- **Slide score**: the median of the per-spot scores of the slide's spots.
- **Threshold**: set from held-out training sections — each training section is scored by the
  summary of the *other* training sections (and validation sections by the full summary); the
  threshold is the largest of those held-out slide scores times a margin (1.25).  A slide above
  it is reported out of domain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DOMAIN_FILE = "domain.safetensors"
COMPONENTS = 32
REFERENCE_SPOTS = 4000
NEIGHBOURS = 10
MARGIN = 1.25
SCORE_DOC = ("median over the slide's spots of the mean whitened-PCA distance to the 10 nearest "
             "training spots, relative to a typical training spot (about 1 in domain)")


@dataclass
class DomainSummary:
    """What a model knows of its training images: a whitened PCA frame and a reference sample."""

    mean: np.ndarray  # (D,)
    axes: np.ndarray  # (D, p) principal axes
    spread: np.ndarray  # (p,) standard deviation along each axis
    reference: np.ndarray  # (R, p) whitened training spots
    typical: float  # median leave-self-out neighbour distance of the reference spots
    threshold: float = float("inf")  # slide scores above it are out of domain
    sections: list[str] = field(default_factory=list)  # the sections summarised
    held_out: dict[str, float] = field(default_factory=dict)  # held-out slide scores → threshold
    neighbours: int = NEIGHBOURS

    def whiten(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64) - self.mean
        return (x @ self.axes) / self.spread

    def spot_scores(self, features: np.ndarray) -> np.ndarray:
        """Each spot's out-of-domain score (1 ≈ a typical training spot)."""
        from scipy.spatial import cKDTree

        z = self.whiten(features)
        k = min(self.neighbours, len(self.reference))
        dist, _ = cKDTree(self.reference).query(z, k=k)
        dist = np.asarray(dist).reshape(len(z), k)
        return dist.mean(axis=1) / self.typical

    def slide_score(self, features: np.ndarray) -> float:
        return float(np.median(self.spot_scores(features)))

    def save(self, path: Path, extra: Mapping[str, Any] | None = None) -> None:
        from napari_dkan.engine import checkpoint as ckpt

        meta = {"typical": self.typical, "threshold": self.threshold, "sections": self.sections,
                "held_out": self.held_out, "neighbours": self.neighbours, "score": SCORE_DOC,
                "margin": MARGIN, **(extra or {})}
        ckpt.save_tensors(Path(path), {
            "mean": self.mean.astype(np.float32), "axes": self.axes.astype(np.float32),
            "spread": self.spread.astype(np.float32), "reference": self.reference.astype(np.float32),
        }, metadata={"domain": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> DomainSummary:
        from safetensors.numpy import load_file
        from safetensors import safe_open

        arrays = load_file(str(path))
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["domain"])
        return cls(arrays["mean"].astype(np.float64), arrays["axes"].astype(np.float64),
                   arrays["spread"].astype(np.float64), arrays["reference"].astype(np.float64),
                   float(meta["typical"]), float(meta["threshold"]), list(meta.get("sections", [])),
                   {k: float(v) for k, v in meta.get("held_out", {}).items()},
                   int(meta.get("neighbours", NEIGHBOURS)))


def fit_summary(features: Sequence[np.ndarray], sections: Sequence[str] = (),
                components: int = COMPONENTS, reference_spots: int = REFERENCE_SPOTS,
                neighbours: int = NEIGHBOURS, seed: int = 0) -> DomainSummary:
    """The summary of some training spots' patch features (one array per section)."""
    from scipy.spatial import cKDTree

    x = np.concatenate([np.asarray(f, dtype=np.float64) for f in features])
    if len(x) < 3:
        raise ValueError(f"an image-domain summary needs at least 3 training spots, got {len(x)}")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    centred = x - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    p = min(components, len(sv), x.shape[1])
    spread = sv[:p] / np.sqrt(max(len(x) - 1, 1))
    keep = spread > 1e-8 * max(float(spread[0]), 1e-30)
    axes, spread = vt[:p][keep].T, spread[keep]
    z = (centred @ axes) / spread
    if len(z) > reference_spots:
        z = z[rng.choice(len(z), reference_spots, replace=False)]
    k = min(neighbours, len(z) - 1)
    dist, _ = cKDTree(z).query(z, k=k + 1)  # the first neighbour is the spot itself
    typical = float(np.median(np.asarray(dist)[:, 1:].mean(axis=1)))
    return DomainSummary(mean, axes, spread, z, max(typical, 1e-12), sections=list(sections),
                         neighbours=k)


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
