"""The GUI thread's share of a progressive prediction, without the encoder (issue 16).  Prints JSON.

``progressive_map.py`` measures a whole progressive run, minutes of tile encoding on a CPU.
This replays only what reaches the GUI thread: the stages of ``engine.progressive.plan_stages``
on a large slide, each handed to the dock as the job hands it (a ``PartialPrediction`` holding
every spot known so far), then the final result, with made-up values.  A 10 ms ``QTimer``
ticks throughout, so the longest gap includes napari's and vispy's drawing after each stage.

    python benchmarks/make_synthetic_slide.py /tmp/synth --size 20000
    xvfb-run -a python benchmarks/stage_colouring.py /tmp/synth/synthetic-20000.h5ad [--profile N]

``--profile N`` prints cProfile's top N functions (cumulative) of the stage handler to stderr.
Without ``--model`` the tests' tiny DKAN is trained first (in ``--work``, reused when there).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide", type=Path, help=".h5ad whose spots point at a slide")
    ap.add_argument("--model", type=Path, help="a run directory (default: train a tiny DKAN)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "stage-colouring")
    ap.add_argument("--view-mm", type=float, default=2.0)
    ap.add_argument("--interval-ms", type=int, default=10)
    ap.add_argument("--settle-ms", type=int, default=400, help="event loop after each stage")
    ap.add_argument("--profile", type=int, default=0, help="print the top N of cProfile")
    ap.add_argument("--profile-drawing", action="store_true",
                    help="profile the event loop after each stage too (napari's and vispy's drawing)")
    ap.add_argument("--screenshot", type=Path, help="save the canvas after the last stage")
    args = ap.parse_args()
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise SystemExit("needs a display: run under xvfb-run -a")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = args.model
    if run_dir is None:
        run_dir = args.work / "tiny-dkan"
        if not (run_dir / "config.json").is_file():
            from gui_stall import train_tiny

            run_dir = train_tiny(args.work)

    import napari
    from qtpy.QtCore import QEventLoop, QTimer

    from napari_dkan._widgets import jobs
    from napari_dkan._widgets.expression import Expression, target_space
    from napari_dkan._widgets.scope import Scope, spots_in_box
    from napari_dkan.demo import wait_for
    from napari_dkan.engine.progressive import plan_stages

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open(str(args.slide), plugin="napari-dkan")
    _, dock = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    dock.models.set_devices(["cpu"])
    wait_for(lambda: False, 0.5)
    wait_for(lambda: not dock.busy, 3600)
    dock.choose_model(str(run_dir))
    wait_for(lambda: not dock.busy, 3600)
    session, model = dock.session, dock.model
    spots, mpp = session.section.spots, float(session.section.mpp)
    camera = viewer.scene.camera
    camera.center = (float(np.median(spots.y) * mpp), float(np.median(spots.x) * mpp))
    camera.zoom = float(min(viewer.canvas.size)) / (args.view_mm * 1000.0)
    dock.set_scope(Scope.ALL_SPOTS)
    view = spots_in_box(spots, dock._request().view)  # noqa: SLF001 - the job's view
    stages = plan_stages(spots.xy, view)
    n, genes = len(spots), tuple(model.panel)
    rng = np.random.default_rng(0)
    # smooth made-up maps: a gradient per gene plus noise, so the screenshot shows structure
    xy = (spots.xy - spots.xy.min(0)) / np.ptp(spots.xy, 0).max()
    slope = rng.normal(size=(2, len(genes)))
    truth = (xy @ slope + 0.1 * rng.normal(size=(n, len(genes))) + 1.0).astype(np.float32)
    values = np.full((n, len(genes)), np.nan, np.float32)
    known = np.zeros(n, bool)
    space = target_space(model.smoothing)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(args.interval_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    loop = QEventLoop()

    def settle(ms: int) -> None:
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    profiler = cProfile.Profile() if args.profile else None
    per_stage = []
    timer.start()
    settle(args.settle_ms)
    stage_names = [s.name for s in stages] + ["refined"]
    parts = [s.index for s in stages] + [np.arange(n)]
    for name, index in zip(stage_names, parts):
        values[index] = truth[index]
        known[index] = True
        shown = np.flatnonzero(known)
        step = jobs.PartialPrediction(f"coloured ({name})", len(shown), n, "spots",
                                      Expression(genes, values[shown], shown, space), model,
                                      session.section)
        t = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        dock._partial(step)  # noqa: SLF001 - what the worker's yielded signal calls
        if profiler is not None:
            profiler.disable()
        handler = time.perf_counter() - t
        first_tick = len(ticks)
        if profiler is not None and args.profile_drawing:
            profiler.enable()
        settle(args.settle_ms)
        if profiler is not None:
            profiler.disable()
        gaps = [(b - a) * 1000 for a, b in itertools.pairwise([t, *ticks[first_tick:]])]
        per_stage.append({"stage": name, "spots": int(known.sum()),
                          "handler_ms": round(handler * 1000, 1),
                          "longest_gap_ms": round(max(gaps), 1) if gaps else None})
    result = jobs.PredictResult(model, session.section, Expression(genes, truth, np.arange(n), space),
                                cached=False, seconds=1.0, device="cpu")
    t = time.perf_counter()
    first_tick = len(ticks)
    dock._predicted(result)  # noqa: SLF001
    handler = time.perf_counter() - t
    settle(args.settle_ms)
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise([t, *ticks[first_tick:]])]
    per_stage.append({"stage": "result", "spots": n, "handler_ms": round(handler * 1000, 1),
                      "longest_gap_ms": round(max(gaps), 1) if gaps else None})
    timer.stop()
    # a forced draw of the canvas, read back (what any change on screen costs, ours or not)
    paints = []
    for _ in range(5):
        t = time.perf_counter()
        viewer.screenshot(canvas_only=True)
        paints.append((time.perf_counter() - t) * 1000)
    all_gaps = [(b - a) * 1000 for a, b in itertools.pairwise(ticks)]
    if args.screenshot is not None:
        from imageio.v3 import imwrite

        imwrite(args.screenshot, viewer.screenshot(canvas_only=False))
    np.testing.assert_array_equal(session.predicted.full(n), truth)
    viewer.close()
    out = {"slide": str(args.slide), "spots": n, "spots_in_view": len(view), "genes": len(genes),
           "stages": per_stage,
           "longest_stall_ms": round(max(all_gaps) - args.interval_ms, 1),
           "p99_gap_ms": round(sorted(all_gaps)[int(0.99 * (len(all_gaps) - 1))], 1),
           "canvas_screenshot_ms": round(float(np.median(paints)), 1),
           "loadavg": os.getloadavg()}
    print(json.dumps(out, indent=1))
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(args.profile)
        print(text.getvalue(), file=sys.stderr)


if __name__ == "__main__":
    main()
