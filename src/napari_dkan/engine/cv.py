"""Cross-validation and evaluation with the paper's metrics.

Cross-validation holds out one section, one patient, or a seeded K-fold of patients at a time;
each fold's model is trained on the rest with an inner validation split (or, with
``protocol="paper"``, selected on the test fold itself — labelled as such everywhere).  Gene
panels: by default the dataset's top-``n`` panel over every count matrix, as the paper.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.engine.collapse import COLLAPSE_KEYS, collapse_scores, mean_collapse
from napari_dkan.engine.data import SectionData
from napari_dkan.engine.metrics import FoldScores, Report, report, score_slide
from napari_dkan.engine.runs import (
    INNER_PROTOCOL_LABEL,
    PAPER_PROTOCOL_LABEL,
    RunSpec,
    TrainedModel,
    gene_text_for,
    preflight_run_folder,
    prepare_sections,
    train_model,
)
from napari_dkan.engine.splits import Fold, inner_validation, make_folds
from napari_dkan.engine.trainer import TrainEvent
from napari_dkan.io.dataset import Dataset
from napari_dkan.io.errors import DataError
from napari_dkan.io.expression import check_panel, select_panel
from napari_dkan.progress import CancelToken, check_cancel

StatusCallback = Callable[[str, int, int], None]
CV_FILE = "cv.json"
_log = logging.getLogger(__name__)


def dataset_panel(dataset: Dataset, n: int = 250) -> list[str]:
    """The paper's panel: top-``n`` mean raw count over every count matrix of the dataset."""
    return select_panel([s for s in dataset.sections if s.has_counts], n=n)


def score_sections(predictions: dict[str, np.ndarray], data: dict[str, SectionData],
                   folds: Sequence[Fold], panel: Sequence[str],
                   reference: Sequence[str] | None = None) -> Report:
    """The paper's metrics: one fold per group of test sections; HEG/HVG gene sets from the
    ground truth of ``reference`` sections (default: every evaluated section)."""
    fold_scores = [
        FoldScores(f.name, [score_slide(n, predictions[n], data[n].y) for n in f.test]) for f in folds
    ]
    ref = list(reference) if reference is not None else [n for f in folds for n in f.test]
    rep = report(fold_scores, [data[n].y for n in ref], list(panel))
    add_collapse(rep, [mean_collapse([collapse_scores(predictions[n], data[n].y) for n in f.test])
                       for f in folds])
    return rep


def add_collapse(rep: Report, per_fold: list[dict[str, float]]) -> None:
    """Put the gene-collapse numbers (:mod:`napari_dkan.engine.collapse`) into a report's
    fold rows, mean and std, beside the paper's metrics."""
    for row, values in zip(rep.folds, per_fold):
        row.update(values)
    for key in COLLAPSE_KEYS:
        column = np.array([v[key] for v in per_fold], dtype=np.float64)
        rep.mean[key] = float(np.nanmean(column)) if np.isfinite(column).any() else float("nan")
        rep.std[key] = float(np.nanstd(column)) if np.isfinite(column).any() else float("nan")


@dataclass
class CVResult:
    report: Report
    model: str
    protocol: str
    seconds: float
    panel: list[str]
    folds: list[dict[str, Any]] = field(default_factory=list)  # training summary per fold

    gene_pcc: dict[str, list[float | None]] = field(default_factory=dict)  # per fold, per panel gene

    def to_dict(self, genes: bool = False) -> dict[str, Any]:
        """The figures; ``genes`` adds the panel and each fold's per-gene r (``gene_pcc``)."""
        out = self.report.to_dict()
        for row, info in zip(out["folds"], self.folds):
            row.update({k: v for k, v in info.items() if k not in row})
            if genes and row["fold"] in self.gene_pcc:
                row["gene_pcc"] = self.gene_pcc[row["fold"]]
        extra = {"panel": list(self.panel)} if genes else {}
        return {"model": self.model, "protocol": self.protocol, "seconds": round(self.seconds, 1),
                "n_genes": len(self.panel), **extra, **out}


