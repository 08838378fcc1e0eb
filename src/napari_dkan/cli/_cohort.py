"""``napari-dkan predict-cohort``: one trained model over a manifest of slides, on a Dask cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_dkan.cli._output import add_json_flag, emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict-cohort", help="predict many slides on a Dask cluster (resumable)",
        description="Predict every slide of a manifest (CSV/TSV with a 'slide' column and optional "
        "'spots', 'section', 'mpp', 'name'), one Dask task per slide, into OUT/<name>.h5ad. Outputs "
        "are written atomically and skipped when already there, so a rerun resumes; a slide that "
        "fails is reported and does not stop the others. Exit status 1 when any slide failed.",
    )
    p.add_argument("manifest", type=Path, help="CSV or TSV manifest of the slides")
    p.add_argument("--model", required=True, help="run directory (or 'default' for the bundled model)")
    p.add_argument("--out", required=True, type=Path, help="output folder, one .h5ad per slide")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local cluster size (default: one per GPU, else half the CPU cores)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--retries", type=int, default=1,
                   help="times a task that raised an unexpected error is retried (default 1)")
    add_json_flag(p)
    p.set_defaults(func=cmd_predict_cohort)


def cmd_predict_cohort(args: argparse.Namespace) -> int:
    from napari_dkan.cli._engine import load_model_arg
    from napari_dkan.cohort import predict_cohort, read_manifest
    from napari_dkan.io.errors import DataError

    if args.scheduler and args.workers is not None:
        raise DataError("--workers sizes the local cluster; a --scheduler brings its own workers")
    entries = read_manifest(args.manifest)
    model = load_model_arg(args.model)
    bar = _CohortBar(len(entries), enabled=not args.json)
    try:
        summary = predict_cohort(entries, model, args.out, connect=lambda: _connect(args),
                                 retries=args.retries, on_outcome=bar.update)
    finally:
        bar.close()
    payload = {"manifest": str(args.manifest), "model": str(model.run_dir), "out": str(args.out),
               **summary.to_dict()}
    emit(args, payload, _text(summary, args.out))
    return 1 if summary.counts["failed"] else 0


def _connect(args: argparse.Namespace) -> Any:
    from napari_dkan.cohort.cluster import local_cluster, remote_cluster

    if args.scheduler:
        return remote_cluster(args.scheduler, args.device)
    return local_cluster(args.workers, args.device)


def _text(summary: Any, out: Path) -> str:
    c = summary.counts
    rate = summary.slides_per_minute
    lines = [f"{len(summary.outcomes)} slides → {out}: {c['done']} done, {c['skipped']} skipped, "
             f"{c['failed']} failed in {summary.seconds:.1f} s"
             + (f" ({rate:.1f} slides/min)" if rate else "")
             + (f" on {summary.cluster}" if summary.cluster else "")]
    lines += [f"  failed {o.name}: {o.error}" for o in summary.outcomes if o.status == "failed"]
    return "\n".join(lines)


class _CohortBar:
    """A tqdm bar over the cohort's slides, with the running done / skipped / failed counts."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        if enabled and sys.stderr is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="slides", unit="slide", file=sys.stderr, dynamic_ncols=True)

    def update(self, outcome: Any, finished: int, total: int) -> None:
        self.counts[outcome.status] += 1
        if self.bar is None:
            return
        if outcome.status == "failed":
            self.bar.write(f"failed {outcome.name}: {outcome.error}", file=sys.stderr)
        self.bar.n = finished
        self.bar.set_postfix(self.counts, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
