"""Training runs: what to train (:class:`RunSpec`), training one, and loading it back.

A run directory is self-contained: ``config.json`` (model kind, network, gene panel, encoders,
normalisation, training settings, data, versions, protocol, results), the weights, and the
gene-text embeddings the model was trained with — so prediction needs neither the data nor the
text encoder, and never the network.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan import __version__
from napari_dkan.engine import checkpoint as ckpt
from napari_dkan.engine import distributed
from napari_dkan.engine.data import FeatureSpec, Needs, SectionData, load_section_data
from napari_dkan.engine.families import Dims, make_family
from napari_dkan.engine.trainer import (
    MODEL_FILE,
    STATE_FILE,
    FitResult,
    TrainEvent,
    TrainSettings,
    fit,
)
from napari_dkan.io.dataset import Section
from napari_dkan.io.errors import DataError
from napari_dkan.progress import CancelToken
from napari_dkan.storage import atomic_write, check_writable

log = logging.getLogger(__name__)

CONFIG_FILE = ckpt.CONFIG_FILE
TEXT_FILE = "gene_text.safetensors"
FORMAT = "napari-dkan-run/1"
PAPER_PROTOCOL_LABEL = "paper (checkpoint selected and early-stopped on the test fold: leaky)"
INNER_PROTOCOL_LABEL = "inner validation (selection on held-out training sections)"
OVERLAP_PROTOCOL_LABEL = "selection on sections also trained on (not held out: optimistic)"

#: training defaults per preset (the paper's for its presets; CPU-sized for compact)
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    "compact": {"epochs": 100, "patience": 15, "lr": 5e-4, "batch_size": 64, "contrastive_genes": 32},
    "tiny": {"epochs": 4, "patience": 4, "lr": 1e-3, "batch_size": 32, "contrastive_genes": 8},
}


@dataclass
class RunSpec:
    """Everything that defines a training run, independent of the data split."""

    model: str = "dkan"
    preset: str = "compact"
    features: FeatureSpec = field(default_factory=FeatureSpec)
    settings: TrainSettings = field(default_factory=TrainSettings)
    smoothing: bool = True
    text_encoder: str | None = None  # None: the knowledge package's offline default
    text_file: str | None = None  # SYMBOL<TAB>text file replacing the composed texts
    disease: str | None = None
    protocol: str = "inner"  # inner | paper
    validation: str = "sections"  # sections | patients
    network_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_preset(cls, model: str, preset: str, **kw: Any) -> RunSpec:
        """A spec whose training settings start from the preset's defaults."""
        settings = kw.pop("settings", None) or TrainSettings(**PRESET_TRAINING.get(preset, {}))
        return cls(model=model, preset=preset, settings=settings, **kw)

    def network(self) -> dict[str, Any]:
        """The network config (JSON) of this spec's model family."""
        from napari_dkan.model import NH2STConfig, preset, variant

        if self.model == "nh2st":
            return NH2STConfig(**self.network_overrides).to_dict()
        if self.model == "ridge":
            return {}
        cfg = variant(preset(self.preset), self.model)
        if self.network_overrides:
            cfg = replace(cfg, **self.network_overrides)
        return cfg.to_dict()

    @property
    def uses_text(self) -> bool:
        return self.model in ("dkan", "dkan-improved")

    def needs(self) -> Needs:
        if self.model == "ridge":
            return Needs()
        return make_family(self.model, self.network()).needs