def cross_validate(
    dataset: Dataset,
    spec: RunSpec,
    folds_by: str = "sections",
    sections: Sequence[str] | None = None,
    panel: Sequence[str] | None = None,
    out_dir: Path | None = None,
    on_status: StatusCallback | None = None,
    on_event: Callable[[str, TrainEvent], None] | None = None,
    cancel: CancelToken | None = None,
    only_folds: Sequence[str] | None = None,
    stain_normalise: bool = False,
    inner_seed: int | None = None,
) -> CVResult:
    """Cross-validate ``spec``; ``only_folds`` runs just the named folds (e.g. to re-check some);
    ``stain_normalise`` maps each fold's test sections to that fold's training slides' staining;
    ``inner_seed`` draws each fold's inner-validation section (default: the run's seed), so that
    runs of several seeds can share them."""
    t0 = time.perf_counter()
    chosen = dataset.select(sections)
    usable = [s for s in chosen.sections if s.trainable]
    skipped = [s.name for s in chosen.sections if not s.trainable]
    if sections is not None and skipped:
        raise DataError(f"section(s) {', '.join(skipped)} lack an image or counts: cannot cross-validate on them")
    if len(usable) < 2:
        raise DataError(f"cross-validation needs at least 2 sections with image and counts; found {len(usable)}")
    panel = list(panel) if panel is not None else dataset_panel(dataset)
    check_panel(panel, usable)
    patients = {s.name: s.patient for s in usable}
    plan = folds = make_folds([s.name for s in usable], patients, folds_by, seed=spec.settings.seed)
    if only_folds is not None:
        unknown = sorted(set(only_folds) - {f.name for f in folds})
        if unknown:
            raise DataError(f"no fold named {', '.join(unknown)}; folds: {', '.join(f.name for f in folds)}")
        folds = [f for f in folds if f.name in set(only_folds)]
    gene_text = gene_text_for(spec, panel)
    data = prepare_sections(usable, spec, panel, progress=on_status, cancel=cancel)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="napari-dkan-cv-")
        out_dir = Path(tmp.name)
    predictions: dict[str, np.ndarray] = {}
    fold_info: dict[str, dict[str, Any]] = {}

    def predict_fold(fold: Fold, model: TrainedModel) -> None:
        if stain_normalise:  # the fold's test sections, normalised to its own reference
            model.use_stain_normalisation()
        for name in fold.test:
            test = data[name] if not stain_normalise else model.section_data(
                dataset[name], device=spec.settings.device, cancel=cancel)
            predictions[name] = model.predict(test, device=spec.settings.device)
        res, tr = model.config.get("result", {}), model.config.get("training", {})
        fold_info[fold.name] = {"train_sections": list(tr.get("train_sections") or []),
                                "val_sections": list(tr.get("val_sections") or []),
                                "parameters": model.n_parameters, "best_epoch": res.get("best_epoch"),
                                "epochs_run": res.get("epochs_run"), "val_pcc": res.get("best_val_pcc")}

    def split_of(fold: Fold) -> tuple[dict[str, SectionData], list[str], list[str]]:
        """The fold's data with its inner split (spatial hold-outs added) and the names it trains
        and selects on."""
        local = dict(data)
        if spec.protocol == "paper":
            return local, list(fold.train), list(fold.test)
        fit_part, val_part = inner_validation([data[n] for n in fold.train], spec.validation,
                                              spec.settings.seed if inner_seed is None else inner_seed)
        local.update({s.name: s for s in (*fit_part, *val_part)})
        return local, [s.name for s in fit_part], [s.name for s in val_part]

    try:
        for k, fold in enumerate(folds):
            check_cancel(cancel, "cross-validation")
            if on_status:
                on_status(f"fold {fold.name}", k, len(folds))
            local, fit_names, val_names = split_of(fold)
            cb = (lambda e, name=fold.name: on_event(name, e)) if on_event else None
            model = train_model(local, fit_names, val_names, spec, panel, out_dir / f"fold-{fold.name}",
                                gene_text=gene_text, dataset_info={"path": str(dataset.root)},
                                on_event=cb, cancel=cancel, sections=usable)
            predict_fold(fold, model)
        if only_folds is not None and tmp is None:
            # the folder's record covers every finished fold of this run, not only those run now
            # (processes sharing one folder with --only-folds each rewrite cv.json)
            for fold in plan:
                if fold.name not in fold_info:
                    check_cancel(cancel, "cross-validation")
                    _, fit_names, val_names = split_of(fold)
                    finished = _finished_fold(Path(out_dir) / f"fold-{fold.name}", spec, dataset,
                                              fit_names, val_names, panel)
                    if finished is None:
                        continue
                    try:
                        predict_fold(fold, finished)
                    except DataError as exc:  # e.g. an older fold without a stain reference
                        _log.warning("fold %s of %s is left out of cv.json: %s", fold.name, out_dir, exc)
                        for name in fold.test:
                            predictions.pop(name, None)
                        fold_info.pop(fold.name, None)
            folds = [f for f in plan if f.name in fold_info]
    finally:
        if tmp is not None:
            tmp.cleanup()
    rep = score_sections(predictions, data, folds, panel)
    protocol = PAPER_PROTOCOL_LABEL if spec.protocol == "paper" else INNER_PROTOCOL_LABEL
    gene_pcc = _gene_pcc(folds, predictions, data)
    result = CVResult(rep, spec.model, protocol, time.perf_counter() - t0, panel,
                      [fold_info[f.name] for f in folds], gene_pcc)
    if tmp is None:  # a kept folder records its figures, per-gene r per fold included
        from napari_dkan.engine import checkpoint as ckpt

        ckpt.write_json(Path(out_dir) / CV_FILE, result.to_dict(genes=True))
    return result


