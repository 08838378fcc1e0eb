"""``napari-dkan train | cv | evaluate | predict | trust | ensemble``: the training and evaluation engine."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_dkan.cli._output import add_json_flag, emit
from napari_dkan.features.runtimes import RUNTIME_CHOICES

MODELS = ["dkan", "dkan-improved", "triplex", "nh2st", "ridge"]
METRICS = ("MAE", "MSE", "PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG")
COVERAGE = ("COVERAGE-80", "COVERAGE-90", "WIDTH-90")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (HER2ST-style root, Visium folder), .h5ad or slide")
    p.add_argument("--sections", nargs="+", metavar="NAME", help="use only these sections")
    p.add_argument("--image", help="full-resolution image of a Visium folder / .h5ad")
    p.add_argument("--mpp", type=float, help="µm per pixel when the image carries none")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=MODELS, default="dkan", help="model family (default dkan)")
    p.add_argument("--preset", default="compact",
                   help="network preset: compact (default, CPU-sized), her2st, skin, stnet (the paper's), tiny")
    p.add_argument("--encoder", default="efficientnet-lite0-imagenet", help="frozen image encoder")
    p.add_argument("--mode", choices=["shared", "exact"], default="shared", help="region tile mode")
    p.add_argument("--target-mpp", type=float, help="resample tiles to this µm/px")
    p.add_argument("--panel", help="gene panel file (default: the dataset's top-N by mean count)")
    p.add_argument("--panel-size", type=int, default=250, help="N of the default panel (250)")
    p.add_argument("--no-smoothing", action="store_true", help="train on unsmoothed targets")
    p.add_argument("--text-encoder", help="gene-text encoder (name or path; default offline MiniLM)")
    p.add_argument("--texts", help="SYMBOL<TAB>text file replacing the composed gene texts")
    p.add_argument("--disease", help="disease context for the gene texts, e.g. 'HER2-positive breast cancer'")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--dropout-sampler", choices=["torch", "uniform"],
                   help="DKAN/TRIPLEX dropout masks: torch (default; reproduces earlier runs) or uniform "
                   "(the same dropout, other random draws, 6-13%% less CPU per training step)")
    p.add_argument("--validation", choices=["sections", "patients"], default="sections",
                   help="how the inner validation split is drawn from the training sections")
    p.add_argument("--paper-protocol", action="store_true",
                   help="select the checkpoint on the test fold, as the reference code (leaky; labelled)")


def _stain_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--stain-normalise", action="store_true",
                   help=f"match {what} staining to the model's training slides (Reinhard, in LAB) "
                   "before encoding: for a slide from another lab, scanner or patient. Needs the run's "
                   "stain.json (written by training, or by `napari-dkan trust --only-stain`)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train a model on a dataset's "
                       "sections; the checkpoint is selected on an inner validation section.")
    _data_args(p)
    _spec_args(p)
    p.add_argument("--val-sections", nargs="+", metavar="NAME", help="validation sections (default: drawn from --sections)")
    p.add_argument("--test-sections", nargs="+", metavar="NAME", help="with --paper-protocol: the test fold to select on")
    p.add_argument("-o", "--output", required=True, type=Path, help="run directory (resumed when it exists)")
    p.add_argument("--distributed", action="store_true",
                   help="train data-parallel in the processes torchrun starts, one per GPU (NCCL) or "
                   "CPU worker (gloo): torchrun --nproc-per-node N -m napari_dkan train ... --distributed; "
                   "--batch-size is then per process")
    add_json_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cv", help="cross-validate a model", description="Cross-validation with the "
                       "paper's metrics: one fold per held-out section, patient or K-fold of patients.")
    _data_args(p)
    _spec_args(p)
    p.add_argument("--folds", default="sections", help="sections (default), patients, or kfold:K")
    p.add_argument("-o", "--output", type=Path, help="keep each fold's run here (resumable)")
    p.add_argument("--only-folds", nargs="+", metavar="FOLD",
                   help="run just these folds (e.g. B4; several processes can share one -o folder: its "
                   "cv.json then scores every finished fold of the same run found there)")
    p.add_argument("--inner-seed", type=int, metavar="SEED",
                   help="draw each fold's inner-validation section with this seed instead of --seed: "
                   "runs of several seeds that are to be ensembled then share their validation sections "
                   "(the ensemble's intervals are calibrated on them)")
    _stain_arg(p, "each fold's test sections'")
    add_json_flag(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("evaluate", help="metrics of a trained model on sections with counts")
    _data_args(p)
    p.add_argument("--model", required=True, help="run directory (or 'default' for the bundled model)")
    p.add_argument("--folds", default="sections", help="group sections into folds by sections or patients")
    p.add_argument("--reference-sections", nargs="+", metavar="NAME",
                   help="sections whose ground truth picks the HEG/HVG genes (default: the evaluated ones)")
    _stain_arg(p, "the sections'")
    add_json_flag(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict expression for a slide or section, to .h5ad")
    p.add_argument("path", help="slide file, or dataset with --sections NAME")
    p.add_argument("--sections", nargs=1, metavar="NAME", help="the section of a dataset")
    p.add_argument("--spots", default=None, help="'lattice' (default for a slide alone) or a spot file "
                   "(.h5ad / Visium folder) whose spots to predict on this slide")
    p.add_argument("--model", required=True, help="run directory (or 'default')")
    p.add_argument("--image", help="full-resolution image of a Visium folder / .h5ad")
    p.add_argument("--mpp", type=float, help="µm per pixel when the image carries none")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                   help="image encoder's inference runtime on a CPU: auto (default: OpenVINO or ONNX Runtime "
                   "when installed, torch on a GPU), torch, onnxruntime or openvino")
    p.add_argument("-o", "--output", required=True, type=Path, help="output .h5ad")
    p.add_argument("--level", type=_fraction, default=0.9,
                   help="nominal coverage of the per-spot intervals, a fraction between 0 and 1 (default 0.9)")
    p.add_argument("--depth", type=float, default=None,
                   help="sequencing depth the intervals are for, as the median panel total per spot "
                   "(default: the section's own when it has counts, else the calibration section's)")
    _stain_arg(p, "the slide's")
    add_json_flag(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("trust", help="attach reliability, calibration and out-of-domain files to a run",
                       description="Write a run folder's trust files after the fact from its dataset: "
                       "per-gene reliability (from --cv, a leave-one-section-out folder of the run's "
                       "recipe, else the run's validation spots), conformal calibration on its "
                       "validation sections, and the image-domain summary of its training sections.")
    p.add_argument("dataset", help="the dataset the run was trained on")
    p.add_argument("--model", required=True, help="run directory (or 'default' for the bundled model)")
    p.add_argument("--cv", type=Path, help="cross-validation folder (fold-*/ runs) of the run's recipe")
    p.add_argument("--keep-reliability", action="store_true",
                   help="keep the run's reliability.json as it is (e.g. from a cross-validation no longer at "
                   "hand) and rewrite only the calibration and the out-of-domain summary")
    p.add_argument("--only-stain", action="store_true",
                   help="write only the stain reference (stain.json: the staining of the run's training "
                   "and validation sections, for --stain-normalise), leaving the other files as they are")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    add_json_flag(p)
    p.set_defaults(func=cmd_trust)

    p = sub.add_parser("ensemble", help="combine trained runs into one ensemble run folder",
                       description="Write a run folder whose prediction is the weighted mean of its members' "
                       "(run folders, copied in; same gene panel, image features and target). With --cv the "
                       "arguments are cross-validation folders, and each fold finished in all of them becomes "
                       "an ensemble fold: the ensemble's own cross-validation, for `napari-dkan trust --cv`. "
                       "Attach the ensemble's trust files with `napari-dkan trust DATA --model OUT`.")
    p.add_argument("members", nargs="+", type=Path, help="run folders (with --cv: cross-validation folders)")
    p.add_argument("-o", "--output", type=Path, required=True, help="new folder for the ensemble")
    p.add_argument("--weights", nargs="+", type=float, help="one positive weight per member (default: equal)")
    p.add_argument("--name", help="a short name recorded in the ensemble's config")
    p.add_argument("--cv", action="store_true", help="the members are cross-validation folders (fold-*/)")
    p.add_argument("--dataset", help="with --cv: score each ensemble fold on its held-out section of this "
                   "dataset and write the ensemble's cv.json (its metrics and per-gene r per fold)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    add_json_flag(p)
    p.set_defaults(func=cmd_ensemble)


def _fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (90 % is 0.9)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        hint = f" (for {value:g} % write {value / 100:g})" if 1.0 < value < 100.0 else ""
        raise argparse.ArgumentTypeError(f"a nominal level is a fraction between 0 and 1, got {text}{hint}")
    return value


def _spec(args: argparse.Namespace):  # noqa: ANN202
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec
    from napari_dkan.io.errors import DataError

    spec = RunSpec.for_preset(
        args.model, args.preset,
        features=FeatureSpec(encoder=args.encoder, mode=args.mode, target_mpp=args.target_mpp),
        smoothing=not args.no_smoothing, text_encoder=args.text_encoder, text_file=args.texts,
        disease=args.disease, protocol="paper" if args.paper_protocol else "inner",
        validation=args.validation,
    )
    if args.dropout_sampler and args.dropout_sampler != "torch":
        if args.model not in ("dkan", "dkan-improved", "triplex"):
            from napari_dkan.io.errors import DataError

            raise DataError(f"--dropout-sampler applies to dkan, dkan-improved and triplex, not {args.model}")
        spec.network_overrides["dropout_sampler"] = args.dropout_sampler
    s = spec.settings
    for name in ("epochs", "lr", "batch_size", "patience", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    s.device = args.device
    s.check()  # every number, before any file is read or written
    for flag in ("mpp", "target_mpp"):
        value = getattr(args, flag, None)
        if value is not None and not value > 0:
            raise DataError(f"--{flag.replace('_', '-')} must be a positive number of µm per pixel, got {value}")
    if getattr(args, "panel_size", 1) < 1:
        raise DataError(f"--panel-size must be at least 1, got {args.panel_size}")
    return spec


def _panel(args: argparse.Namespace, dataset: Any) -> list[str]:
    from napari_dkan.engine.cv import dataset_panel
    from napari_dkan.io.expression import read_panel_file

    return read_panel_file(args.panel) if args.panel else dataset_panel(dataset, args.panel_size)


class _Bars:
    """tqdm bars on stderr for engine events (the engine itself never prints)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr is not None
        self.bar: Any = None
        self.label = ""

    def status(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or self.label != label:
            self.close()
            self.bar, self.label = tqdm(total=total, desc=label, file=sys.stderr, leave=False), label
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def train_event(self, fold: str, event: Any) -> None:
        if not self.enabled:
            return
        label = f"{fold + ' ' if fold else ''}epoch {event.epoch}/{event.epochs}"
        self.status(label, event.step, event.steps)
        if event.phase == "epoch" and self.bar is not None:
            self.bar.set_postfix(loss=f"{event.loss:.3f}", val_pcc=_fmt(event.val_pcc), best=_fmt(event.best_pcc))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def cmd_train(args: argparse.Namespace) -> int:
    if not args.distributed:
        return _train(args)
    from napari_dkan.engine import distributed
    from napari_dkan.io.errors import DataError

    if args.model == "ridge":
        raise DataError("ridge regression has no training loop to distribute; train it without --distributed")
    distributed.init_from_env(args.device)
    try:
        return _train(args)
    finally:
        distributed.shutdown()


def _train(args: argparse.Namespace) -> int:
    from napari_dkan.engine import distributed
    from napari_dkan.engine.runs import (
        gene_text_for,
        preflight_run_folder,
        prepare_sections,
        train_model,
    )
    from napari_dkan.engine.splits import inner_validation
    from napari_dkan.io.errors import DataError
    from napari_dkan.io.expression import check_panel
    from napari_dkan.io.formats import open_dataset

    spec = _spec(args)
    ds = open_dataset(args.dataset, image=args.image, mpp=args.mpp)
    train_secs = [s for s in ds.select(args.sections).sections if s.trainable]
    if not train_secs:
        raise DataError("no section with an image and counts to train on")
    extra = list(args.val_sections or []) + (list(args.test_sections or []) if args.paper_protocol else [])
    if args.paper_protocol and not args.test_sections:
        raise DataError("--paper-protocol selects on the test fold: name it with --test-sections")
    _refuse_overlap([s.name for s in train_secs], args)
    main = distributed.current().is_main  # under torchrun only rank 0 reports
    folder = preflight_run_folder(args.output, spec, str(ds.root))
    if folder.refused:  # before any feature is computed or any file written
        raise DataError(folder.message)
    panel = _panel(args, ds)
    check_panel(panel, train_secs)
    bars = _Bars(not args.json and main)
    with distributed.main_first():  # rank 0 fills the feature and text caches, the others read them
        gene_text = gene_text_for(spec, panel)
        data = prepare_sections([*train_secs, *(ds[n] for n in extra)], spec, panel, progress=bars.status)
    names = [s.name for s in train_secs]
    if args.paper_protocol:
        fit_names, val_names = names, list(args.test_sections)
    elif args.val_sections:
        fit_names, val_names = names, list(args.val_sections)
    else:
        fit_part, val_part = inner_validation([data[n] for n in names], spec.validation, spec.settings.seed)
        data.update({s.name: s for s in (*fit_part, *val_part)})
        fit_names, val_names = [s.name for s in fit_part], [s.name for s in val_part]
    seen: list[Any] = []
    try:
        model = train_model(data, fit_names, val_names, spec, panel, args.output, gene_text=gene_text,
                            dataset_info={"path": str(ds.root), "sections": names},
                            sections=[*train_secs, *(ds[n] for n in extra)],
                            on_event=lambda e: bars.train_event("", e),
                            on_folder=lambda f: (seen.append(f), _say(f.message, not args.json and main)))
    finally:
        bars.close()
    res = model.config.get("result", {})
    payload = {"run": str(args.output), "model": spec.model, "status": model.config["status"],
               "protocol": model.protocol, "train_sections": fit_names, "val_sections": val_names,
               "best_epoch": res.get("best_epoch"), "best_val_pcc": res.get("best_val_pcc"),
               "epochs_run": res.get("epochs_run"), "genes": len(panel), "parameters": model.n_parameters,
               "processes": distributed.current().world_size,
               "output_folder": seen[0].action if seen else None}
    text = (f"{spec.model} trained ({model.config['status']}) on {', '.join(fit_names)}; selected on "
            f"{', '.join(val_names)} [{model.protocol}]: best val PCC {_fmt(res.get('best_val_pcc'))} at "
            f"epoch {res.get('best_epoch')} → {args.output} ({model.n_parameters:,} trainable parameters)")
    if main:
        emit(args, payload, text)
    return 0


def _refuse_overlap(train: list[str], args: argparse.Namespace) -> None:
    """Validation (or, with --paper-protocol, test) sections must not be training sections."""
    from napari_dkan.io.errors import DataError

    for flag, names in (("--val-sections", args.val_sections),
                        ("--test-sections", args.test_sections if args.paper_protocol else None)):
        shared = [n for n in names or [] if n in train]
        if shared:
            raise DataError(f"{', '.join(shared)} {'is' if len(shared) == 1 else 'are'} in both --sections and "
                            f"{flag}: the checkpoint would be selected on spots it was trained on. Leave "
                            f"{'it' if len(shared) == 1 else 'them'} out of --sections (the training sections)")


def _say(text: str, enabled: bool) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)


