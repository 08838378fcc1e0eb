"""Ensembles of trained runs: one run folder whose prediction is the weighted mean of its members'.

An ensemble folder is a run folder like any other to every command and dock (``predict``,
``evaluate``, ``trust``, the prediction dock, cohorts): its ``config.json`` says
``"model": "ensemble"`` and lists its members, each a complete run folder copied under
``members/`` (config, weights, gene-text embeddings: the ensemble is self-contained), with a
fixed weight.  The members must agree on everything that makes a prediction comparable: the
gene panel (in the same order), the image features, and the target (normalisation, smoothing).
The image features of a section are computed once and every member predicts from them.

The trust files (reliability, calibration, out-of-domain summary, stain reference) belong to the
ensemble, not to its members: they describe the averaged prediction, so they are written for
the ensemble folder (``napari-dkan trust DATA --model ENSEMBLE [--cv ENSEMBLE_CV]``).  Its
training sections are every section a member trained on; its validation sections only those
that were validation for every member and training for none — calibrating on a section one
member trained on would make the intervals optimistic, so such a section is left out.

An ensemble cannot be fine-tuned (fine-tune a member, then build a new ensemble).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.engine import checkpoint as ckpt
from napari_dkan.engine.data import Needs, SectionData
from napari_dkan.engine.ensemble_folder import KIND, MEMBERS_DIR, check_ensemble_config
from napari_dkan.engine.runs import (
    CONFIG_FILE,
    FORMAT,
    TEXT_FILE,
    TrainedModel,
    seen_in_config,
    versions,
)
from napari_dkan.engine.trainer import MODEL_FILE
from napari_dkan.io.errors import DataError
from napari_dkan.progress import CancelToken
from napari_dkan.storage import check_writable

#: what a member folder keeps in an ensemble (its own trust files would describe the member alone)
MEMBER_FILES = (CONFIG_FILE, MODEL_FILE, TEXT_FILE)


def _same(members: Sequence[TrainedModel], what: str, get: Callable[[TrainedModel], Any]) -> None:
    first = get(members[0])
    for m in members[1:]:
        if get(m) != first:
            raise DataError(f"ensemble members must share their {what}: {members[0].run_dir} and "
                            f"{m.run_dir} differ")


def _sections(members: Sequence[TrainedModel]) -> tuple[list[str], list[str]]:
    """Training sections (any member's) and validation sections (every member's own, and no
    member's — nor any ancestor's — training section)."""
    train: dict[str, None] = {}
    for m in members:
        for n in m.config["training"].get("train_sections") or []:
            train.setdefault(n)
    trained = {n for m in members for n, role in m.seen_sections.items() if role == "training"}
    vals = [set(m.config["training"].get("val_sections") or []) for m in members]
    first = list(members[0].config["training"].get("val_sections") or [])
    val = [n for n in first if all(n in v for v in vals) and n not in trained]
    return list(train), val


#: trust files that depend only on the training data (image features, staining): members trained
#: on the same sections carry identical ones, which then hold for the ensemble as they are
SHARED_TRUST_FILES = ("stain.json", "domain.safetensors")


def build_ensemble(members: Sequence[str | Path | TrainedModel], out: str | Path,
                   weights: Sequence[float] | None = None, name: str | None = None) -> EnsembleModel:
    """Write an ensemble run folder at ``out`` from trained run folders (copied in) and load it.

    ``weights`` default to equal; they are normalised to sum to 1.  Refuses members that are
    ensembles themselves, members that disagree on panel, features or target, and an ``out``
    that holds anything already.
    """
    loaded = [m if isinstance(m, TrainedModel) else TrainedModel.load(m) for m in members]
    if len(loaded) < 2:
        raise DataError("an ensemble needs at least two member runs")
    for m in loaded:
        if m.kind == KIND:
            raise DataError(f"{m.run_dir} is an ensemble already: give its members instead")
    w = np.asarray(weights if weights is not None else [1.0] * len(loaded), dtype=np.float64)
    if w.shape != (len(loaded),):
        raise DataError(f"{len(loaded)} members but {w.size} weights")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError(f"ensemble weights must be positive numbers, got {list(w)}")
    w = w / w.sum()
    _same(loaded, "gene panel (same genes, same order)", lambda m: m.panel)
    _same(loaded, "image features", lambda m: m.features.to_dict())
    _same(loaded, "target (normalisation and smoothing)", lambda m: m.config["target"])
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty: choose a new folder for the ensemble")
    check_writable(out.parent if not out.exists() else out)
    train, val = _sections(loaded)
    entries = []
    for i, (m, wi) in enumerate(zip(loaded, w)):
        rel = f"{MEMBERS_DIR}/{i:02d}-{m.kind}"
        dest = out / rel
        dest.mkdir(parents=True)
        for f in MEMBER_FILES:
            if (Path(m.run_dir) / f).is_file():
                shutil.copy2(Path(m.run_dir) / f, dest / f)
        entries.append({"dir": rel, "weight": float(wi), "model": m.kind, "preset": m.config.get("preset"),
                        "source": str(Path(m.run_dir).resolve()), "weights_sha256": m.weights_sha256,
                        "train_sections": list(m.config["training"].get("train_sections") or []),
                        "val_sections": list(m.config["training"].get("val_sections") or []),
                        "protocol": m.protocol})
    for name in SHARED_TRUST_FILES:
        paths = [Path(m.run_dir) / name for m in loaded]
        if all(p.is_file() for p in paths) and len({ckpt.sha256(p) for p in paths}) == 1:
            shutil.copy2(paths[0], out / name)
    first = loaded[0].config
    config = {
        "format": FORMAT, "model": KIND, "name": name or " + ".join(m.kind for m in loaded),
        "panel": list(loaded[0].panel), "features": loaded[0].features.to_dict(),
        "target": dict(first["target"]), "members": entries,
        "training": {"train_sections": train, "val_sections": val},
        "protocol": (f"ensemble of {len(loaded)} runs (weighted mean of their predictions); "
                     + "; ".join(sorted({m.protocol for m in loaded if m.protocol}))),
        "dataset": first.get("dataset"), "versions": versions(), "status": "finished", "files": {},
    }
    ckpt.write_json(out / CONFIG_FILE, config)
    model = TrainedModel.load(out)
    assert isinstance(model, EnsembleModel)
    return model


class EnsembleModel(TrainedModel):
    """An ensemble run folder, loaded: predicts the weighted mean of its members' predictions."""

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        super().__init__(run_dir, config)
        self.members: list[TrainedModel] = []
        self.weights = np.asarray([m["weight"] for m in config["members"]], dtype=np.float64)
        self.weights = self.weights / self.weights.sum()

    @classmethod
    def from_config(cls, run_dir: Path, config: dict[str, Any]) -> EnsembleModel:
        """The ensemble in ``run_dir`` whose ``config.json`` :meth:`TrainedModel.load` has read."""
        check_ensemble_config(config, run_dir / CONFIG_FILE)
        model = cls(run_dir, config)
        model._load_weights()
        return model

    def _load_weights(self) -> None:
        members = []
        for entry in self.config["members"]:
            member_dir = self.run_dir / entry["dir"]
            if not (member_dir / CONFIG_FILE).is_file():
                raise ckpt.CheckpointError(f"member {entry['dir']} of the ensemble {self.run_dir} is missing; "
                                           "restore the folder, or build the ensemble again")
            member = TrainedModel.load(member_dir)
            if member.kind == KIND:
                raise ckpt.CheckpointError(f"{member_dir}: an ensemble member cannot be an ensemble")
            if entry.get("weights_sha256") and member.weights_sha256 != entry["weights_sha256"]:
                raise ckpt.CheckpointError(f"the weights of member {entry['dir']} of {self.run_dir} are not "
                                           "the ones the ensemble was built with")
            members.append(member)
        _same(members, "gene panel (same genes, same order)", lambda m: m.panel)
        if members[0].panel != self.panel:
            raise ckpt.CheckpointError(f"the members of {self.run_dir} predict another gene panel than its config lists")
        _same(members, "image features", lambda m: m.features.to_dict())
        self.members = members

    @property
    def seen_sections(self) -> dict[str, str]:
        """Every section a member (or a member's ancestor) trained or selected on."""
        out: dict[str, str] = {}
        for m in self.members:
            for name, role in m.seen_sections.items():
                if role == "training" or name not in out:
                    out[name] = role
        return out

    @property
    def needs(self) -> Needs:
        parts = [m.needs for m in self.members]
        return Needs(patch_tokens=any(n.patch_tokens for n in parts), patches=any(n.patches for n in parts),
                     neighbours=max(n.neighbours for n in parts))

    @property
    def weights_sha256(self) -> str:
        """One digest for the set of member weights and their ensemble weights."""
        text = "|".join(f"{e['dir']}:{m.weights_sha256}:{w:.12g}"
                        for e, m, w in zip(self.config["members"], self.members, self.weights))
        return hashlib.sha256(text.encode()).hexdigest()

    def predict(self, data: SectionData, device: str = "auto",
                progress: Callable[[int, int], None] | None = None,
                cancel: CancelToken | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """The weighted mean of the members' predictions (spots × panel, float32); progress
        runs once from 0 to the spots' count over all members (a spot is done when every member
        has predicted it: the bar counts spots, not spot × member passes)."""
        k = len(self.members)
        acc: np.ndarray | None = None
        for i, (m, w) in enumerate(zip(self.members, self.weights)):
            cb = None
            if progress is not None:
                def cb(done: int, total: int, i: int = i) -> None:
                    progress((i * total + done) // k, total)
            pred = np.asarray(m.predict(data, device=device, progress=cb, cancel=cancel, rows=rows), dtype=np.float64)
            acc = w * pred if acc is None else acc + w * pred
            if progress is not None:  # a member that reports no progress of its own (ridge) still moves it
                progress(((i + 1) * len(pred)) // k, len(pred))
        assert acc is not None
        return acc.astype(np.float32)

    @property
    def n_parameters(self) -> int:
        return int(sum(m.n_parameters for m in self.members))

    def state_dict(self) -> dict[str, Any]:
        raise DataError(f"{self.run_dir} is an ensemble of {len(self.members)} networks and cannot be "
                        f"fine-tuned as one; fine-tune a member ({self.run_dir / MEMBERS_DIR}/…) instead")

    def gene_text(self) -> Any:
        return None

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"run": str(self.run_dir), "model": KIND, "name": c.get("name"), "preset": None,
                "parameters": self.n_parameters, "genes": len(self.panel),
                "image_encoder": c["features"]["encoder"], "text_encoder": None, "protocol": c.get("protocol"),
                "trained_on": c["training"].get("train_sections"),
                "members": [{"model": e["model"], "preset": e.get("preset"), "weight": float(w),
                             "parameters": m.n_parameters, "text_encoder": (m.config.get("text") or {}).get("encoder")}
                            for e, m, w in zip(c["members"], self.members, self.weights)]}


def ensemble_cv(cv_dirs: Sequence[str | Path], out: str | Path, weights: Sequence[float] | None = None,
                name: str | None = None) -> list[str]:
    """For each fold finished in every cross-validation folder of ``cv_dirs``, an ensemble of
    its fold models at ``out/fold-X`` — the ensemble's own cross-validation, to score or to take
    reliability from.  Returns the folds written."""
    dirs = [Path(d).expanduser() for d in cv_dirs]
    folds = sorted({p.name for p in dirs[0].glob("fold-*")})
    done = [f for f in folds if all((d / f / MODEL_FILE).is_file() for d in dirs)]
    if not done:
        raise DataError(f"no fold is finished in every one of {', '.join(map(str, dirs))}")
    for f in done:  # before anything is written: a fold model that saw its own test section
        held = f.removeprefix("fold-")
        for d in dirs:
            if held in seen_in_config(ckpt.read_json(d / f / CONFIG_FILE)):
                raise DataError(f"{d / f} trained or selected on {held}, the section it should hold out: "
                                "no ensemble fold is built from it")
    out = Path(out).expanduser()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for f in done:
            if (out / f).exists() and any((out / f).iterdir()):
                raise DataError(f"{out / f} is not empty: choose a new folder for the ensemble's folds")
            written.append(out / f)
            build_ensemble([d / f for d in dirs], out / f, weights, name)
    except BaseException:  # nothing half-built is left behind to block a retry
        for path in written:
            shutil.rmtree(path, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return done

