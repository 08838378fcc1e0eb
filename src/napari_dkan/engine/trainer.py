"""The training loop: Adam + StepLR, early stopping on validation PCC, resumable, cancellable.

method.md §6: Adam (lr 1e-4), StepLR (step 50 epochs, γ 0.9), up to 200 epochs, batch 128,
mixed precision (bf16 on CUDA), early stopping with patience 20 on the mean per-gene Pearson r
of the validation sections, seed 2021.

Determinism and resume: the shuffling, augmentation and dropout of epoch *e* are drawn from
generators seeded with (seed, e), so a run resumed after epoch *e* continues exactly as the
uninterrupted run would.  After every epoch the last weights and optimizer state are written
and, on improvement, the best weights — each atomically, under a new name (``last-e0007.safetensors``,
``best-e0007.safetensors``) — and only then ``state.json``, which points at them; files it no
longer points at are removed last.  So a crash between any two writes leaves a state whose files
are all there, and the run resumes.  When training ends, the best weights are published as
``model.safetensors``.  A cancel request is honoured after the current step:
the epoch in progress is dropped, the best checkpoint is kept, and a later call resumes.
The engine never prints: it reports :class:`TrainEvent` through a callback.

Under ``torchrun`` (a process group joined with :mod:`napari_dkan.engine.distributed`) the
same loop trains with DistributedDataParallel: ``batch_size`` is per process, so the global
batch is ``world_size × batch_size``; each rank takes its shard of the shared epoch permutation;
rank 0 validates and decides on early stopping, broadcasts the decision, and alone writes the
checkpoints (unwrapped weights: a run resumes under any number of processes, or none).
Augmentation and dropout are drawn per rank (rank 0 keeps the single-process streams), while the
contrastive gene subset stays shared, as it would be for one global batch.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_dkan.engine import checkpoint as ckpt
from napari_dkan.engine import distributed as dist
from napari_dkan.engine.data import SectionData
from napari_dkan.engine.families import Dims, DKANFamily, NH2STFamily, SpotStore, predict_store
from napari_dkan.engine.metrics import pearson_per_gene
from napari_dkan.progress import CancelToken
from napari_dkan.storage import atomic_write

MODEL_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"  # runs written before checkpoints had per-epoch names
STATE_FILE = "state.json"


def last_file(epoch: int) -> str:
    """Weights and optimiser state after ``epoch`` (1-based)."""
    return f"last-e{epoch:04d}.safetensors"


def best_file(epoch: int) -> str:
    """The best weights, found at ``epoch`` (1-based)."""
    return f"best-e{epoch:04d}.safetensors"


@dataclass
class TrainSettings:
    epochs: int = 200
    lr: float = 1e-4
    step_size: int = 50
    gamma: float = 0.9
    batch_size: int = 128
    patience: int = 20
    seed: int = 2021
    augment: bool = True
    #: genes drawn per step for InfoNCE (None: all genes, as the paper)
    contrastive_genes: int | None = None
    mixed_precision: bool = True
    device: str = "auto"
    weight_decay: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        return cls(**data)

    def problems(self) -> list[str]:
        """What is wrong with these numbers, one sentence each (empty when they can train)."""
        out = []
        for name, least in (("epochs", 1), ("batch_size", 1), ("patience", 1), ("step_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                out.append(f"{name.replace('_', ' ')} must be a whole number of at least {least}, got {value!r}")
        for name in ("lr", "gamma"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                out.append(f"{'the learning rate' if name == 'lr' else name} must be a positive number, "
                           f"got {value!r}")
        if not (isinstance(self.weight_decay, (int, float)) and math.isfinite(self.weight_decay)
                and self.weight_decay >= 0):
            out.append(f"weight decay must be zero or positive, got {self.weight_decay!r}")
        if self.contrastive_genes is not None and (not isinstance(self.contrastive_genes, int)
                                                   or self.contrastive_genes < 2):
            out.append(f"contrastive genes must be at least 2 (or all), got {self.contrastive_genes!r}")
        return out

    def check(self) -> None:
        """Raise :class:`~napari_dkan.io.errors.DataError` listing every wrong number."""
        problems = self.problems()
        if problems:
            from napari_dkan.io.errors import DataError

            raise DataError("; ".join(problems))


@dataclass
class TrainEvent:
    """What the loop reports: after each step (``phase="step"``) and each epoch (``"epoch"``)."""

    phase: str
    epoch: int  # 1-based
    epochs: int
    step: int = 0
    steps: int = 0
    loss: float | None = None
    val_pcc: float | None = None
    best_pcc: float | None = None
    best_epoch: int | None = None
    logs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    status: str  # finished | early-stopped | cancelled
    epochs_run: int
    best_epoch: int | None
    best_val_pcc: float | None
    history: list[dict[str, Any]]
    resumed_from: int = 0
    best_sha256: str | None = None


def validation_pcc(family: DKANFamily | NH2STFamily, model: torch.nn.Module, store: SpotStore,
                   gene_text: torch.Tensor | None) -> float:
    """Mean over validation sections of the nan-mean per-gene Pearson r."""
    pred = predict_store(family, model, store, gene_text)
    scores = []
    for i, sec in enumerate(store.sections):
        rows = store.section_rows(i)
        scores.append(np.nanmean(pearson_per_gene(pred[rows], sec.y)) if len(rows) > 2 else np.nan)
    with np.errstate(all="ignore"):
        value = float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")
    return value


@dataclass
class _Loop:
    """What one training run steps through: the network, its optimiser and the data."""

    net: torch.nn.Module  # the bare network (checkpoints, validation)
    model: torch.nn.Module  # the network as trained (DDP-wrapped under torchrun)
    opt: torch.optim.Optimizer
    sched: Any
    text: torch.Tensor | None
    train_store: SpotStore
    val_store: SpotStore | None  # only rank 0 validates
    has_val: bool
    device: torch.device


@dataclass
class _Progress:
    """Where a run stands after its last finished epoch (what ``state.json`` records)."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -math.inf
    best_epoch: int | None = None
    bad: int = 0
    best_sha: str | None = None
    status: str = "running"
    best_name: str | None = None  # the file holding the best weights (``best_file`` or MODEL_FILE)

    def result(self, status: str, resumed_from: int) -> FitResult:
        return FitResult(status, len(self.history), self.best_epoch, _finite(self.best), self.history,
                         resumed_from, self.best_sha)


