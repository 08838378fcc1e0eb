"""Training for the dock: the engine's steps in order, progress as it comes, memory given back.

:func:`train` is plain library code (no Qt): features, gene texts, the base model's score on
the validation spots (the line the curves are measured against), then
:func:`~napari_dkan.engine.runs.train_model`, reporting :class:`TrainingProgress` through a
callback.  :func:`training_steps` is the generator the dock runs in napari's worker: it checks
the request first (:mod:`~napari_dkan._widgets.training_plan`) and trains only when nothing is
wrong.  Unlike :func:`~napari_dkan._widgets.jobs.stepwise`, a cancel request does not abandon
the engine: it stops at the end of its current step, keeps the best checkpoint so far and
writes the run's config, and that cancelled run is the job's result.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_dkan._widgets.jobs import Progress, frozen_heap
from napari_dkan._widgets.training_plan import (
    CheckResult,
    TrainingPlan,
    TrainingRequest,
    check_request,
)
from napari_dkan.io.errors import DataError
from napari_dkan.progress import Cancelled, CancelToken

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.engine.trainer import TrainEvent

#: the least time between two step reports: the GUI redraws its bar, not every tiny step
STEP_REPORT_S = 0.05


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_pcc: float | None
    best_pcc: float | None
    best_epoch: int | None


@dataclass(frozen=True)
class TrainingProgress(Progress):
    """A :class:`Progress` that may carry a finished epoch or the base model's score."""

    epoch: EpochRecord | None = None
    base_val_pcc: float | None = None
    detail: str = ""

    @property
    def text(self) -> str:
        return self.detail or super().text


@dataclass(frozen=True)
class TrainingOutcome:
    model: TrainedModel
    run_dir: Path
    status: str  # finished | early-stopped | cancelled
    best_epoch: int | None
    best_val_pcc: float | None
    epochs_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    base_val_pcc: float | None = None
    #: bytes still allocated on the GPU once training has let go (None: CUDA was not used)
    gpu_bytes_after: int | None = None

    @property
    def summary(self) -> str:
        best = "-" if self.best_val_pcc is None else f"{self.best_val_pcc:.3f}"
        how = {"cancelled": "cancelled; the best checkpoint so far is kept",
               "early-stopped": "stopped early"}.get(self.status, "finished")
        return (f"training {how}: best agreement on held-out spots r = {best} at epoch {self.best_epoch} "
                f"({self.epochs_run} epochs run) → {self.run_dir}")


Report = Callable[[TrainingProgress], None]


def train(plan: TrainingPlan, report: Report | None = None, cancel: CancelToken | None = None) -> TrainingOutcome:
    """Train (or fine-tune) what ``plan`` describes; the network's device memory is freed after."""
    try:
        model, base_pcc = _train(plan, report or (lambda _: None), cancel)
    except BaseException as exc:
        # a failed run's frames still hold the network and its optimiser state: let them go
        traceback.clear_frames(exc.__traceback__)
        release_device_memory()
        if cancel is not None and cancel.is_set() and isinstance(exc, (DataError, Cancelled)):
            raise Cancelled("training was cancelled before its first epoch ended; nothing was saved") from None
        raise
    gpu_left = release_device_memory()
    result = model.config.get("result", {})
    return TrainingOutcome(model, Path(model.run_dir), model.config["status"], result.get("best_epoch"),
                           result.get("best_val_pcc"), int(result.get("epochs_run") or 0),
                           list(result.get("history") or []), base_pcc, gpu_left)


def _train(plan: TrainingPlan, report: Report, cancel: CancelToken | None) -> tuple[TrainedModel, float | None]:
    from napari_dkan.engine.runs import gene_text_for, prepare_sections, train_model
    from napari_dkan.engine.splits import inner_validation

    spec, panel = plan.spec, plan.panel
    sections = [plan.section] + ([plan.validation] if plan.validation is not None else [])
    data = prepare_sections(sections, spec, panel, cancel=cancel,
                            progress=lambda stage, d, t: report(TrainingProgress(stage, d, t, "tiles")))
    if plan.validation is not None:
        fit_names, val_names = [plan.section.name], [plan.validation.name]
    else:  # a spatial block of the one section, drawn the engine's way
        fit_part, val_part = inner_validation([data[plan.section.name]], spec.validation, spec.settings.seed)
        data.update({s.name: s for s in (*fit_part, *val_part)})
        fit_names, val_names = [s.name for s in fit_part], [s.name for s in val_part]
    if plan.base is not None:
        gene_text = plan.base.gene_text()  # the vectors the base learned, not a re-embedding
        report(TrainingProgress("scoring the base model on the validation spots", 0, 0))
        base_pcc = _score(plan.base, [data[n] for n in val_names])
        report(TrainingProgress("base model scored", 1, 1, base_val_pcc=base_pcc))
    else:
        report(TrainingProgress("embedding the gene texts", 0, 0))
        gene_text, base_pcc = gene_text_for(spec, panel), None

    last = [0.0]

    def on_event(event: TrainEvent) -> None:
        done, total = (event.epoch - 1) * event.steps + event.step, event.epochs * event.steps
        if event.phase == "epoch":
            record = EpochRecord(event.epoch, float(event.loss or float("nan")), event.val_pcc,
                                 event.best_pcc, event.best_epoch)
            report(TrainingProgress("training", done, total, "steps", epoch=record,
                                    detail=_epoch_text(event)))
        elif time.perf_counter() - last[0] >= STEP_REPORT_S or event.step == event.steps:
            last[0] = time.perf_counter()
            report(TrainingProgress("training", done, total, "steps", detail=_step_text(event)))

    info = {"path": str(plan.dataset.root), "sections": [s.name for s in sections]}
    model = train_model(data, fit_names, val_names, spec, panel, plan.run_dir, gene_text=gene_text,
                        dataset_info=info, on_event=on_event, cancel=cancel, resume=True, base=plan.base,
                        sections=sections)
    return model, base_pcc