def _finished_fold(path: Path, spec: RunSpec, dataset: Dataset, fit_names: Sequence[str],
                   val_names: Sequence[str], panel: Sequence[str]) -> TrainedModel | None:
    """The fold run in ``path`` when it is finished and is exactly this run's fold: trained with
    ``spec`` on ``dataset``, on ``fit_names`` and selected on ``val_names`` (the split this run
    draws for it: another design, protocol or inner seed splits otherwise), for ``panel``."""
    folder = preflight_run_folder(path, spec, str(dataset.root))
    if folder.action != "finished" or not folder.complete:
        return None
    model = TrainedModel.load(path)
    tr = model.config.get("training", {})
    same = (list(tr.get("train_sections") or []) == list(fit_names)
            and list(tr.get("val_sections") or []) == list(val_names) and list(model.panel) == list(panel))
    return model if same else None


def _gene_pcc(folds: Sequence[Fold], predictions: dict[str, np.ndarray],
              data: dict[str, SectionData]) -> dict[str, list[float | None]]:
    """Per fold, the per-gene Pearson r on its test sections (``cv.json``'s ``gene_pcc``)."""
    return {f.name: _nan_to_none(FoldScores(f.name, [score_slide(n, predictions[n], data[n].y)
                                                     for n in f.test]).pcc) for f in folds}


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]


def evaluate(
    model: TrainedModel,
    dataset: Dataset,
    sections: Sequence[str] | None = None,
    folds_by: str = "sections",
    reference: Sequence[str] | None = None,
    device: str = "auto",
    on_status: StatusCallback | None = None,
    cancel: CancelToken | None = None,
) -> Report:
    """A trained model's metrics on sections with counts, using the model's own gene panel."""
    chosen = dataset.select(sections)
    usable = [s for s in chosen.sections if s.has_counts and s.has_image]
    if not usable:
        raise DataError("no section with both an image and counts to evaluate on")
    check_panel(model.panel, usable)
    data, preds = {}, {}
    for k, sec in enumerate(usable):
        if on_status:
            on_status(f"section {sec.name}", k, len(usable))
        data[sec.name] = model.section_data(sec, with_targets=True, device=device, cancel=cancel)
        preds[sec.name] = model.predict(data[sec.name], device=device, cancel=cancel)
    if reference is not None:
        for name in reference:
            if name not in data:
                data[name] = model.section_data(dataset[name], with_targets=True, device=device, cancel=cancel)
    folds = make_folds([s.name for s in usable], {s.name: s.patient for s in usable}, folds_by)
    rep = score_sections(preds, data, folds, model.panel, reference)
    if model.trust.calibration is not None:
        add_coverage(rep, model, folds, preds, data)
    return rep


