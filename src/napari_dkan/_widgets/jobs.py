"""Long work for the dock, written as generators that yield progress and return a result.

napari's ``thread_worker`` runs them off the GUI thread; tests iterate them directly.  The
engine reports progress through callbacks from inside one long call, so :func:`stepwise` runs
that call on a helper thread and relays its reports through a queue: the generator can then
yield each report as it arrives and notice a cancel request within :data:`POLL_S`, without
waiting for the engine to reach its next cancellation check.  The engine still stops at that
check (it is given the same :class:`threading.Event`), and a result that arrives after the
request is thrown away.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from napari_dkan._widgets.cache import PREDICTIONS, PredictionCache, PredictionKey
from napari_dkan._widgets.expression import (
    Expression,
    clip_to_floor,
    measured_expression,
    target_space,
)
from napari_dkan._widgets.scope import PixelBox, spots_in_box
from napari_dkan.progress import Cancelled

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.engine.trust import SpotTrust
    from napari_dkan.io.dataset import Section

T = TypeVar("T")
POLL_S = 0.05
Report = Callable[[str, int, int], None]


_FROZEN = [0]
_FROZEN_LOCK = threading.Lock()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep Python's cyclic garbage collector off the objects that exist now, while a job runs.

    A full (generation 2) collection walks every object in the process — napari's, Qt's, torch's
    — and holds the GIL while it does: measured 0.5–0.6 s, a frozen viewer, each time one fell in
    a training thread.  ``gc.freeze()`` moves today's objects to a permanent generation the
    collector skips, so collections during the job only walk what the job allocates; on exit
    (the last of nested uses) ``gc.unfreeze()`` hands them back and nothing is leaked.
    """
    with _FROZEN_LOCK:
        _FROZEN[0] += 1
        if _FROZEN[0] == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _FROZEN_LOCK:
            _FROZEN[0] -= 1
            if _FROZEN[0] == 0:
                gc.unfreeze()