def _score(model: TrainedModel, val: list[Any]) -> float | None:
    """The engine's validation score (mean over sections of the per-gene mean Pearson r).

    On the CPU: a base model moved to the GPU would stay there as long as the plan holds it.
    """
    import numpy as np

    from napari_dkan.engine.metrics import pearson_per_gene

    scores = [np.nanmean(pearson_per_gene(model.predict(d, device="cpu"), d.y)) for d in val if len(d) > 2]
    with np.errstate(all="ignore"):
        value = float(np.nanmean(scores)) if scores else float("nan")
    return value if np.isfinite(value) else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _step_text(e: TrainEvent) -> str:
    return f"epoch {e.epoch}/{e.epochs} · step {e.step}/{e.steps} · loss {_fmt(e.loss)}"


def _epoch_text(e: TrainEvent) -> str:
    return (f"epoch {e.epoch}/{e.epochs} · loss {_fmt(e.loss)} · agreement on held-out spots "
            f"r = {_fmt(e.val_pcc)} · best {_fmt(e.best_pcc)} (epoch {e.best_epoch})")


def release_device_memory() -> int | None:
    """Give back the GPU memory training used; returns the bytes still allocated (None: no CUDA).

    Collecting first drops tensors only cycles still reach; ``empty_cache`` then returns the
    caching allocator's free blocks to the driver, so other programs (and nvidia-smi) see them.
    Without CUDA nothing is collected: a full collection of napari's heap holds the GIL for a
    second or more (measured: a 1.7 s GUI stall), and CPU tensors are freed by reference counting.
    """
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return int(torch.cuda.memory_allocated())


# -- generators for the dock ---------------------------------------------------------------------
def training_steps(request: TrainingRequest, cancel: threading.Event, check_only: bool = False
                   ) -> Generator[Progress, None, CheckResult | TrainingOutcome]:
    """Check ``request``; return the problems, or train and return the outcome."""
    yield TrainingProgress("checking the inputs", 0, 0)
    checked = check_request(request)
    if not checked.ok or check_only:
        return checked
    if cancel.is_set():
        raise Cancelled("training was cancelled before it started")
    assert checked.plan is not None
    reports: queue.SimpleQueue[TrainingProgress | None] = queue.SimpleQueue()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = train(checked.plan, reports.put, cancel)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the generator below
            box["error"] = exc
        finally:
            reports.put(None)

    # a thread of our own, because a generator cannot yield from inside the engine's callbacks
    with frozen_heap():
        threading.Thread(target=target, name="napari-dkan-training", daemon=True).start()
        while (item := reports.get()) is not None:
            yield item
    if "error" in box:
        raise box["error"]
    return box["result"]


@dataclass(frozen=True)
class EngineInfo:
    devices: list[str]
    #: preset name → its training defaults (epochs, lr, batch_size, ...)
    presets: dict[str, dict[str, Any]]


def engine_info_steps() -> Generator[Progress, None, EngineInfo]:
    """Devices that work here and the presets' training defaults (imports torch: off the GUI thread)."""
    yield Progress("checking devices", 0, 0)
    from napari_dkan.devices import available_devices
    from napari_dkan.engine.runs import RunSpec
    from napari_dkan.model import PRESETS

    presets = {name: RunSpec.for_preset("dkan", name).settings.to_dict() for name in PRESETS}
    return EngineInfo(available_devices(), presets)


@dataclass(frozen=True)
class SectionInfo:
    name: str
    has_counts: bool
    has_image: bool

    @property
    def label(self) -> str:
        missing = [w for w, ok in (("no counts", self.has_counts), ("no image", self.has_image)) if not ok]
        return f"{self.name} ({', '.join(missing)})" if missing else self.name


def dataset_steps(path: str, image: str | None, mpp: float | None = None
                  ) -> Generator[Progress, None, list[SectionInfo]]:
    """The sections of a dataset (cheap: spots and counts are not parsed)."""
    from napari_dkan.io.formats import open_dataset

    yield Progress("reading the dataset", 0, 0)
    ds = open_dataset(path, image=image or None, mpp=mpp)
    return [SectionInfo(s.name, s.has_counts, s.has_image) for s in ds.sections]