def versions() -> dict[str, str]:
    import torch

    out = {"napari_dkan": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("timm", "transformers", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version string is informative, never required
            pass
    return out


def prepare_sections(
    sections: Sequence[Section], spec: RunSpec, panel: Sequence[str] | None,
    progress: Callable[[str, int, int], None] | None = None, cancel: CancelToken | None = None,
) -> dict[str, SectionData]:
    """Features and targets of each section, keyed by name (features come from the cache)."""
    needs = spec.needs()
    out = {}
    for sec in sections:
        cb = (lambda d, t, name=sec.name: progress(f"features {name}", d, t)) if progress else None
        out[sec.name] = load_section_data(sec, spec.features, panel, needs, spec.smoothing,
                                          device=spec.settings.device, progress=cb, cancel=cancel)
    return out


def gene_text_for(spec: RunSpec, panel: Sequence[str]) -> Any:
    """Gene-text embeddings for a DKAN run (None for models without text)."""
    if not spec.uses_text:
        return None
    from napari_dkan.knowledge import gene_embeddings

    kw: dict[str, Any] = {"disease": spec.disease, "texts": spec.text_file}
    if spec.text_encoder:
        kw["encoder"] = spec.text_encoder
    return gene_embeddings(list(panel), **kw)


def _digest(values: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]


def train_model(
    data: dict[str, SectionData],
    train_names: Sequence[str],
    val_names: Sequence[str],
    spec: RunSpec,
    panel: Sequence[str],
    run_dir: Path,
    gene_text: Any = None,
    dataset_info: dict[str, Any] | None = None,
    on_event: Callable[[TrainEvent], None] | None = None,
    cancel: CancelToken | None = None,
    resume: bool = True,
    base: TrainedModel | None = None,
    on_folder: Callable[[RunFolder], None] | None = None,
    sections: Sequence[Section] = (),
) -> TrainedModel:
    """Train on ``train_names``, select on ``val_names``; returns the trained model.

    ``val_names`` may name entries of ``data`` that are not sections of the dataset (spatial
    hold-outs); with ``spec.protocol == "paper"`` they are the test sections, and every output
    says so.  ``base`` fine-tunes from a trained model with the same panel and network.

    Before anything is written, ``run_dir`` is inspected (:func:`inspect_run_folder`) and
    ``on_folder`` told what will happen to it; a folder holding another run is refused
    (:class:`~napari_dkan.engine.checkpoint.CheckpointError`) and left exactly as it was.

    ``sections``: the dataset sections ``data`` was read from; the images of those trained and
    selected on give the run's stain reference (``stain.json``, :func:`write_stain_reference`).
    """
    if spec.model == "ridge" and distributed.current().active:
        raise DataError("ridge regression has no training loop to spread over processes; "
                        "train it without --distributed / torchrun")
    run_dir = Path(run_dir)
    spec.settings.check()
    train = [data[n] for n in train_names]
    val = [data[n] for n in val_names]
    dims = _dims(train[0], panel, gene_text)
    config = _run_config(spec, dims, panel, train_names, val_names, dataset_info, base)
    text_file = _gene_text_file(config, gene_text, panel)
    fingerprint = config["fingerprint"] = _fingerprint(spec, config, train_names, val_names, base)
    folder = inspect_run_folder(run_dir, fingerprint, resume)
    if on_folder is not None:
        on_folder(folder)
    if folder.action == "refuse":
        raise ckpt.CheckpointError(folder.message)
    if folder.action == "finished" and folder.complete:
        if distributed.current().is_main and not (run_dir / "stain.json").is_file():
            write_stain_reference(run_dir, [*train_names, *val_names], sections)  # a run from before it
        return TrainedModel.load(run_dir)
    main = distributed.current().is_main
    if main:  # under torchrun, rank 0 alone writes the run's files
        check_writable(run_dir)  # creates it; a read-only or full disk is one clear line
    # under torchrun the ranks train one folder together: no lock (a refused rank 0 would leave
    # the others waiting at the barrier)
    with run_lock(run_dir) if main and not distributed.current().active else contextlib.nullcontext():
        if main:
            if text_file is not None:
                atomic_write(run_dir / TEXT_FILE, text_file)
            ckpt.write_json(run_dir / CONFIG_FILE, config)
            write_stain_reference(run_dir, [*train_names, *val_names], sections)
        distributed.barrier()
        text_arr = None if gene_text is None else np.asarray(gene_text.matrix, dtype=np.float32)
        if spec.model == "ridge":
            return _with_trust(_train_ridge(run_dir, config, train, val), train, val)
        result: FitResult = fit(make_family(spec.model, config["network"]), dims, train, val, spec.settings,
                                run_dir, text_arr, fingerprint, on_event=on_event, cancel=cancel,
                                resume=resume, init_weights=base.state_dict() if base is not None else None)
        model = _finish_run(run_dir, config, result)
        return _with_trust(model, train, val) if main else model


def seen_in_config(config: dict[str, Any]) -> dict[str, str]:
    """Sections a run's ``config.json`` says it (or an ancestor) trained or selected on:
    name → ``training`` / ``validation`` (read without loading the run's weights)."""
    out: dict[str, str] = {}
    for entry in [*(config.get("ancestry") or []), config.get("training") or {}]:
        for n in entry.get("val_sections") or []:
            out.setdefault(n, "validation")
        for n in entry.get("train_sections") or []:
            out[n] = "training"
    return out


LOCK_FILE = "training.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this training while it runs: a second training of the same folder
    (two ``cv --only-folds`` of one fold; two trainings in one process too) is refused in words
    instead of both writing the same checkpoints (one once died on the other's renamed file).

    An operating-system lock (``flock``) on ``training.lock``: released by the system when the
    process ends, however it ends, so a crash leaves nothing to clear; the file (kept) names
    the holder's pid for the message.  Where ``fcntl`` is missing (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise DataError(f"{run_dir} is being trained by another process (pid {holder}): wait for it to "
                            "finish, or choose another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_stain_reference(run_dir: Path, names: Sequence[str], sections: Sequence[Section]) -> Any:
    """Write the run's ``stain.json`` from the images of the named sections (a spatial hold-out
    ``B4[fit]`` counts as B4); None, with a warning, when there is nothing to take it from: the
    run is still usable, only not with stain normalisation."""
    from napari_dkan.features.stain import write_reference

    by_name = {s.name: s for s in sections}
    chosen = [by_name[n] for n in dict.fromkeys(n.split("[")[0] for n in names) if n in by_name]
    if not chosen:
        return None
    try:
        return write_reference(run_dir, chosen)
    except DataError as exc:
        log.warning("no stain reference written for %s: %s", run_dir, exc)
        return None


def _with_trust(model: TrainedModel, train: Sequence[SectionData], val: Sequence[SectionData]) -> TrainedModel:
    """Write the run's reliability, calibration and image-domain files (engine/trust.py).

    A run whose validation is too small to calibrate still trains: the files it cannot have are
    left out, and a warning says why.
    """
    import warnings

    from napari_dkan.engine.trust import attach_from_data

    try:
        attach_from_data(model, train, val)
        model.reload_trust()
    except ValueError as exc:
        warnings.warn(f"{model.run_dir}: trust files incomplete: {exc}", stacklevel=2)
    return model


def ancestry_of(base: TrainedModel) -> list[dict[str, Any]]:
    """A fine-tuned run's lineage, oldest first: each ancestor's run, model and sections."""
    c = base.config
    entry = {"run": str(base.run_dir), "name": Path(base.run_dir).name, "model": c.get("model"),
             "train_sections": list(c.get("training", {}).get("train_sections") or []),
             "val_sections": list(c.get("training", {}).get("val_sections") or []),
             "dataset": (c.get("dataset") or {}).get("name") or (c.get("dataset") or {}).get("path")}
    return [*c.get("ancestry", []), entry]


def _dims(first: SectionData, panel: Sequence[str], gene_text: Any) -> Dims:
    """The input and output sizes of the network, read off the data."""
    return Dims(
        n_genes=len(panel),
        frozen_dim=int(first.patch_feat.shape[1]),
        token_dim=int(first.patch_tokens.shape[2]) if first.patch_tokens is not None else None,
        text_dim=int(gene_text.matrix.shape[1]) if gene_text is not None else None,
    )


def _run_config(spec: RunSpec, dims: Dims, panel: Sequence[str], train_names: Sequence[str],
                val_names: Sequence[str], dataset_info: dict[str, Any] | None,
                base: TrainedModel | None) -> dict[str, Any]:
    """The run's ``config.json`` as training starts (status "training", no result yet)."""
    config: dict[str, Any] = {
        "format": FORMAT,
        "model": spec.model,
        "preset": spec.preset if spec.model in ("dkan", "dkan-improved", "triplex") else None,
        "network": spec.network(),
        "dims": dims.__dict__,
        "panel": list(panel),
        "target": {"normalisation": "log10(1 + 10000 * counts / panel total)", "smoothing": spec.smoothing},
        "features": spec.features.to_dict(),
        "text": None,
        "training": {**spec.settings.to_dict(), "train_sections": list(train_names),
                     "val_sections": list(val_names), "validation": spec.validation},
        "protocol": _protocol_label(spec, train_names, val_names),
        "dataset": dataset_info or {},
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "training",
    }
    if base is not None:
        config["fine_tuned_from"] = str(base.run_dir)
        config["ancestry"] = ancestry_of(base)
    return config


def _protocol_label(spec: RunSpec, train_names: Sequence[str], val_names: Sequence[str]) -> str:
    """How the checkpoint was selected — never "held-out" when validation spots were trained on
    (the command line and the dock refuse that; the library labels it)."""
    if spec.protocol == "paper":
        return PAPER_PROTOCOL_LABEL
    if set(train_names) & set(val_names):
        return OVERLAP_PROTOCOL_LABEL
    return INNER_PROTOCOL_LABEL


def _gene_text_file(config: dict[str, Any], gene_text: Any, panel: Sequence[str]) -> bytes | None:
    """The gene-text embeddings file's bytes (None without text); its digest goes into ``config``."""
    if gene_text is None:
        return None
    data = ckpt.encode_tensors({"gene_text": np.asarray(gene_text.matrix, dtype=np.float32)},
                               metadata={"genes": json.dumps(list(panel))})
    config["text"] = {"encoder": gene_text.encoder, "pooling": gene_text.pooling,
                      "provenance": gene_text.provenance, "sha256": hashlib.sha256(data).hexdigest()}
    return data


def _fingerprint(spec: RunSpec, config: dict[str, Any], train_names: Sequence[str],
                 val_names: Sequence[str], base: TrainedModel | None) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoints."""
    return {**_spec_fingerprint(spec, config.get("dataset", {}).get("path"), base),
            "dims": config["dims"], "panel": _digest(config["panel"]),
            "train": list(train_names), "val": list(val_names),
            "text": config["text"]["sha256"] if config["text"] else None}


def _spec_fingerprint(spec: RunSpec, dataset: str | None, base: TrainedModel | None) -> dict[str, Any]:
    """The part of a run's fingerprint known before any data is read."""
    return {"model": spec.model, "network": spec.network(), "features": spec.features.to_dict(),
            "settings": spec.settings.to_dict(), "smoothing": spec.smoothing,
            "dataset": str(Path(dataset).expanduser().resolve()) if dataset else None,
            "base": str(base.run_dir) if base is not None else None}


_FINGERPRINT_WORDS = {
    "model": "model family", "network": "network", "features": "image features",
    "settings": "training settings", "smoothing": "target smoothing", "dataset": "dataset",
    "base": "base model", "dims": "input sizes", "panel": "gene panel", "train": "training sections",
    "val": "validation sections", "text": "gene texts",
}
#: fields older runs did not record: absent means "not compared"
_LATER_FIELDS = ("dataset", "model")


@dataclass(frozen=True)
class RunFolder:
    """What training into an output folder will do, decided before anything is written.

    ``action``: ``new`` (nothing there), ``resume`` (this run, unfinished), ``finished`` (this
    run, done: loaded as it is), ``overwrite`` (``resume=False``: started over) or ``refuse``
    (another run, or files that are not a run: left untouched).
    """

    path: Path
    action: str
    message: str
    epochs_done: int = 0
    complete: bool = False  # finished and its config.json records the result

    @property
    def refused(self) -> bool:
        return self.action == "refuse"


def inspect_run_folder(run_dir: str | Path, fingerprint: dict[str, Any], resume: bool = True) -> RunFolder:
    """What training a run with ``fingerprint`` into ``run_dir`` will do to it.

    ``fingerprint`` may be partial (:func:`preflight_run_folder`): only its keys are compared.
    """
    path = Path(run_dir).expanduser()
    if path.exists() and not path.is_dir():
        return RunFolder(path, "refuse", f"the output {path} is a file: choose a folder")
    has = {n: (path / n).is_file() for n in (CONFIG_FILE, STATE_FILE, MODEL_FILE, TEXT_FILE)}
    if not any(has.values()):
        return RunFolder(path, "new", f"a new run in {path}")
    recorded, status, epochs, config = _recorded_run(path, has)
    if recorded is None:
        return RunFolder(path, "refuse", f"{path} holds files of a napari-dkan run that cannot be "
                         "checked against this one (written by another version, or damaged); it is left "
                         "as it is: choose another output folder, or delete it to start over")
    differ = [k for k in fingerprint if fingerprint[k] != recorded.get(k, fingerprint[k] if k in _LATER_FIELDS
                                                                       else object())]
    if not resume:
        return RunFolder(path, "overwrite", f"the run in {path} is started over (its files are replaced)")
    if differ:
        what = ", ".join(_FINGERPRINT_WORDS.get(k, k) for k in differ)
        return RunFolder(path, "refuse", f"{path} holds a different training run ({what} differ); it is "
                         "left as it is: choose another output folder, or delete it to start over")
    if status in ("finished", "early-stopped"):
        complete = config.get("status") in ("finished", "early-stopped") and bool(config.get("files"))
        return RunFolder(path, "finished", f"{path} holds this run, already {status} after {epochs} epochs: "
                         "it is loaded as it is", epochs, complete)
    return RunFolder(path, "resume", f"the run in {path} is resumed after epoch {epochs}", epochs)


def preflight_run_folder(run_dir: str | Path, spec: RunSpec, dataset: str | None,
                         base: TrainedModel | None = None) -> RunFolder:
    """:func:`inspect_run_folder` with what is known before any feature is computed: a folder
    holding a run of other settings, features, network or data is refused at once."""
    return inspect_run_folder(run_dir, _spec_fingerprint(spec, dataset, base))


def _recorded_run(path: Path, has: dict[str, bool]) -> tuple[dict[str, Any] | None, str, int, dict[str, Any]]:
    """(recorded fingerprint, status, epochs done, config) of the run in ``path``."""
    try:
        config = ckpt.read_json(path / CONFIG_FILE) if has[CONFIG_FILE] else {}
        state = ckpt.read_json(path / STATE_FILE) if has[STATE_FILE] else {}
    except ckpt.CheckpointError:
        return None, "", 0, {}
    recorded = state.get("fingerprint") or config.get("fingerprint")
    if recorded is not None:
        recorded = {"model": config.get("model"), **recorded} if config.get("model") else recorded
    status = state.get("status") or config.get("status", "")
    epochs = int(state.get("epoch") or (config.get("result") or {}).get("epochs_run") or 0)
    return recorded, status, epochs, config


def _train_ridge(run_dir: Path, config: dict[str, Any], train: list[SectionData],
                 val: list[SectionData]) -> TrainedModel:
    from napari_dkan.engine.ridge import fit_ridge

    ridge = fit_ridge(train, val)
    digest = ckpt.save_tensors(run_dir / MODEL_FILE, ridge.tensors())
    config.update(status="finished", files={MODEL_FILE: digest},
                  result={"alpha": ridge.alpha, "history": ridge.history})
    ckpt.write_json(run_dir / CONFIG_FILE, config)
    return TrainedModel.load(run_dir)


def _finish_run(run_dir: Path, config: dict[str, Any], result: FitResult) -> TrainedModel:
    """Record the outcome of training in ``config.json`` and load the selected model."""
    config.update(status=result.status, files={MODEL_FILE: result.best_sha256},
                  result={"epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
                          "best_val_pcc": result.best_val_pcc, "resumed_from": result.resumed_from,
                          "history": result.history})
    if distributed.current().is_main:
        ckpt.write_json(run_dir / CONFIG_FILE, config)
    distributed.barrier()  # the other ranks load the run rank 0 has just finished writing
    if result.best_sha256 is None:
        raise DataError(f"training in {run_dir} was cancelled before its first epoch ended; "
                        "nothing was saved")
    return TrainedModel.load(run_dir)


class TrainedModel:
    """A trained run directory, loaded for prediction."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.config = config
        self.kind: str = config["model"]
        self.panel: list[str] = list(config["panel"])
        self.features = FeatureSpec.from_dict(config["features"])
        self.smoothing: bool = bool(config["target"]["smoothing"])
        self._net: Any = None
        self._text: Any = None
        self._trust: Any = None
        #: with a StainReference, every tile is stain-normalised to it (see use_stain_normalisation)
        self.stain: Any = None

    @classmethod
    def load(cls, path: str | Path) -> TrainedModel:
        """A run directory, or its ``config.json`` / ``model.safetensors``."""
        p = Path(path).expanduser()
        run_dir = p if p.is_dir() else p.parent
        cfg_path = run_dir / CONFIG_FILE
        if not cfg_path.is_file():
            raise ckpt.CheckpointError(f"{p} is not a napari-dkan run: no {CONFIG_FILE} in {run_dir}")
        config = ckpt.read_json(cfg_path)
        if config.get("format") != FORMAT:
            raise ckpt.CheckpointError(f"{cfg_path} is not a {FORMAT} config")
        from napari_dkan.engine.ensemble_folder import KIND as ENSEMBLE

        if config.get("model") == ENSEMBLE:
            from napari_dkan.engine.ensemble import EnsembleModel

            return EnsembleModel.from_config(run_dir, config)
        from napari_dkan.engine.run_schema import check_run_config

        check_run_config(config, cfg_path)
        if config.get("files", {}).get(MODEL_FILE) and not (run_dir / MODEL_FILE).is_file():
            pickles = sorted(f.name for f in run_dir.glob("*.pt")) + sorted(f.name for f in run_dir.glob("*.pth"))
            also = (f" ({', '.join(pickles)} is there, but napari-dkan never loads pickled weights: they can "
                    "run code)") if pickles else ""
            raise ckpt.CheckpointError(f"the weights file {MODEL_FILE} is missing from {run_dir}{also}; "
                                       "restore it, or retrain")
        if not config.get("files", {}).get(MODEL_FILE):
            raise ckpt.CheckpointError(f"{run_dir} has no finished checkpoint ({config.get('status')})")
        model = cls(run_dir, config)
        model._load_weights()  # fail now, not at the first prediction, when a file is corrupt
        return model

    @property
    def needs(self) -> Needs:
        if self.kind == "ridge":
            return Needs()
        return make_family(self.kind, self.config["network"]).needs

    @property
    def protocol(self) -> str:
        return self.config.get("protocol", "")

    @property
    def weights_sha256(self) -> str:
        """The identity of the weights (cache keys: a prediction is reused only for the same weights)."""
        return self.config["files"][MODEL_FILE]

    @property
    def trust(self) -> Any:
        """The run's :class:`~napari_dkan.engine.trust.Trust` (parts absent in older runs)."""
        if self._trust is None:
            from napari_dkan.engine.trust import Trust

            self._trust = Trust.load(self.run_dir)
        return self._trust

    def reload_trust(self) -> None:
        self._trust = None

    def use_stain_normalisation(self, on: bool = True) -> None:
        """Stain-normalise every slide to this run's training slides (its ``stain.json``) from
        now on; raises :class:`~napari_dkan.features.stain.StainError` when it has none."""
        from napari_dkan.features.stain import StainReference

        self.stain = StainReference.load(self.run_dir) if on else None

    def stain_record(self, section: Section) -> dict[str, Any] | None:
        """The normalisation applied to ``section`` (source and target statistics), or None."""
        if self.stain is None:
            return None
        from napari_dkan.features.stain import section_transform

        return section_transform(section, self.stain).record()

    @property
    def seen_sections(self) -> dict[str, str]:
        """Sections this model (or an ancestor) trained or selected on: name → ``training`` /
        ``validation``."""
        return seen_in_config(self.config)

    def _load_weights(self) -> None:
        tensors = ckpt.load_tensors(self.run_dir / MODEL_FILE, self.config["files"][MODEL_FILE])
        if self.config.get("text"):
            text = ckpt.load_tensors(self.run_dir / TEXT_FILE, self.config["text"]["sha256"])
            self._text = text["gene_text"]
        if self.kind == "ridge":
            from napari_dkan.engine.ridge import RidgeModel

            self._net = RidgeModel.from_tensors({k: v.numpy() for k, v in tensors.items()},
                                                self.config["result"]["alpha"])
            return
        family = make_family(self.kind, self.config["network"])
        net = family.build(Dims(**self.config["dims"]))
        try:
            net.load_state_dict(tensors)
        except RuntimeError as exc:
            raise ckpt.CheckpointError(f"{self.run_dir / MODEL_FILE} does not fit its config: {exc}") from exc
        self._family, self._net = family, net.eval()

    def state_dict(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self._net.state_dict().items()}

    def gene_text(self) -> Any:
        """The gene-text embeddings this model was trained with (None for models without text).

        Fine-tuning passes them to :func:`train_model` as they are: the network learned these
        exact vectors, and re-embedding would need the text encoder and could differ from them.
        """
        if self._text is None:
            return None
        from napari_dkan.knowledge.embeddings import GeneEmbeddings

        text = self.config["text"]
        return GeneEmbeddings(genes=list(self.panel), matrix=self._text.numpy().astype(np.float32),
                              encoder=text["encoder"], pooling=text["pooling"], texts=[],
                              provenance=dict(text.get("provenance") or {}))

    def section_data(self, section: Section, with_targets: bool = True,
                     progress: Callable[[int, int], None] | None = None,
                     cancel: CancelToken | None = None, device: str = "auto",
                     runtime: str = "auto") -> SectionData:
        panel = self.panel if with_targets and section.has_counts else None
        return load_section_data(section, self.features, panel, self.needs, self.smoothing,
                                 device=device, progress=progress, cancel=cancel, runtime=runtime,
                                 stain=self.stain)

    def predict(self, data: SectionData, device: str = "auto",
                progress: Callable[[int, int], None] | None = None,
                cancel: CancelToken | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Predicted targets (spots × panel) for one section's data, in its spot order; with
        ``rows``, for those spots only (each still seeing all of ``data`` as slide context)."""
        if self.kind == "ridge":
            return self._net.predict(data.patch_feat if rows is None else data.patch_feat[rows])
        from napari_dkan.devices import resolve_device
        from napari_dkan.engine.families import SpotStore, predict_store

        dev = resolve_device(device)
        net = self._net.to(dev)
        text = None if self._text is None else self._text.to(dev)
        return predict_store(self._family, net, SpotStore([data], dev), text, cancel=cancel,
                             progress=progress, rows=rows)

    @property
    def n_parameters(self) -> int:
        """Trainable parameters of the network (the frozen image encoder not counted); for ridge
        regression, its coefficients and intercepts."""
        if self.kind == "ridge":
            return int(self._net.coef.size + self._net.intercept.size)
        return int(sum(p.numel() for p in self._net.parameters() if p.requires_grad))

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"run": str(self.run_dir), "model": self.kind, "preset": c.get("preset"),
                "parameters": self.n_parameters,
                "genes": len(self.panel), "image_encoder": c["features"]["encoder"],
                "text_encoder": (c.get("text") or {}).get("encoder"), "protocol": c.get("protocol"),
                "trained_on": c["training"].get("train_sections")}