def _table(rows: list[dict], mean: dict, std: dict, keys: Sequence[str] = METRICS, collapse: bool = True) -> str:
    w = max(9, *(len(m) + 2 for m in keys))
    head = f"{'fold':<10}" + "".join(f"{m:>{w}}" for m in keys)
    lines = [head] + [f"{str(r['fold']):<10}" + "".join(f"{_num(r[m]):>{w}}" for m in keys) for r in rows]
    lines.append(f"{'mean':<10}" + "".join(f"{_num(mean[m]):>{w}}" for m in keys))
    lines.append(f"{'std':<10}" + "".join(f"{_num(std[m]):>{w}}" for m in keys))
    if collapse and "GENE-R-PRED" in mean:
        from napari_dkan.engine.collapse import describe

        lines.append(describe(mean))
    return "\n".join(lines)


def _num(x: Any) -> str:
    return "nan" if x is None or x != x else f"{x:.3f}"


def cmd_cv(args: argparse.Namespace) -> int:
    from napari_dkan.engine.cv import cross_validate
    from napari_dkan.io.formats import open_dataset

    spec = _spec(args)
    ds = open_dataset(args.dataset, image=args.image, mpp=args.mpp)
    panel = _panel(args, ds)
    bars = _Bars(not args.json)
    try:
        result = cross_validate(ds, spec, args.folds, args.sections, panel=panel, out_dir=args.output,
                                on_status=bars.status, on_event=bars.train_event, only_folds=args.only_folds,
                                stain_normalise=args.stain_normalise, inner_seed=args.inner_seed)
    finally:
        bars.close()
    payload = {**result.to_dict(), "stain_normalised": bool(args.stain_normalise)}
    params = {f.get("parameters") for f in payload["folds"]} - {None}
    text = (f"{spec.model} ({spec.preset}, {spec.features.encoder}"
            + (f", {params.pop():,} trainable parameters" if len(params) == 1 else "")
            + f") — {result.protocol}; "
            f"{len(result.report.folds)} folds in {result.seconds:.0f} s\n"
            + _table(result.report.folds, result.report.mean, result.report.std))
    emit(args, payload, text)
    return 0


