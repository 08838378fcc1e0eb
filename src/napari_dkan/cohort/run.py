"""Predict a cohort: one Dask task per slide, resumable, failures reported but not fatal.

The plan is made on the client: slides whose output is already a valid prediction of this
model are skipped without a cluster being started.  The rest are submitted as one task each;
results are gathered as they finish, so one slide's error never stops the others.  A slide
error (unreadable file, no tissue…) comes back as a ``failed`` outcome at once; any other
exception is retried ``retries`` times by the scheduler; a worker that dies mid-slide has its
task rescheduled on another worker by Dask itself (up to ``distributed.scheduler.allowed-failures``
deaths per task), after which the slide is reported failed with Dask's ``KilledWorker``.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_dkan.cohort.manifest import CohortSlide
from napari_dkan.cohort.tasks import (
    SlideOutcome,
    output_is_valid,
    predict_slide,
    row_inputs,
    stale_temporaries,
)
from napari_dkan.io.errors import DataError

STATUSES = ("done", "skipped", "failed")


@dataclass
class CohortSummary:
    outcomes: list[SlideOutcome]
    seconds: float
    cluster: str = ""
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        tally = Counter(o.status for o in self.outcomes)
        self.counts = {s: tally.get(s, 0) for s in STATUSES}

    @property
    def slides_per_minute(self) -> float | None:
        """Throughput of the slides predicted in this run (skipped ones excluded)."""
        done = self.counts["done"]
        return 60.0 * done / self.seconds if done and self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "total": len(self.outcomes), "seconds": round(self.seconds, 3),
                "slides_per_min": self.slides_per_minute, "cluster": self.cluster,
                "slides": [o.to_dict() for o in self.outcomes]}


def plan(entries: Sequence[CohortSlide], out_dir: Path, weights_sha256: str,
         panel: list[str]) -> tuple[list[CohortSlide], list[SlideOutcome]]:
    """(slides to predict, outcomes of the slides already done)."""
    todo, skipped, foreign = [], [], []
    for e in entries:
        verdict = output_is_valid(e.output(out_dir), weights_sha256, panel, row_inputs(e))
        if verdict is True:
            skipped.append(SlideOutcome(e.name, "skipped", str(e.output(out_dir))))
        elif isinstance(verdict, str):
            foreign.append(verdict)
        else:
            todo.append(e)
    if foreign:
        raise DataError(
            f"{len(foreign)} output(s) in {out_dir} were predicted by another model, e.g. {foreign[0]}; "
            "choose another --out folder (outputs are never overwritten by a different model)"
        )
    return todo, skipped


def predict_cohort(
    entries: Sequence[CohortSlide],
    model: Any,
    out_dir: str | Path,
    connect: Callable[[], Any] | None = None,
    retries: int = 1,
    on_outcome: Callable[[SlideOutcome, int, int], None] | None = None,
) -> CohortSummary:
    """Predict every slide of ``entries`` with ``model`` (a :class:`TrainedModel`) into ``out_dir``.

    ``connect()`` returns a :class:`~napari_dkan.cohort.cluster.CohortCluster`; it is called
    only when some slide needs predicting (default: a local cluster).  ``on_outcome(outcome,
    finished, total)`` is called for each skipped slide and as each task finishes.
    """

    t0 = time.perf_counter()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    sha = model.weights_sha256
    for tmp in stale_temporaries(out, list(entries)):  # left by a run that was killed
        tmp.unlink(missing_ok=True)
    todo, outcomes = plan(entries, out, sha, model.panel)
    total = len(entries)
    for i, o in enumerate(outcomes, 1):
        _report(on_outcome, o, i, total)
    description = ""
    if todo:
        if connect is None:
            from napari_dkan.cohort.cluster import local_cluster

            connect = local_cluster
        with connect() as cc:
            description = cc.description
            outcomes += _run_tasks(cc, todo, str(model.run_dir), sha, out, retries, on_outcome,
                                   len(outcomes), total)
        for tmp in stale_temporaries(out, todo):
            tmp.unlink(missing_ok=True)
    order = {e.name: i for i, e in enumerate(entries)}
    outcomes.sort(key=lambda o: order[o.name])
    return CohortSummary(outcomes, time.perf_counter() - t0, description)


def _run_tasks(cc: Any, todo: list[CohortSlide], run_dir: str, sha: str, out: Path, retries: int,
               on_outcome: Callable | None, finished: int, total: int) -> list[SlideOutcome]:
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = {
        cc.client.submit(predict_slide, e, run_dir, sha, str(out), cc.device, cc.cpu_threads,
                         key=f"napari-dkan-predict-{e.name}-{run}", pure=False, retries=retries,
                         resources=cc.resources): e
        for e in todo
    }
    results = []
    try:
        for future in as_completed(futures):
            entry = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - retries exhausted / workers lost: this slide failed
                outcome = SlideOutcome(entry.name, "failed", str(entry.output(out)),
                                       error=f"{type(exc).__name__}: {exc}")
            results.append(outcome)
            finished += 1
            _report(on_outcome, outcome, finished, total)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:  # interrupted: leave no task running on a cluster that outlives this client
            cc.client.cancel(pending)
    return results


def _report(cb: Callable | None, outcome: SlideOutcome, finished: int, total: int) -> None:
    if cb is not None:
        cb(outcome, finished, total)
