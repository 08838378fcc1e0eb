"""Per-spot, per-gene prediction intervals by normalised split-conformal prediction.

Calibration uses spots the model did not train on (a run's inner-validation spots).  They are
split at random into two halves:

1. **Scale** (half A): for each gene, a ridge regression of the absolute residual |y − ŷ| on
   what is known at prediction time — the gene's prediction ŷ_g, the spot's mean prediction over
   the panel, and the spot's out-of-domain score (how far its image lies from the training
   images; image-feature axes were tried and made the intervals wider on unseen sections).  Its
   output, floored at a fraction of the gene's mean absolute residual, is the spot's scale σ_g(x).
2. **Conformal** (half B): the normalised scores |y − ŷ| / σ_g(x); for a nominal level 1 − α the
   interval is ŷ ± q·σ_g(x) with q the ⌈(n + 1)(1 − α)⌉-th smallest score of the gene.  Under
   exchangeability of calibration and test spots each gene's interval covers with probability
   ≥ 1 − α; sections that differ from the calibration section (depth, staining) break that
   assumption, and the benchmark table says where.

**Depth-aware** calibrations (version 2, :class:`Measurement` present) split the spot's variance
into the model's error and the measurement's noise (:mod:`.measurement`): the scale model's
output, read as a standard deviation (× √(π/2) for a normal |residual|), is the total at the
calibration depth; less the reading variance there, it is the model-error variance, floored.
A section at another depth gets sd² = model-error variance + its own reading variance, the
centre moves by the change in the reading's mean (shallow readings are lower), and the lower
bound is clipped at 0 (no target is negative).  The normalised scores are taken with that sd at
the calibration depth, so at the calibration depth the intervals are the usual conformal ones.
Version-1 files (written before) keep their symmetric ŷ ± q·σ intervals.

**Version 3** adds two options, each recorded in the file: ``spot_depth`` — a section with counts
is read at each spot's own depth (its neighbourhood's panel total) rather than at its depth
profile, and the scale model predicts the model-error variance directly (squared residual less
the spot's reading variance); ``domain_reference`` — the calibration sections' slide
out-of-domain score: a section that scores higher gets its model-error sd multiplied by
score ÷ reference (never less than 1), since a model errs more on images unlike those it learned
from than on its calibration section.

The scores are stored, so any level can be asked for later.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dkan.engine.domain import DomainSummary
from napari_dkan.engine.measurement import DepthProfile
from napari_dkan.io.expression import TARGET_MAX

CALIBRATION_FILE = "calibration.safetensors"
DEFAULT_LEVEL = 0.9
RIDGE = 1.0
FLOOR = 0.1  # σ ≥ FLOOR × the gene's mean absolute residual
METHOD = ("normalised split-conformal: per-gene ridge model of |residual| on the prediction, the "
          "spot's mean prediction and its out-of-domain score "
          "(fitted on half of the calibration spots), conformal quantile on the other half")
DEPTH_METHOD = METHOD + ("; depth-aware: the scale split into model error and the Poisson reading "
                         "noise of the section's sequencing depth (over-dispersed, neighbour-averaged)")
SPOT_DEPTH_METHOD = "; each spot read at its own depth where the section has counts"
DOMAIN_METHOD = ("; model-error sd × max(1, the section's out-of-domain score ÷ the calibration "
                 "sections')")
NORMAL_SD = float(np.sqrt(np.pi / 2))  # E|Z|·√(π/2) = sd for a normal error


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


def fit_scale(pred: np.ndarray, absres: np.ndarray, context: np.ndarray, ridge: float = RIDGE) -> ScaleModel:
    """The per-gene ridge model of ``absres`` (the absolute residuals, or any scale target)."""
    pred = np.asarray(pred, dtype=np.float64)
    absres = np.asarray(absres, dtype=np.float64)
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
class Measurement:
    """What a depth-aware calibration knows of the readings: the calibration sections' depth
    and the counts' over-dispersion relative to Poisson."""

    reference: DepthProfile
    overdispersion: float
    #: version 3: sections with counts are read at each spot's own depth
    spot_depth: bool = False


@dataclass
class Reading:
    """The reading noise behind one prediction (N × G each): the move of its mean from the
    calibration depth to the section's depth, and its variance at either depth."""

    shift: np.ndarray
    var_reference: np.ndarray
    var_section: np.ndarray