def load_model_arg(name: str):  # noqa: ANN201
    """A trained model from a run directory, or the bundled default."""
    from napari_dkan.engine.runs import TrainedModel

    if name == "default":
        from napari_dkan.bundled import default_model

        return default_model()
    return TrainedModel.load(name)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_dkan.engine.cv import evaluate
    from napari_dkan.io.formats import open_dataset

    model = load_model_arg(args.model)
    if args.stain_normalise:
        model.use_stain_normalisation()  # no reference: one clear line before any work
    ds = open_dataset(args.dataset, image=args.image, mpp=args.mpp)
    bars = _Bars(not args.json)
    try:
        rep = evaluate(model, ds, args.sections, args.folds, args.reference_sections, device=args.device,
                       on_status=bars.status)
    finally:
        bars.close()
    stain = None if model.stain is None else {
        s.name: model.stain_record(s) for s in ds.select(args.sections).sections if s.has_counts and s.has_image}
    payload = {"model": str(model.run_dir), "protocol": model.protocol, **rep.to_dict(),
               "stain_normalised": stain is not None, "stain_normalisation": stain}
    # which evaluated sections trained or selected the model: scores there are optimistic
    seen_roles = model.seen_sections
    payload["folds"] = [{**f, "seen_by_model": seen_roles.get(str(f["fold"]))} for f in rep.folds]
    payload["seen_by_model"] = {str(r["fold"]): seen_roles[str(r["fold"])] for r in rep.folds
                                if str(r["fold"]) in seen_roles}
    text = (f"{model.kind} from {model.run_dir} [{model.protocol}]"
            + (" — stain-normalised to its training slides" if stain else "") + "\n") + _table(rep.folds, rep.mean, rep.std)
    if "COVERAGE-90" in rep.mean:
        text += "\n" + _table(rep.folds, rep.mean, rep.std, COVERAGE, collapse=False)
    else:
        text += "\nno calibration in this run: no interval coverage (`napari-dkan trust` adds one)"
    for r in rep.folds:
        missing = len(model.panel) - int(r.get("genes_with_r", len(model.panel)))
        if missing:
            text += (f"\n{r['fold']}: {missing} of {len(model.panel)} genes have constant measured values there "
                     "(no Pearson r): the PCC figures leave them out, MAE and MSE count them")
    seen = list(payload["seen_by_model"])
    if seen:
        text += (f"\n{', '.join(seen)}: used to train or select this model — the scores there are "
                 "optimistic")
    emit(args, payload, text)
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_dkan.engine.reliability import verdict
    from napari_dkan.engine.runs import write_stain_reference
    from napari_dkan.engine.trust import attach_from_dataset
    from napari_dkan.io.errors import DataError
    from napari_dkan.io.formats import open_dataset

    model = load_model_arg(args.model)
    ds = open_dataset(args.dataset)
    names = [*(model.config["training"].get("train_sections") or []),
             *(model.config["training"].get("val_sections") or [])]
    stain = write_stain_reference(model.run_dir, names, ds.sections)
    if args.only_stain:
        if stain is None:
            raise DataError(f"none of {', '.join(names)} (the run's training and validation sections) "
                            f"has an image in {ds.root}: no stain reference written")
        emit(args, {"model": str(model.run_dir), "stain": stain.to_dict()},
             f"{model.run_dir / 'stain.json'}: staining of {', '.join(stain.sections)} "
             f"(LAB mean {', '.join(f'{v:.1f}' for v in stain.stats.mean)})")
        return 0
    trust = attach_from_dataset(model, ds, args.cv, device=args.device,
                                progress=None if args.json else (lambda m: print(m, flush=True)),
                                keep_reliability=args.keep_reliability)
    rel, cal, dom = trust.reliability, trust.calibration, trust.domain
    payload = {"model": str(model.run_dir),
               "reliability": None if rel is None else {
                   "protocol": rel.protocol, "sections": rel.sections,
                   "median_r": float(np.nanmedian(rel.r)),
                   "unreliable_genes": int(sum(1 for g in rel.genes if verdict(rel.of(g)) == "unreliable"))},
               "calibration_sections": None if cal is None else cal.sections,
               "calibration_version": None if cal is None else cal.version,
               "calibration_depth": None if cal is None or cal.measurement is None
               else cal.measurement.reference.median,
               "overdispersion": None if cal is None or cal.measurement is None else cal.measurement.overdispersion,
               "ood_threshold": None if dom is None else dom.threshold,
               "ood_held_out": None if dom is None else dom.held_out}
    text = (f"{model.run_dir}: reliability [{payload['reliability']['protocol'] if rel else 'none'}], "
            f"calibration on {', '.join(cal.sections) if cal else 'nothing'}"
            + (f" (depth-aware: median panel total {cal.measurement.reference.median:.0f} per spot, counts "
               f"over-dispersed {cal.measurement.overdispersion:.2f}× Poisson)" if cal and cal.measurement else "")
            + ", out-of-domain threshold "
            f"{dom.threshold:.2f} (held out: "
            + ", ".join(f"{k} {v:.2f}" for k, v in dom.held_out.items()) + ")")
    emit(args, payload, text)
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from napari_dkan.engine.ensemble import build_ensemble, ensemble_cv
    from napari_dkan.io.errors import DataError

    if args.dataset and not args.cv:
        raise DataError("--dataset scores an ensemble's cross-validation: it goes with --cv")
    if args.cv:
        created = not Path(args.output).exists()
        folds: list[str] = []
        try:
            folds = ensemble_cv(args.members, args.output, args.weights, args.name)
            payload: dict[str, Any] = {"output": str(args.output), "folds": folds}
            text = f"{len(folds)} ensemble folds ({', '.join(folds)}) → {args.output}"
            if args.dataset:
                from napari_dkan.engine.cv import score_kept_folds
                from napari_dkan.io.formats import open_dataset

                result = score_kept_folds(args.output, open_dataset(args.dataset), device=args.device)
                payload.update(result.to_dict())
                text += "\n" + _table(result.report.folds, result.report.mean, result.report.std)
        except BaseException:  # a refused or failed scoring leaves no half-built folder behind
            if created:
                shutil.rmtree(args.output, ignore_errors=True)
            for f in folds:  # an existing -o keeps what it held, less the folds written here
                shutil.rmtree(Path(args.output) / f, ignore_errors=True)
            raise
        emit(args, payload, text)
        return 0
    model = build_ensemble(args.members, args.output, args.weights, args.name)
    info = model.describe()
    emit(args, info, f"ensemble of {len(info['members'])} runs ("
         + ", ".join(f"{m['model']} ×{m['weight']:.2f}" for m in info["members"])
         + f"; {info['parameters']:,} parameters) → {args.output}; calibration sections: "
         + (", ".join(model.config["training"]["val_sections"]) or "none (no section was validation for every "
            "member and training for none)")
         + f"\nnext: napari-dkan trust DATASET --model {args.output} [--cv ENSEMBLE_CV] writes its reliability "
           "and calibration")
    return 0


