"""The trust layer of a run folder: reliability, calibration and image-domain summary.

Three optional files beside a run's ``config.json`` (a run written before them loads without
them, and every consumer says the information is absent):

- ``reliability.json`` — expected r per gene on unseen sections (:mod:`.reliability`);
- ``calibration.safetensors`` — the conformal calibration of per-spot intervals (:mod:`.conformal`);
- ``domain.safetensors`` — the training images' feature summary and threshold (:mod:`.domain`).

:func:`attach_from_data` writes them from in-memory section data (the end of training);
:func:`attach_from_dataset` writes them after the fact from a saved run and its dataset (and,
for reliability, a cross-validation folder of the run's recipe).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dkan.engine.conformal import (
    CALIBRATION_FILE,
    DEFAULT_LEVEL,
    Calibration,
    calibrate,
    spot_context,
)
from napari_dkan.engine.domain import (
    DOMAIN_FILE,
    DomainCheck,
    DomainSummary,
    check_domain,
    fit_with_threshold,
)
from napari_dkan.engine.metrics import pearson_per_gene
from napari_dkan.engine.reliability import RELIABILITY_FILE, GeneReliability, from_folds

if TYPE_CHECKING:
    from napari_dkan.engine.data import SectionData
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io.dataset import Dataset

VALIDATION_PROTOCOL = "per-gene Pearson r on this run's validation spots (held out from training)"
CV_PROTOCOL = ("leave-one-section-out cross-validation of this model's recipe: per-gene Pearson r "
               "on each held-out test section, mean ± std over folds")


@dataclass
class Trust:
    """What a run folder says about how far to trust its predictions (each part may be absent)."""

    reliability: GeneReliability | None = None
    calibration: Calibration | None = None
    domain: DomainSummary | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> Trust:
        run_dir = Path(run_dir)
        rel, cal, dom = run_dir / RELIABILITY_FILE, run_dir / CALIBRATION_FILE, run_dir / DOMAIN_FILE
        return cls(GeneReliability.load(rel) if rel.is_file() else None,
                   Calibration.load(cal) if cal.is_file() else None,
                   DomainSummary.load(dom) if dom.is_file() else None)

    @property
    def missing(self) -> list[str]:
        """The parts this run lacks, in words."""
        out = []
        if self.reliability is None:
            out.append("per-gene reliability")
        if self.calibration is None:
            out.append("calibrated uncertainty")
        if self.domain is None:
            out.append("out-of-domain check")
        return out


@dataclass
class SpotTrust:
    """Trust figures of one prediction: interval half-widths and the out-of-domain check."""

    level: float
    halfwidth: np.ndarray | None  # (N, G); None without a calibration
    domain: DomainCheck | None  # None without a domain summary

    def lower_upper(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if self.halfwidth is None:
            return None
        return pred - self.halfwidth, pred + self.halfwidth


def assess(trust: Trust, pred: np.ndarray, features: np.ndarray, level: float = DEFAULT_LEVEL) -> SpotTrust:
    """Intervals and out-of-domain scores for a prediction from its spots' patch features."""
    half = None
    if trust.calibration is not None:
        ctx = spot_context(pred, features, trust.domain)
        half = trust.calibration.interval_halfwidth(pred, ctx, level).astype(np.float32)
    dom = check_domain(trust.domain, features) if trust.domain is not None else None
    return SpotTrust(level, half, dom)