@dataclass
class Calibration:
    """A model's conformal calibration: its scale model and the sorted normalised scores
    (``measurement`` present: depth-aware, version 2)."""

    scale_model: ScaleModel
    scores: np.ndarray  # (n, G) normalised scores of the conformal half, sorted per gene
    sections: list[str]
    genes: list[str]
    measurement: Measurement | None = None
    #: version 3: the calibration sections' slide out-of-domain score (None: no domain scaling)
    domain_reference: float | None = None

    @property
    def spot_depth(self) -> bool:
        """Version 3: sections with counts are read at each spot's own depth."""
        return self.measurement is not None and self.measurement.spot_depth

    @property
    def version(self) -> int:
        if self.domain_reference is not None or self.spot_depth:
            return 3
        return 1 if self.measurement is None else 2

    @property
    def method(self) -> str:
        text = METHOD if self.measurement is None else DEPTH_METHOD
        if self.spot_depth:
            text += SPOT_DEPTH_METHOD
        return text + (DOMAIN_METHOD if self.domain_reference is not None else "")

    def inflation(self, slide_score: float | None) -> float:
        """The factor on the model-error sd for a section of this out-of-domain score (1 without
        a domain reference or a score)."""
        if self.domain_reference is None or slide_score is None or not np.isfinite(slide_score):
            return 1.0
        return max(1.0, float(slide_score) / max(self.domain_reference, 1e-12))

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
                           level: float = DEFAULT_LEVEL, inflation: float = 1.0) -> np.ndarray:
        """Half-width of each spot's depth-blind interval ŷ ± q·σ per gene (N × G)."""
        return self.scale_model.scale(pred, context) * self.quantile(level)[None, :] * inflation

    def spread(self, pred: np.ndarray, context: np.ndarray, reading: Reading,
               inflation: float = 1.0) -> np.ndarray:
        """A depth-aware calibration's per-spot sd at the section's depth (N × G); the
        model-error part multiplied by ``inflation``."""
        sm = self.scale_model
        if self.spot_depth:
            model_var = sm.scale(pred, context)  # this scale model predicts the model-error variance
        else:
            model_var = np.maximum(sm.scale(pred, context) ** 2 - reading.var_reference, sm.floor[None, :] ** 2)
        return np.sqrt(model_var * inflation**2 + reading.var_section)

    def bounds(self, pred: np.ndarray, context: np.ndarray, level: float = DEFAULT_LEVEL,
               reading: Reading | None = None, inflation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of each spot's interval per gene (N × G each); a
        depth-aware calibration needs the ``reading`` of the section; ``inflation``: the
        factor on the model error (:meth:`inflation`)."""
        pred = np.asarray(pred, dtype=np.float64)
        if self.measurement is None:
            half = self.interval_halfwidth(pred, context, level, inflation)
            return np.clip(pred - half, 0.0, TARGET_MAX), np.clip(pred + half, 0.0, TARGET_MAX)
        if reading is None:
            raise ValueError("a depth-aware calibration needs the reading noise of the section")
        half = self.quantile(level)[None, :] * self.spread(pred, context, reading, inflation)
        centre = pred + reading.shift
        # a target lies in [0, TARGET_MAX]: both bounds are clipped to it (a centre far below 0
        # gives [0, 0], never an upper bound under the lower one; an out-of-domain slide's widened
        # intervals stop at the largest value a gene can take)
        return (np.clip(centre - half, 0.0, TARGET_MAX), np.clip(centre + half, 0.0, TARGET_MAX))

    def save(self, path: Path, extra: dict | None = None) -> None:
        from napari_dkan.engine import checkpoint as ckpt

        sm = self.scale_model
        meta = {"version": self.version, "method": self.method,
                "sections": self.sections, "genes": self.genes, "n_scores": len(self.scores), **(extra or {})}
        if self.version == 3:
            meta["domain_reference"] = self.domain_reference
            meta["spot_depth"] = self.spot_depth
        tensors = {"coef": sm.coef.astype(np.float32), "floor": sm.floor.astype(np.float32),
                   "centre": sm.centre.astype(np.float32), "width": sm.width.astype(np.float32),
                   "scores": self.scores.astype(np.float32)}
        if self.measurement is not None:
            meta["overdispersion"] = self.measurement.overdispersion
            tensors["reference_depth"] = self.measurement.reference.quantiles.astype(np.float32)
        ckpt.save_tensors(Path(path), tensors, metadata={"calibration": json.dumps(meta)})

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """A calibration file of any version (files without one are version 1)."""
        from safetensors import safe_open
        from safetensors.numpy import load_file

        a = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["calibration"])
        version = int(meta.get("version", 1))
        if version > 3:
            raise ValueError(f"{path} is a calibration of version {version}; this napari-dkan reads "
                             "versions 1 to 3: update napari-dkan")
        measurement = None
        if version >= 2 and "reference_depth" in a:
            measurement = Measurement(DepthProfile(a["reference_depth"], "calibration"),
                                      float(meta["overdispersion"]), bool(meta.get("spot_depth", False)))
        reference = meta.get("domain_reference") if version == 3 else None
        return cls(ScaleModel(a["coef"], a["floor"], a["centre"], a["width"]), a["scores"],
                   list(meta["sections"]), list(meta["genes"]), measurement,
                   None if reference is None else float(reference))


def calibrate(pred: np.ndarray, truth: np.ndarray, context: np.ndarray, genes: Sequence[str],
              sections: Sequence[str] = (), seed: int = 0, measurement: Measurement | None = None,
              reading_var: np.ndarray | Reading | None = None,
              domain_reference: float | None = None) -> Calibration:
    """Fit the scale on one random half of the calibration spots, the scores on the other.

    With ``measurement`` (and ``reading_var``, the calibration spots' reading variance at their
    section's depth, or — version 3's ``spot_depth`` — their :class:`Reading` at each spot's own
    depth against the reference profile) the calibration is depth-aware (module docstring);
    ``domain_reference``: the calibration spots' slide out-of-domain score, for version 3's
    domain scaling (on the calibration spots themselves its factor is 1)."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    n = len(pred)
    if n < 20:
        raise ValueError(f"conformal calibration needs at least 20 held-out spots, got {n}")
    if (measurement is None) != (reading_var is None):
        raise ValueError("a depth-aware calibration needs both the measurement and the reading variance")
    if measurement is not None and measurement.spot_depth != isinstance(reading_var, Reading):
        raise ValueError("a calibration at each spot's own depth needs the calibration spots' Reading "
                         "(their shift and variance against the reference depth), and only it does")
    order = np.random.default_rng(seed).permutation(n)
    half_a, half_b = order[: n // 2], order[n // 2:]
    absres = np.abs(truth - pred)
    if measurement is None:
        scale = fit_scale(pred[half_a], absres[half_a], context[half_a])
        sigma = scale.scale(pred[half_b], context[half_b])
        return Calibration(scale, np.sort(absres[half_b] / sigma, axis=0), list(sections), list(genes),
                           domain_reference=domain_reference)
    if isinstance(reading_var, Reading):
        # each spot at its own depth: ŷ stands for the reading at the calibration sections' depth
        # profile, so the spot's centre moves; the scale model is fitted to the model-error
        # variance itself (squared residual less the spot's own reading variance): a model of
        # the total sd would average readings of very different depths
        home = reading_var
        absres = np.abs(truth - pred - home.shift)
        target = absres[half_a] ** 2 - home.var_section[half_a]
        scale = fit_scale(pred[half_a], target, context[half_a])
        scale.floor = np.maximum(FLOOR**2 * (absres[half_a] ** 2).mean(axis=0), 1e-8)
    else:
        var = np.asarray(reading_var, dtype=np.float64)
        home = Reading(np.zeros_like(var), var, var)
        scale = fit_scale(pred[half_a], NORMAL_SD * absres[half_a], context[half_a])
    at_home = Reading(home.shift[half_b], home.var_reference[half_b], home.var_section[half_b])
    cal = Calibration(scale, np.zeros((0, pred.shape[1])), list(sections), list(genes), measurement,
                      domain_reference)
    cal.scores = np.sort(absres[half_b] / cal.spread(pred[half_b], context[half_b], at_home), axis=0)
    return cal


def coverage_and_width(truth: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[float, float]:
    """Fraction of spot × gene values inside [lower, upper], and the mean interval width."""
    truth = np.asarray(truth)
    inside = (lower <= truth) & (truth <= upper)
    return float(inside.mean()), float(np.mean(np.asarray(upper) - np.asarray(lower)))