def fit(
    family: DKANFamily | NH2STFamily,
    dims: Dims,
    train: Sequence[SectionData],
    val: Sequence[SectionData],
    settings: TrainSettings,
    run_dir: Path,
    gene_text: np.ndarray | None = None,
    fingerprint: dict[str, Any] | None = None,
    on_event: Callable[[TrainEvent], None] | None = None,
    cancel: CancelToken | None = None,
    resume: bool = True,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Train ``family`` on ``train``, selecting on ``val``; checkpoints go to ``run_dir``.

    In a process group of several ranks (``torchrun``), every rank calls this with the same
    arguments; see the module docstring for what is shared and what is per rank.
    """
    ctx = dist.current()
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint or {}
    loop = _build_loop(family, dims, train, val, settings, gene_text, init_weights)
    progress = _resume(run_dir, fingerprint, loop) if resume else None
    if progress is None:
        progress = _Progress()
    elif progress.status in ("finished", "early-stopped"):
        _publish_best(run_dir, progress)
        return progress.result(progress.status, progress.epoch)
    resumed_from = progress.epoch
    steps = max(1, math.ceil(len(loop.train_store) / (settings.batch_size * ctx.world_size)))
    if ctx.active:
        loop.model = dist.wrap(loop.net, _has_unused_parameters(family, loop.net, loop.train_store, loop.text,
                                                                 settings, loop.device))
    status = "finished"
    for epoch in range(progress.epoch, settings.epochs):
        t0 = time.perf_counter()
        ran = _train_epoch(family, loop, settings, epoch, steps, progress, on_event, cancel)
        if ran is None:
            status = "cancelled"
            break
        record, done = _end_epoch(family, loop, settings, epoch, ran, progress, run_dir, fingerprint, t0)
        _emit(on_event, TrainEvent("epoch", epoch + 1, settings.epochs, steps, steps, record["train_loss"],
                                   record["val_pcc"], _finite(progress.best), progress.best_epoch, logs=record))
        if done:
            status = "early-stopped"
            break
    progress.best_sha = dist.broadcast_digest(progress.best_sha)
    _publish_best(run_dir, progress)
    return progress.result(status, resumed_from)


def _build_loop(family: DKANFamily | NH2STFamily, dims: Dims, train: Sequence[SectionData],
                val: Sequence[SectionData], settings: TrainSettings, gene_text: np.ndarray | None,
                init_weights: dict[str, torch.Tensor] | None) -> _Loop:
    """A freshly seeded network, its optimiser and scheduler, and the data on the device."""
    from napari_dkan.devices import resolve_device

    ctx = dist.current()
    device = ctx.device if ctx.active else resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    net = dist.prepare_module(family.build(dims).to(device))
    if init_weights is not None:
        net.load_state_dict(init_weights)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=settings.step_size, gamma=settings.gamma)
    text = None if gene_text is None else torch.as_tensor(gene_text, dtype=torch.float32, device=device)
    has_val = bool(val)
    val_store = SpotStore(val, device) if has_val and ctx.is_main else None
    return _Loop(net, net, opt, sched, text, SpotStore(train, device), val_store, has_val, device)


def _resume(run_dir: Path, fingerprint: dict[str, Any], loop: _Loop) -> _Progress | None:
    """The progress saved in ``run_dir`` (weights and optimiser restored into ``loop``), or None."""
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        return None
    state = ckpt.read_json(state_path)
    if state.get("fingerprint") != fingerprint:
        raise ckpt.CheckpointError(
            f"{run_dir} holds a different training run (model, data or settings differ); "
            "choose another output folder, or delete it to start over"
        )
    tensors = ckpt.load_tensors(run_dir / state.get("last_file", LAST_FILE), state.get("last_sha256"))
    loop.net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    loop.opt.load_state_dict(ckpt.join_optimizer_state(tensors, state["optimizer"]))
    loop.sched.load_state_dict(state["scheduler"])
    best = state["best_val_pcc"] if state["best_val_pcc"] is not None else -math.inf
    return _Progress(int(state["epoch"]), list(state["history"]), best, state["best_epoch"],
                     int(state["bad_epochs"]), state.get("best_sha256"), state.get("status", "running"),
                     state.get("best_file", MODEL_FILE if state.get("best_sha256") else None))


def _train_epoch(family: DKANFamily | NH2STFamily, loop: _Loop, settings: TrainSettings, epoch: int,
                 steps: int, progress: _Progress, on_event: Callable[[TrainEvent], None] | None,
                 cancel: CancelToken | None) -> tuple[list[float], dict[str, Any]] | None:
    """One epoch of optimiser steps: (per-step losses, last step's logs), or None when cancelled."""
    from napari_dkan.devices import autocast

    ctx = dist.current()
    rank, world = ctx.rank, ctx.world_size
    torch.manual_seed(settings.seed * 1000 + epoch + rank * dist.RANK_SEED_STRIDE)  # dropout
    gen = torch.Generator().manual_seed(settings.seed * 7919 + epoch)
    perm = dist.rank_shard(torch.randperm(len(loop.train_store), generator=gen), rank, world)
    augment = gen
    if ctx.active:  # flips of this rank's spots; ``gen`` (contrastive genes) stays shared
        augment = torch.Generator().manual_seed(settings.seed * 7919 + epoch + rank * dist.RANK_SEED_STRIDE)
    loop.model.train()
    losses: list[float] = []
    logs: dict[str, Any] = {}
    for step in range(steps):
        idx = perm[step * settings.batch_size : (step + 1) * settings.batch_size]
        inputs = family.inputs(loop.train_store, idx, augment if settings.augment else None)
        with autocast(loop.device) if settings.mixed_precision else _null():
            loss, logs = family.loss(loop.model, inputs, loop.text, settings.contrastive_genes, gen)
        loop.opt.zero_grad(set_to_none=True)
        loss.backward()
        loop.opt.step()
        losses.append(dist.mean_over_ranks(float(loss.detach())))
        _emit(on_event, TrainEvent("step", epoch + 1, settings.epochs, step + 1, steps, losses[-1],
                                   best_pcc=_finite(progress.best), best_epoch=progress.best_epoch, logs=logs))
        if dist.any_rank(cancel is not None and cancel.is_set()):  # all ranks stop at one step
            return None
    return losses, logs


def _end_epoch(family: DKANFamily | NH2STFamily, loop: _Loop, settings: TrainSettings, epoch: int,
               ran: tuple[list[float], dict[str, Any]], progress: _Progress, run_dir: Path,
               fingerprint: dict[str, Any], t0: float) -> tuple[dict[str, Any], bool]:
    """Validate, keep the best weights, record the epoch and checkpoint it: (record, stop now)."""
    ctx = dist.current()
    losses, logs = ran
    loop.sched.step()
    val_pcc = float("nan")
    if loop.val_store is not None:
        val_pcc = validation_pcc(family, loop.net, loop.val_store, loop.text)
    improved = (not loop.has_val) or (np.isfinite(val_pcc) and val_pcc > progress.best)
    done = loop.has_val and (0 if improved else progress.bad + 1) >= settings.patience
    val_pcc, improved, done = dist.broadcast_decision(val_pcc, improved, done)  # rank 0's
    if improved:
        progress.best = val_pcc if loop.has_val else -math.inf
        progress.best_epoch, progress.bad = epoch + 1, 0
        progress.best_name = best_file(epoch + 1)
        if ctx.is_main:
            progress.best_sha = ckpt.save_tensors(run_dir / progress.best_name, loop.net.state_dict())
    else:
        progress.bad += 1
    record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_pcc": _finite(val_pcc),
              "lr": loop.opt.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 3),
              **{k: v for k, v in logs.items() if k.startswith("w_")}}
    if ctx.active:
        record["world_size"] = ctx.world_size
    progress.history.append(record)
    progress.epoch = epoch + 1
    progress.status = "early-stopped" if done else ("finished" if epoch + 1 == settings.epochs else "running")
    if ctx.is_main:
        _save_state(run_dir, loop.net, loop.opt, loop.sched, epoch + 1, progress.history, progress.best,
                    progress.best_epoch, progress.bad, progress.status, fingerprint, progress.best_sha,
                    progress.best_name)
    dist.barrier()  # the epoch's checkpoints are on disk before any rank goes on
    return record, done


