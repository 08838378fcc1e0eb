"""A large slide's map appearing progressively in the prediction dock (issue 16).  Prints JSON.

Opens a slide with many spots (e.g. ``make_synthetic_slide.py``'s ``.h5ad`` at 20,000 px, about
11,500 lattice spots) in napari, zooms onto a part of it, and asks the dock for *All spots* with
empty caches.  While a 10 ms ``QTimer`` ticks on the GUI thread (as in ``gui_stall.py``) it
records when the first spots in view are coloured, when the first whole-slide coarse map is
coloured, when every spot is, and the longest gap between two ticks (the longest GUI stall).

It also compares each spot's first (preview) value with its final one — the final map equals a
one-shot prediction (see ``napari_dkan.engine.progressive``) — as mean |Δ| and per-gene Pearson
r, per stage: how much the partial slide context changes the previews.

    python benchmarks/make_synthetic_slide.py /tmp/synth --size 20000
    xvfb-run -a python benchmarks/progressive_map.py /tmp/synth/synthetic-20000.h5ad [--model RUN]

Without ``--model`` the tests' tiny DKAN (random ``tiny`` encoder) is trained first.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def compare(first: dict[int, np.ndarray], first_stage: dict[int, str], final: np.ndarray) -> dict:
    """Preview vs final values: mean |Δ| and the median over genes of Pearson r, per stage."""
    out = {}
    stages = sorted(set(first_stage.values()), key=list(first_stage.values()).index)
    for stage in [*stages, "all previews"]:
        idx = [i for i, s in first_stage.items() if (s == stage or stage == "all previews")]
        idx = [i for i in idx if not np.allclose(first[i], final[i], atol=0, rtol=0) or stage != "all previews"]
        if not idx:
            continue
        a = np.stack([first[i] for i in idx])
        b = final[idx]
        rs = []
        for g in range(a.shape[1]):
            if a[:, g].std() > 0 and b[:, g].std() > 0:
                rs.append(float(np.corrcoef(a[:, g], b[:, g])[0, 1]))
        out[stage] = {"spots": len(idx), "mean_abs_delta": float(np.abs(a - b).mean()),
                      "max_abs_delta": float(np.abs(a - b).max()),
                      "median_gene_r": float(np.median(rs)) if rs else None,
                      "min_gene_r": float(np.min(rs)) if rs else None,
                      "value_sd": float(b.std())}
    return out


def engine_only(args: argparse.Namespace, run_dir: Path) -> dict:
    """The same staged prediction without napari, on the ``--max-spots`` spots nearest the
    slide's centre (a square crop), with the view a ``--view-mm`` square at its centre."""
    from napari_dkan.engine.progressive import plan_stages, predict_in_stages
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.features import with_spots
    from napari_dkan.io.formats import open_section

    model = TrainedModel.load(run_dir)
    section = open_section(args.slide)
    spots = section.spots
    mpp = float(section.mpp)
    centre = np.median(spots.xy, axis=0)
    if args.max_spots and args.max_spots < len(spots):
        cheb = np.abs(spots.xy - centre).max(axis=1)
        section = with_spots(section, np.sort(np.argsort(cheb, kind="stable")[:args.max_spots]))
        spots = section.spots
    half = args.view_mm * 1000 / mpp / 2
    view = np.flatnonzero((np.abs(spots.xy - centre) <= half).all(axis=1))
    stages = plan_stages(spots.xy, view)
    t0 = time.perf_counter()
    events, first, first_stage = [], {}, {}
    final = np.full((len(spots), len(model.panel)), np.nan, np.float32)
    for part in predict_in_stages(model, section, stages, device="cpu"):
        events.append({"at_s": round(time.perf_counter() - t0, 2), "stage": part.stage,
                       "spots": len(part.spot_index), "context": part.context, "final": part.final})
        print(json.dumps(events[-1]), file=sys.stderr, flush=True)
        final[part.spot_index] = part.values
        for i, row in zip(part.spot_index.tolist(), part.values):
            if i not in first:
                first[i], first_stage[i] = row.copy(), part.stage
    t1 = time.perf_counter()
    one_shot = model.predict(model.section_data(section, with_targets=False, device="cpu"), device="cpu")
    return {"slide": str(args.slide), "spots": len(spots), "spots_in_view": len(view),
            "model": model.describe(), "stages": events, "complete_s": round(t1 - t0, 2),
            "one_shot_predict_from_cache_s": round(time.perf_counter() - t1, 2),
            "final_equals_one_shot_max_abs": float(np.nanmax(np.abs(final - one_shot))),
            "preview_vs_final": compare(first, first_stage, final), "loadavg": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", type=Path, help=".h5ad whose spots point at a slide (or any readable file)")
    ap.add_argument("--model", type=Path, help="a run directory (default: train a tiny DKAN)")
    ap.add_argument("--view-mm", type=float, default=2.0, help="side of the zoomed view in mm (default 2)")
    ap.add_argument("--interval-ms", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=3000.0)
    ap.add_argument("--cache", type=Path, help="feature cache folder (default: a fresh temporary one)")
    ap.add_argument("--engine", action="store_true", help="no napari: the engine's stages only")
    ap.add_argument("--screenshot", type=Path, help="save the window when the first coarse map is "
                    "coloured (PATH with -coarse) and at the end (PATH)")
    ap.add_argument("--sample-depth", type=int, default=0,
                    help="sample the GUI thread's stack (this many frames) while a tick is late")
    ap.add_argument("--switch-interval-ms", type=float,
                    help="sys.setswitchinterval for the run (Python's default is 5 ms)")
    ap.add_argument("--max-spots", type=int, help="with --engine: a central square of N spots")
    args = ap.parse_args()
    if args.engine:
        work = Path(tempfile.mkdtemp(prefix="progressive-"))
        os.environ["NAPARI_DKAN_CACHE"] = str(args.cache or work / "cache")
        from gui_stall import train_tiny

        print(json.dumps(engine_only(args, args.model or train_tiny(work)), indent=1))
        return
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise SystemExit("needs a display: run under xvfb-run -a")
    work = Path(tempfile.mkdtemp(prefix="progressive-"))
    os.environ["NAPARI_DKAN_CACHE"] = str(args.cache or work / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gui_stall import train_tiny

    run_dir = args.model or train_tiny(work)

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_dkan._widgets import jobs
    from napari_dkan._widgets.cache import PredictionCache
    from napari_dkan._widgets.scope import Scope

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open(str(args.slide), plugin="napari-dkan")
    _, dock = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    dock.cache = PredictionCache(disk=False)
    dock.models.set_devices(["cpu"])
    from napari_dkan.demo import wait_for  # Qt's event loop, not a processEvents loop

    wait_for(lambda: False, 0.5)
    loop = QEventLoop()

    def settle() -> None:
        wait_for(lambda: not dock.busy, 3600)  # e.g. the bundled model, which the dock loads itself

    settle()
    dock.choose_model(str(run_dir))
    settle()
    if dock.model is None or Path(dock.model.run_dir).resolve() != Path(run_dir).resolve():
        raise SystemExit(f"the model did not load: {dock.status.text()}")
    session = dock.session
    spots, mpp = session.section.spots, float(session.section.mpp)
    # a view of --view-mm around the slide's centre
    camera = viewer.scene.camera
    camera.center = (float(np.median(spots.y) * mpp), float(np.median(spots.x) * mpp))
    camera.zoom = float(min(viewer.canvas.size)) / (args.view_mm * 1000.0)
    viewer.screenshot(canvas_only=True)
    dock.set_scope(Scope.ALL_SPOTS)
    view = dock._request().view  # noqa: SLF001 - the box the job will get
    from napari_dkan._widgets.scope import spots_in_box

    n_view = len(spots_in_box(spots, view))

    ticks: list[float] = []
    shots: list[Path] = []
    events: list[tuple[float, str, int]] = []

    shot_times: list[tuple[float, float]] = []  # a screenshot's own stall is not the dock's

    def save_window(path: Path) -> None:
        from imageio.v3 import imwrite

        t = time.perf_counter()
        imwrite(path, viewer.screenshot(canvas_only=False))
        shot_times.append((t, time.perf_counter()))
    first: dict[int, np.ndarray] = {}
    first_stage: dict[int, str] = {}

    def tick() -> None:
        ticks.append(time.perf_counter())
        if not dock.busy:
            loop.quit()

    parts: list[tuple[str, object]] = []  # each stage's values, compared with the final ones at the end

    def on_step(step) -> None:
        if isinstance(step, jobs.PartialPrediction):
            events.append((time.perf_counter(), step.stage, step.done))
            parts.append((step.stage.removeprefix("coloured (").rstrip(")"), step.expression))
            if args.screenshot is not None and "coarse" in step.stage and not shots:
                shots.append(args.screenshot.with_stem(args.screenshot.stem + "-coarse"))
                QTimer.singleShot(500, lambda: save_window(shots[-1]))  # after its drawing

    # time the dock's colouring of each stage on the GUI thread (the work a stage costs napari)
    handler_ms: list[tuple[str, float]] = []
    partial = dock._partial  # noqa: SLF001

    def timed_partial(step) -> None:
        t = time.perf_counter()
        partial(step)
        if isinstance(step, jobs.PartialPrediction):
            handler_ms.append((step.stage, round((time.perf_counter() - t) * 1000, 1)))

    dock._partial = timed_partial  # noqa: SLF001 - connected at predict(), after this
    # and the progress bar's updates (the reports of the encoder and the model it shows)
    progress_ms: list[float] = []
    show_progress = dock.runner._show_progress  # noqa: SLF001

    def timed_progress(step) -> None:
        t = time.perf_counter()
        show_progress(step)
        progress_ms.append((time.perf_counter() - t) * 1000)

    dock.runner._show_progress = timed_progress  # noqa: SLF001
    # where the GUI thread is while a tick is late (a sampling thread; it needs the GIL too)
    sampled: collections.Counter = collections.Counter()
    sampled_at: list[tuple[float, str]] = []
    gui_thread, sampling = threading.get_ident(), threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            if ticks and time.perf_counter() - ticks[-1] > 0.1:
                frame = sys._current_frames().get(gui_thread)  # noqa: SLF001
                if frame is not None:
                    stack = traceback.extract_stack(frame)[::-1][:args.sample_depth]
                    key = " < ".join(f"{Path(f.filename).name}:{f.name}" for f in stack)
                    sampled[key] += 1
                    sampled_at.append((time.perf_counter(), key))

    if args.sample_depth:
        threading.Thread(target=sample, daemon=True).start()
    timer = QTimer()
    timer.setInterval(args.interval_ms)
    timer.timeout.connect(tick)
    if args.switch_interval_ms:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    t0 = time.perf_counter()
    timer.start()
    worker = dock.predict()
    if worker is None:
        raise SystemExit(f"the dock refused: {dock.status.text()}")
    worker.yielded.connect(on_step)
    QTimer.singleShot(int(args.timeout * 1000), loop.quit)
    loop.exec()
    done_s = time.perf_counter() - t0
    QTimer.singleShot(300, loop.quit)  # the last colours drawn
    loop.exec()
    timer.stop()
    sampling.set()
    pairs = [(a, b) for a, b in itertools.pairwise(ticks)
             if not any(a <= s0 and s1 <= b for s0, s1 in shot_times)]
    gap_starts = [a for a, _ in pairs]
    gaps = [(b - a) * 1000 for a, b in pairs]
    worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else None
    stall_at = gap_starts[worst] - t0 if worst is not None else None
    before = [s for t, s, _ in events if t - t0 <= (stall_at or 0)]
    final = session.predicted.full(len(spots)) if session.predicted is not None else None

    def when(pred) -> float | None:
        hit = [t - t0 for t, stage, _ in events if pred(stage)]
        return round(hit[0], 2) if hit else None

    result = {
        "slide": str(args.slide), "spots": len(spots), "spots_in_view": n_view,
        "model": dock.model.describe(), "runtime": getattr(dock, "_runtime", ""),
        "first_in_view_s": when(lambda s: "view" in s),
        "first_coarse_map_s": when(lambda s: "coarse" in s),
        "complete_s": round(done_s, 2),
        "stages": [{"at_s": round(t - t0, 2), "stage": s, "coloured": d} for t, s, d in events],
        "longest_stall_ms": round(max(gaps) - args.interval_ms, 1) if gaps else None,
        "longest_stall_at_s": round(stall_at, 2) if stall_at is not None else None,
        "longest_stall_after_stage": before[-1] if before else None,
        "colouring_ms_per_stage": handler_ms,
        "gaps_over_200ms": sum(g > 200 + args.interval_ms for g in gaps),
        "progress_updates": {"count": len(progress_ms), "total_ms": round(sum(progress_ms)),
                             "max_ms": round(max(progress_ms, default=0), 1),
                             "over_50ms": sum(m > 50 for m in progress_ms)},
        # the longest gaps: when they began (s), how long (ms), and the stage coloured last
        "longest_gaps": [
            (round(gap_starts[i] - t0, 2), round(gaps[i], 1),
             ([st for t, st, _ in events if t - t0 <= gap_starts[i] - t0 + gaps[i] / 1000] or [None])[-1])
            for i in sorted(range(len(gaps)), key=gaps.__getitem__)[::-1][:12]],
        "p99_gap_ms": round(sorted(gaps)[int(0.99 * (len(gaps) - 1))], 1) if gaps else None,
        "status": dock.status.text(),
        "loadavg": os.getloadavg(),
    }
    for stage, e in parts:  # not while it runs: the GUI thread's time is what is measured
        for i, row in zip(e.spot_index.tolist(), e.values):
            if i not in first:
                first[i], first_stage[i] = row.copy(), stage
    if sampled:
        result["stalled_gui_thread_stacks"] = sampled.most_common(12)
        if worst is not None:  # and those of the longest stall
            start, end = gap_starts[worst], gap_starts[worst] + gaps[worst] / 1000
            result["longest_stall_stacks"] = collections.Counter(
                key for t, key in sampled_at if start <= t <= end).most_common(6)
    if final is not None and first:
        result["preview_vs_final"] = compare(first, first_stage, final)
    if args.screenshot is not None:
        save_window(args.screenshot)
    viewer.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