def attach_from_data(model: TrainedModel, train: Sequence[SectionData], validation: Sequence[SectionData],
                     predict: Callable[[SectionData], np.ndarray] | None = None,
                     reliability: GeneReliability | None = None) -> Trust:
    """Write the three trust files of ``model`` from its training and validation data.

    Reliability: per-gene r on the validation spots (unless ``reliability`` is given, e.g. from
    a cross-validation); calibration: the validation spots; domain summary: the training spots'
    patch features, its threshold from held-out training sections and the validation sections.
    """
    predict = predict or model.predict
    run_dir = Path(model.run_dir)
    domain = fit_with_threshold({d.name: d.patch_feat for d in train},
                                {d.name: d.patch_feat for d in validation if d.name not in {t.name for t in train}})
    domain.save(run_dir / DOMAIN_FILE, {"features": model.features.to_dict()})
    scored = [d for d in validation if d.y is not None]
    cal = None
    if scored:
        preds = [np.asarray(predict(d), dtype=np.float64) for d in scored]
        if reliability is None:
            per = {d.name: pearson_per_gene(p, d.y) for d, p in zip(scored, preds)}
            reliability = from_folds(model.panel, per, VALIDATION_PROTOCOL)
        pred = np.concatenate(preds)
        truth = np.concatenate([d.y for d in scored])
        feats = np.concatenate([d.patch_feat for d in scored])
        cal = calibrate(pred, truth, spot_context(pred, feats, domain), model.panel,
                        [d.name for d in scored])
        cal.save(run_dir / CALIBRATION_FILE)
    if reliability is not None:
        reliability.save(run_dir / RELIABILITY_FILE)
    return Trust(reliability, cal, domain)


def reliability_from_cv(cv_dir: str | Path, dataset: Dataset | None = None,
                        device: str = "auto") -> GeneReliability:
    """Per-gene r per fold of a cross-validation folder (``cv.json`` when it records them,
    else each fold model predicts its test section of ``dataset``)."""
    from napari_dkan.engine import checkpoint as ckpt

    cv_dir = Path(cv_dir)
    summary = cv_dir / "cv.json"
    if summary.is_file():
        data = ckpt.read_json(summary)
        folds = data.get("folds", [])
        if folds and all("gene_pcc" in f for f in folds):
            per = {f["fold"]: np.array([np.nan if v is None else v for v in f["gene_pcc"]]) for f in folds}
            return from_folds(data["panel"], per, CV_PROTOCOL)
    if dataset is None:
        raise ValueError(f"{cv_dir} records no per-gene r per fold (no cv.json with gene_pcc): "
                         "pass the dataset so the fold models can be scored on their test sections")
    from napari_dkan.engine.runs import TrainedModel

    per: dict[str, np.ndarray] = {}
    panel: list[str] | None = None
    for fold_dir in sorted(cv_dir.glob("fold-*")):
        name = fold_dir.name.removeprefix("fold-")
        if name not in dataset.section_names:
            raise ValueError(f"fold {name} of {cv_dir} is not a section of {dataset.root}: only "
                             "leave-one-section-out folders can be scored after the fact")
        fold = TrainedModel.load(fold_dir)
        panel = fold.panel
        data = fold.section_data(dataset[name], with_targets=True, device=device)
        per[name] = pearson_per_gene(fold.predict(data, device=device), data.y)
    if not per or panel is None:
        raise ValueError(f"no fold-* run folders in {cv_dir}")
    return from_folds(panel, per, CV_PROTOCOL)


def attach_from_dataset(model: TrainedModel, dataset: Dataset, cv_dir: str | Path | None = None,
                        device: str = "auto", progress: Callable[[str], None] | None = None) -> Trust:
    """Write the trust files of a saved run from its dataset (its recorded training and
    validation sections); reliability from ``cv_dir`` when given, else its validation spots."""
    train_names = list(model.config["training"].get("train_sections") or [])
    val_names = list(model.config["training"].get("val_sections") or [])
    unknown = [n for n in train_names + val_names if n not in dataset.section_names]
    if unknown:
        raise ValueError(f"section(s) {', '.join(unknown)} of {model.run_dir} are not in {dataset.root} "
                         "(a spatial hold-out of one section cannot be rebuilt after the fact): "
                         "attach trust files at the end of training instead")
    sections: dict[str, Any] = {}
    for name in dict.fromkeys(train_names + val_names):
        if progress:
            progress(f"features of {name}")
        sections[name] = model.section_data(dataset[name], with_targets=True, device=device)
    rel = reliability_from_cv(cv_dir, dataset, device) if cv_dir is not None else None
    if progress:
        progress("calibrating")
    return attach_from_data(model, [sections[n] for n in train_names], [sections[n] for n in val_names],
                            predict=lambda d: model.predict(d, device=device), reliability=rel)