def _has_unused_parameters(family: DKANFamily | NH2STFamily, net: torch.nn.Module, store: SpotStore,
                           text: torch.Tensor | None, settings: TrainSettings, device: torch.device) -> bool:
    """Whether a training step leaves a trainable parameter without gradient, on any rank."""
    from napari_dkan.devices import autocast

    idx = torch.arange(min(settings.batch_size, len(store)))
    probe = torch.Generator().manual_seed(settings.seed)

    def step() -> torch.Tensor:
        net.train()
        with autocast(device) if settings.mixed_precision else _null():
            return family.loss(net, family.inputs(store, idx, None), text, settings.contrastive_genes, probe)[0]

    return dist.any_rank(bool(dist.unused_parameters(net, step)))


def _save_state(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, epoch: int,
                history: list, best: float, best_epoch: int | None, bad: int, status: str,
                fingerprint: dict[str, Any], best_sha: str | None, best_name: str | None = None) -> None:
    """Checkpoint an epoch: the new last weights under a new name, then the state pointing at
    them (and at the best weights, already written), then the files nothing points at go."""
    opt_tensors, opt_rest = ckpt.split_optimizer_state(opt.state_dict())
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    last = last_file(epoch)
    digest = ckpt.save_tensors(run_dir / last, tensors)
    _write_state(run_dir, {
        "epoch": epoch, "status": status, "history": history, "best_val_pcc": _finite(best),
        "best_epoch": best_epoch, "bad_epochs": bad, "optimizer": opt_rest,
        "scheduler": sched.state_dict(), "last_file": last, "last_sha256": digest,
        "best_file": best_name, "best_sha256": best_sha, "fingerprint": fingerprint,
    })


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    ckpt.write_json(run_dir / STATE_FILE, state)
    keep = {state.get("last_file"), state.get("best_file")}
    for pattern in ("last-e*.safetensors", "best-e*.safetensors", LAST_FILE):
        for old in run_dir.glob(pattern):
            if old.name not in keep:
                old.unlink(missing_ok=True)


def _publish_best(run_dir: Path, progress: _Progress) -> None:
    """Make the best weights the run's ``model.safetensors`` (rank 0).

    The copy is written first; the state then points at it, and only then does the per-epoch
    file go, so the state never names a missing file.
    """
    name = progress.best_name
    if not dist.current().is_main or name is None or name == MODEL_FILE or progress.best_sha is None:
        return
    src = run_dir / name
    data = src.read_bytes()
    if hashlib.sha256(data).hexdigest() != progress.best_sha:
        raise ckpt.CheckpointError(f"{src} does not match the checksum recorded when it was written: "
                                   "the file is corrupt or was replaced. Retrain, or restore it from a backup.")
    atomic_write(run_dir / MODEL_FILE, data)
    state = ckpt.read_json(run_dir / STATE_FILE)
    state["best_file"] = progress.best_name = MODEL_FILE
    _write_state(run_dir, state)


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _emit(cb: Callable[[TrainEvent], None] | None, event: TrainEvent) -> None:
    if cb is not None:
        cb(event)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