@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of one stage (``total`` 0: not known yet)."""

    stage: str
    done: int
    total: int
    unit: str = ""

    @property
    def label(self) -> str:
        """The stage in words (the engine's stage names are terse)."""
        return STAGE_WORDS.get(self.stage, self.stage)

    @property
    def text(self) -> str:
        if self.total <= 0:
            return f"{self.label}…"
        return f"{self.label}: {self.done}/{self.total} {self.unit}".rstrip()


#: the unit each engine stage counts
UNITS = {"features": "tiles", "predicting": "spots"}
#: engine stage names in a pathologist's words
STAGE_WORDS = {"features": "reading the tissue image", "context": "reading the tissue around the spots",
               "predicting": "predicting"}


def stepwise(work: Callable[[Report], T], cancel: threading.Event) -> Generator[Progress, None, T]:
    """Run ``work(report)`` on a helper thread, yielding its reports; return its result."""
    reports: queue.SimpleQueue[Progress | None] = queue.SimpleQueue()
    box: dict[str, Any] = {}

    def report(stage: str | Progress, done: int = 0, total: int = 0) -> None:
        if isinstance(stage, Progress):  # a ready-made item, e.g. a partial prediction
            reports.put(stage)
        else:
            reports.put(Progress(stage, int(done), int(total), UNITS.get(stage, "")))

    def target() -> None:
        try:
            box["result"] = work(report)
        except BaseException as exc:  # noqa: BLE001 - handed to the generator, which re-raises
            box["error"] = exc
        finally:
            reports.put(None)

    threading.Thread(target=target, name="napari-dkan-job", daemon=True).start()
    while True:
        if cancel.is_set():
            raise Cancelled("prediction cancelled")
        try:
            item = reports.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if item is None:
            break
        yield item
    if cancel.is_set():
        raise Cancelled("prediction cancelled")
    if "error" in box:
        raise box["error"]
    return box["result"]


# -- model ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    model: TrainedModel
    #: the section it was readied for (None: no slide yet)
    section: Section | None
    #: that section's measured values in the model's panel and target space (None: no counts)
    measured: Expression | None
    device: str
    #: what runs the image encoder, e.g. "OpenVINO" or "torch" (see features.runtimes)
    runtime: str = ""


def describe_device(name: str) -> str:
    from napari_dkan.devices import describe, resolve_device

    return describe(resolve_device(name))


def load_model_steps(model: str | Path | TrainedModel, section: Section | None,
                     device: str = "auto") -> Generator[Progress, None, LoadedModel]:
    """Load a trained run (or take a loaded one) and get the section ready for it.

    Besides the model, this reads the section's spots (a slide alone detects its tissue here)
    and its measured values in the model's panel, and builds the model's image encoder once:
    a missing weight file is reported now rather than mid-prediction, and the modules a
    prediction needs (torch, timm, ...) are imported here.  Imports hold the GIL for long
    stretches (PySide6's import hook even reads each new module's source), so importing them
    during a prediction would freeze napari's GUI for up to half a second.
    """
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.features import load_encoder

    if not isinstance(model, TrainedModel):
        yield Progress("loading the model", 0, 0)
        model = TrainedModel.load(model)
    measured = None
    if section is not None:
        yield Progress("finding the spots", 0, 0)
        _ = section.spots
        if section.has_counts:
            yield Progress("reading the measured expression", 0, 0)
            measured = measured_expression(section, model.panel, smoothing=model.smoothing)
    yield Progress("reading the model's reliability and calibration", 0, 0)
    _ = model.trust  # read here, off the GUI thread (older runs: every part absent)
    import scipy.spatial  # noqa: F401 - the out-of-domain check's import, not mid-prediction
    yield Progress("preparing the image model", 0, 0)  # builds the image encoder once
    from napari_dkan.devices import resolve_device
    from napari_dkan.features.runtimes import AUTO, LABELS, TORCH

    # On a CPU this also exports the encoder for the fast runtime, once per weight file (cached
    # on disk), so that the first prediction does not pay for it.
    on_cpu = resolve_device(device).type == "cpu"
    encoder = load_encoder(model.features.encoder, "cpu", AUTO if on_cpu else TORCH)
    runtime = LABELS[encoder.runtime] + (f" ({encoder.runtime_note})" if encoder.runtime_note else "")
    return LoadedModel(model, section, measured, describe_device(device), runtime)


def available_devices_steps() -> Generator[Progress, None, list[str]]:
    """The devices that work here (imports torch, hence off the GUI thread)."""
    from napari_dkan.devices import available_devices

    yield Progress("checking devices", 0, 0)
    return available_devices()


# -- prediction -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PredictRequest:
    model: TrainedModel
    section: Section
    #: the field of view in level-0 pixels; None predicts every spot
    box: PixelBox | None = None
    device: str = "auto"
    #: what the user sees: with every spot asked for, on a large slide, these come first
    view: PixelBox | None = None


@dataclass(frozen=True)
class PredictResult:
    model: TrainedModel
    section: Section
    expression: Expression
    cached: bool
    seconds: float
    device: str
    #: intervals and out-of-domain check (None when the model carries neither)
    trust: SpotTrust | None = None
    #: the field of view that was predicted (level-0 pixels); None: all spots
    box: PixelBox | None = None
    #: predicted values below the target space's floor, shown (and exported) at the floor
    clipped: int = 0
    #: the slide's colours were matched to the model's training slides (Reinhard) first
    stain_normalised: bool = False


#: sections with at least this many spots are predicted progressively (see engine.progressive)
PROGRESSIVE_MIN_SPOTS = 2000
#: longest wait of a progressive job for the dock to draw a stage (see PartialPrediction.drawn)
DRAW_WAIT_S = 1.0


@dataclass(frozen=True)
class PartialPrediction(Progress):
    """A progress report carrying every spot's values known so far (previews included).

    The job waits (at most :data:`DRAW_WAIT_S`) until whoever shows it sets ``drawn``: on a
    2-core CPU the GUI thread colours and draws a stage about twice as slowly while the job
    competes with it for the CPU and for Python's GIL (measured by
    ``benchmarks/progressive_map.py``), and the pause costs the job a fraction of a second.
    """

    expression: Expression | None = None
    model: Any = None
    section: Any = None
    drawn: threading.Event | None = None


def predict_steps(request: PredictRequest, cancel: threading.Event,
                  cache: PredictionCache = PREDICTIONS) -> Generator[Progress, None, PredictResult]:
    """Predict the request's spots with the engine, through the prediction cache."""
    from napari_dkan.features import with_spots

    t0 = time.perf_counter()
    model, section = request.model, request.section
    yield Progress("finding spots", 0, 0)  # a slide alone detects its tissue here

    def work(report: Report) -> tuple[np.ndarray, np.ndarray, bool, str, SpotTrust | None]:
        index, values, cached, device, data = predict_values(report)
        trust = model.trust
        if trust.calibration is None and trust.domain is None:
            return index, values, cached, device, None
        subset = section if request.box is None else with_spots(section, index)
        if data is None:  # from the prediction cache: the features come from the feature cache
            data = model.section_data(subset, with_targets=False, cancel=cancel, device=request.device)
        if trust.calibration is not None and trust.calibration.measurement is not None and subset.has_counts:
            # a measured section's intervals are for its own sequencing depth
            from napari_dkan.io.errors import DataError
            from napari_dkan.io.expression import section_panel_counts

            try:
                data.panel_counts = section_panel_counts(subset, model.panel, missing="zero")
            except DataError:
                pass  # unreadable counts: the calibration's depth
        from napari_dkan.engine.trust import assess

        return index, values, cached, device, assess(trust, values, data, smoothed=model.smoothing)

    def predict_values(report: Report) -> tuple[np.ndarray, np.ndarray, bool, str, Any]:
        spots = section.spots
        if request.box is None:
            index, subset = np.arange(len(spots)), section
        else:
            index = spots_in_box(spots, request.box)
            subset = with_spots(section, index)
        key = PredictionKey.of(model, subset)
        hit = cache.get(key)
        device = describe_device(request.device)
        if hit is not None:
            report("predicting", len(index), len(index))
            return index, hit, True, device, None
        if request.box is None and len(spots) >= PROGRESSIVE_MIN_SPOTS:
            values = _progressively(request, report, cancel)
            cache.put(key, values)
            return index, values, False, device, None
        data = model.section_data(subset, with_targets=False, cancel=cancel, device=request.device,
                                  progress=lambda d, t: report("features", d, t))
        values = model.predict(data, device=request.device, cancel=cancel,
                               progress=lambda d, t: report("predicting", d, t))
        if cancel.is_set():  # finished between two checks: the user no longer wants it
            raise Cancelled("prediction cancelled")
        cache.put(key, values)
        return index, values, False, device, data

    index, values, cached, device, trust = yield from stepwise(work, cancel)
    values, clipped = clip_to_floor(values)
    expression = Expression(tuple(model.panel), values, index, target_space(model.smoothing))
    return PredictResult(model, section, expression, cached, time.perf_counter() - t0, device,
                         trust, request.box, clipped, stain_normalised=model.stain is not None)


def _progressively(request: PredictRequest, report: Callable[..., None],
                   cancel: threading.Event) -> np.ndarray:
    """Every spot, the view first, then coarse to fine; each stage's values reported as a
    :class:`PartialPrediction` (the dock colours them at once)."""
    from napari_dkan.engine.progressive import plan_stages, predict_in_stages

    model, section = request.model, request.section
    spots = section.spots
    view = None if request.view is None else spots_in_box(spots, request.view)
    values = np.full((len(spots), len(model.panel)), np.nan, np.float32)
    known = np.zeros(len(spots), bool)
    space = target_space(model.smoothing)
    for part in predict_in_stages(model, section, plan_stages(spots.xy, view), device=request.device,
                                  progress=report, cancel=cancel):
        values[part.spot_index] = part.values
        known[part.spot_index] = True
        shown = np.flatnonzero(known)
        drawn = threading.Event()
        report(PartialPrediction(f"coloured ({part.stage})", len(shown), len(spots), "spots",
                                 Expression(tuple(model.panel), values[shown], shown, space),
                                 model, section, drawn))
        deadline = time.monotonic() + DRAW_WAIT_S
        while not drawn.wait(POLL_S / 5) and not cancel.is_set() and time.monotonic() < deadline:
            pass
    return values


def run_to_end(steps: Generator[Any, None, T], on_progress: Callable[[Any], None] | None = None) -> T:
    """Drive a step generator on this thread (scripts and tests); returns its result."""
    while True:
        try:
            item = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)
        if isinstance(item, PartialPrediction) and item.drawn is not None:
            item.drawn.set()  # shown (or nobody to show it to): the job goes on