def predict_notes(uns: dict[str, Any], section: str, level: float) -> list[str]:
    """What ``predict`` says under its result line, from the AnnData's ``uns["napari_dkan"]``."""
    notes: list[str] = []
    if uns.get("raised_to_0"):
        notes.append(f"{uns['raised_to_0']} predicted values below 0 (not detected) written as 0")
    if uns.get("interval_unbounded"):
        n = int(uns.get("calibration_spots", 0))
        notes.append(f"--level {level} asks for more than the {n} calibration spots resolve (at most "
                     f"{n / (n + 1):.4f}): every interval is the whole range a gene can take")
    if uns.get("lowered_to_max"):
        notes.append(f"{uns['lowered_to_max']} predicted values above the largest a gene can take "
                     "(log10(1 + 10⁴): the whole panel total) written as that")
    if uns.get("out_of_domain"):
        notes.append(f"WARNING: this tissue looks unlike the model's training data (score "
                     f"{uns['ood_score']:.2f} > {uns['ood_threshold']:.2f}): predictions may be meaningless")
    if "interval_level" not in uns:
        notes.append("this model carries no calibration: no intervals written")
    if uns.get("stain_normalised"):
        notes.append("the slide's staining was matched to the model's training slides (Reinhard)")
    if uns.get("seen_by_model"):
        notes.append(f"{section} was a {uns['seen_by_model']} section of this model: scores on it are optimistic")
    absent = list(uns.get("measured_absent_genes", []))
    if absent:
        notes.append(f"not measured in {section}: {', '.join(absent[:5])}{' …' if len(absent) > 5 else ''} "
                     f"({len(absent)} panel gene(s)); their measured values are NaN"
                     + (", and the intervals are for the calibration section's sequencing depth"
                        if uns.get("interval_depth_source") == "calibration" else ""))
    return notes


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_dkan.engine.predict import predict_section
    from napari_dkan.io.errors import DataError
    from napari_dkan.io.formats import open_section
    from napari_dkan.storage import anndata_size_hint, atomic_write, check_writable

    model = load_model_arg(args.model)
    if args.stain_normalise:
        model.use_stain_normalisation()
    section = open_section(args.path, args.sections[0] if args.sections else None, args.spots,
                           image=args.image, mpp=args.mpp)
    if args.output.suffix != ".h5ad":
        raise DataError(f"output must be an .h5ad file, got {args.output.name}")
    if args.output.is_dir():
        raise DataError(f"the output {args.output} is a folder: give an .h5ad file name")
    check_writable(args.output.parent.resolve())  # before any feature is computed
    if args.depth is not None and not (args.depth > 0 and math.isfinite(args.depth)):
        raise DataError(f"--depth is the median panel total per spot, a positive number; got {args.depth}")
    bars = _Bars(not args.json)
    try:
        adata = predict_section(model, section, device=args.device, progress=bars.status,
                                level=args.level, runtime=args.runtime, depth=args.depth)
    finally:
        bars.close()
    atomic_write(args.output, adata.write_h5ad, anndata_size_hint(adata))
    uns = adata.uns["napari_dkan"]
    payload = {"output": str(args.output), "spots": adata.n_obs, "genes": adata.n_vars, "section": section.name,
               "model": str(model.run_dir), "ood_score": uns.get("ood_score"),
               "ood_threshold": uns.get("ood_threshold"), "out_of_domain": uns.get("out_of_domain"),
               "interval_level": uns.get("interval_level"), "interval_depth": uns.get("interval_depth"),
               "interval_depth_source": uns.get("interval_depth_source"),
               "interval_domain_factor": uns.get("interval_domain_factor"), "seen_by_model": uns.get("seen_by_model"),
               "stain_normalised": bool(uns.get("stain_normalised")), "raised_to_0": uns.get("raised_to_0"),
               "lowered_to_max": uns.get("lowered_to_max"), "interval_unbounded": bool(uns.get("interval_unbounded"))}
    notes = predict_notes(uns, section.name, args.level)
    emit(args, payload, f"predicted {adata.n_vars} genes at {adata.n_obs} spots of {section.name} → {args.output}"
         + "".join(f"\n{n}" for n in notes))
    return 0