COVERAGE_KEYS = ("COVERAGE-80", "COVERAGE-90", "WIDTH-90")


def add_coverage(rep: Report, model: TrainedModel, folds: Sequence[Fold],
                 preds: dict[str, np.ndarray], data: dict[str, SectionData]) -> None:
    """Per fold and in the mean: the fraction of spot × gene values inside the nominal 80 % and
    90 % intervals, and the mean width of the 90 % ones."""
    from napari_dkan.engine.conformal import coverage_and_width
    from napari_dkan.engine.trust import assess

    for row, fold in zip(rep.folds, folds):
        truth = np.concatenate([data[n].y for n in fold.test])
        for level in (0.8, 0.9):
            # each section at its own depth
            spots = [assess(model.trust, preds[n], data[n], level, model.smoothing) for n in fold.test]
            cov, width = coverage_and_width(truth, np.concatenate([t.lower for t in spots]),
                                            np.concatenate([t.upper for t in spots]))
            row[f"COVERAGE-{round(level * 100)}"] = cov
            if level == 0.9:
                row["WIDTH-90"] = width
    for key in COVERAGE_KEYS:
        values = np.array([r[key] for r in rep.folds])
        rep.mean[key] = float(values.mean())
        rep.std[key] = float(values.std())


def score_kept_folds(cv_dir: str | Path, dataset: Dataset, device: str = "auto",
                     on_status: StatusCallback | None = None) -> CVResult:
    """Score a folder of kept leave-one-section-out fold models (``fold-X/``, e.g. an ensemble's
    cross-validation built from other ones): each fold model predicts its own held-out section
    X, scored as :func:`cross_validate` scores it; writes ``cv.json`` (per-gene r per fold
    included) into ``cv_dir``."""
    from napari_dkan.engine import checkpoint as ckpt

    t0 = time.perf_counter()
    cv_dir = Path(cv_dir)
    fold_dirs = sorted(p for p in cv_dir.glob("fold-*") if p.is_dir())
    if not fold_dirs:
        raise DataError(f"no fold-* run folders in {cv_dir}")
    names = [p.name.removeprefix("fold-") for p in fold_dirs]
    unknown = [n for n in names if n not in dataset.section_names]
    if unknown:
        raise DataError(f"fold(s) {', '.join(unknown)} of {cv_dir} are not sections of {dataset.root}: only "
                        "leave-one-section-out folders can be scored after the fact")
    data, preds, info, panel, kind, protocol = {}, {}, [], None, "", ""
    for k, (name, fold_dir) in enumerate(zip(names, fold_dirs)):
        if on_status:
            on_status(f"fold {name}", k, len(names))
        model = TrainedModel.load(fold_dir)
        if name in model.seen_sections:
            raise DataError(f"{fold_dir} trained or selected on {name}, the section it should hold out")
        if panel is not None and model.panel != panel:
            raise DataError(f"{fold_dir} predicts another gene panel than the other folds")
        panel, kind, protocol = model.panel, model.kind, model.protocol
        data[name] = model.section_data(dataset[name], with_targets=True, device=device)
        preds[name] = model.predict(data[name], device=device)
        tr = model.config["training"]
        info.append({"train_sections": list(tr.get("train_sections") or []),
                     "val_sections": list(tr.get("val_sections") or []), "parameters": model.n_parameters})
    assert panel is not None
    folds = make_folds(names, {n: dataset[n].patient for n in names}, "sections")
    rep = score_sections(preds, data, folds, panel)
    gene_pcc = _gene_pcc(folds, preds, data)
    by_fold = dict(zip(names, info))
    result = CVResult(rep, kind, protocol, time.perf_counter() - t0, list(panel),
                      [by_fold[f.test[0]] for f in folds], gene_pcc)
    ckpt.write_json(cv_dir / CV_FILE, result.to_dict(genes=True))
    return result
