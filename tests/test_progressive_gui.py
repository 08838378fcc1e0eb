"""A large slide's map appears progressively in the dock: spots are coloured before the job ends.

HER2ST C2 (187 spots) stands in for a large slide: the threshold and the fill's chunk are lowered
so that its prediction runs in stages, with empty caches so that its tiles are encoded.
"""

from __future__ import annotations

import numpy as np
import pytest

from plugin_support import prediction_dock

pytestmark = pytest.mark.gui
WAIT_MS = 120_000


@pytest.fixture(scope="module")
def dock(viewer, her2st):
    return prediction_dock(viewer, her2st / "ST-imgs" / "C" / "C2")


def test_all_spots_on_a_large_slide_colours_the_view_first_then_the_rest(
        qtbot, viewer, dock, tiny_run_dir, monkeypatch, tmp_path, one_torch_thread):
    from napari_dkan._widgets import jobs
    from napari_dkan._widgets.cache import PredictionCache
    from napari_dkan._widgets.scope import Scope
    from napari_dkan.engine import progressive

    dock.choose_model(str(tiny_run_dir))
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    # the in-use line names what runs the encoder (the tiny test encoder stays on torch)
    assert "encoder on torch" in dock.models.in_use.text()
    session = dock.session
    spots, mpp = session.section.spots, session.section.mpp
    # zoom onto the upper-left part of the spots
    camera = viewer.scene.camera
    camera.center = (float(np.percentile(spots.y, 25) * mpp), float(np.percentile(spots.x, 25) * mpp))
    camera.zoom = 3.0 * min(np.array(viewer.canvas.size) / (np.ptp(np.column_stack([spots.y, spots.x]), 0) * mpp))
    viewer.screenshot(canvas_only=True)
    monkeypatch.setattr(jobs, "PROGRESSIVE_MIN_SPOTS", 100)
    monkeypatch.setattr(progressive, "CHUNK", 40)
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path / "cache"))  # tiles must be encoded
    monkeypatch.setattr(dock, "cache", PredictionCache(disk=False))
    dock.set_scope(Scope.ALL_SPOTS)
    layer = viewer.layers["C2 · predicted"]
    seen: list[tuple[str, int, bool, np.ndarray]] = []

    def record(step):
        if isinstance(step, jobs.PartialPrediction):  # the dock has coloured them by now
            seen.append((step.stage, int(np.count_nonzero(layer.shown)), dock.busy,
                         np.asarray(step.expression.spot_index)))

    worker = dock.predict()
    worker.yielded.connect(record)
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    n = len(spots)
    assert len(seen) >= 4, seen
    # coloured spots grow while the job still runs
    during = [(stage, shown) for stage, shown, busy, _ in seen if busy]
    assert during and 0 < during[0][1] < n
    assert [shown for _, shown in during] == sorted(shown for _, shown in during)
    # the first ones are exactly the spots in view
    view = dock._request().view  # noqa: SLF001 - the same box the job was given
    from napari_dkan._widgets.scope import spots_in_box

    in_view = spots_in_box(spots, view)
    assert 0 < len(in_view) < n
    assert seen[0][0] == "coloured (view)" and set(seen[0][3]) == set(in_view)
    assert seen[0][1] == len(in_view)
    # at the end every spot is coloured, and the values equal a one-shot prediction
    assert int(np.count_nonzero(layer.shown)) == n and len(session.predicted) == n
    model = dock.model
    one_shot = model.predict(model.section_data(session.section, with_targets=False, device="cpu"),
                             device="cpu")
    np.testing.assert_allclose(session.predicted.full(n), one_shot, rtol=1e-4, atol=1e-5)


def test_each_stage_updates_the_map_in_place_with_one_redraw(qtbot, viewer, dock, tiny_run_dir,
                                                             monkeypatch):
    """A stage changes some spots of a layer that spans the slide: the layer's feature table is
    written in place (not replaced: napari would rebuild every point's colours and text) and the
    points go to vispy once per stage.  napari re-sends every point on each colour, border and
    visibility change; rebuilding the table and recolouring sent them ~15 times per stage, 1–5 s
    of GUI time per stage on an 11,443-spot slide (see benchmarks/stage_colouring.py)."""
    from pathlib import Path

    from napari_dkan._widgets import jobs
    from napari_dkan._widgets.expression import Expression
    from napari_dkan._widgets.layers import RING_WIDTH
    from napari_dkan.engine.progressive import plan_stages

    if dock.model is None or Path(dock.model.run_dir) != Path(tiny_run_dir):
        dock.choose_model(str(tiny_run_dir))
        qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    session, model = dock.session, dock.model
    spots = session.section.spots
    n, genes = len(spots), tuple(model.panel)
    layer = viewer.layers["C2 · predicted"]
    markers = viewer.window._qt_viewer.canvas.layer_to_visual[layer].node.points_markers  # noqa: SLF001
    sends: list[int] = []
    send = markers.set_data
    monkeypatch.setattr(markers, "set_data", lambda *a, **k: (sends.append(1), send(*a, **k))[1])
    table = layer.features
    rebuilt: list[object] = []
    layer.events.features.connect(rebuilt.append)

    rng = np.random.default_rng(1)
    truth = rng.normal(1.0, 0.3, (n, len(genes))).astype(np.float32)
    stages = [(s.name, s.index, truth[s.index]) for s in plan_stages(spots.xy, np.arange(20), chunk=40)]
    stages.append(("refined", np.arange(n), truth + np.float32(0.01)))  # every row changes
    values = np.full((n, len(genes)), np.nan, np.float32)
    known = np.zeros(n, bool)
    g = genes.index(session.gene)
    for name, index, stage_values in stages:
        values[index], known[index] = stage_values, True
        rows = np.flatnonzero(known)
        step = jobs.PartialPrediction(f"coloured ({name})", len(rows), n, "spots",
                                      Expression(genes, values[rows], rows), model, session.section)
        sends.clear()
        dock._partial(step)  # noqa: SLF001 - what the worker's yielded signal calls
        assert len(sends) == 1, (name, len(sends))
        assert layer.features is table and not rebuilt, name
        np.testing.assert_array_equal(layer.shown, known)
        np.testing.assert_array_equal(layer.features[list(genes)].to_numpy()[known], values[known])
        assert np.isnan(layer.features[list(genes)].to_numpy()[~known]).all()
        lo, hi = session.contrast_limits()
        expected = layer.face_colormap.map(np.interp(values[known, g], (lo, hi), (0, 1)))
        np.testing.assert_allclose(layer.face_color[known], expected, atol=1e-6)
        assert layer.face_contrast_limits == pytest.approx((lo, hi))
        ring = RING_WIDTH if not known.all() else 0.0
        np.testing.assert_allclose(layer.border_width, ring)
    np.testing.assert_array_equal(session.predicted.full(n), truth + np.float32(0.01))


def test_progress_reports_are_shown_twice_a_second_at_most_the_latest_always(qtbot, dock,
                                                                             monkeypatch):
    """Qt repaints a progress bar at once, composing the whole window around the OpenGL canvas
    (~30 ms each on this CPU; a 100-s prediction sent ~700 reports): the runner shows at most
    one report per PROGRESS_INTERVAL_S, the latest within that time, and none after the end."""
    from napari_dkan._widgets import runner as runner_module
    from napari_dkan._widgets.jobs import Progress

    runner = dock.runner
    monkeypatch.setattr(runner, "worker", object())  # a job running
    monkeypatch.setattr(runner, "_settled", False)
    monkeypatch.setattr(runner, "_shown_at", 0.0)
    shown: list[int] = []
    show = runner._show_progress  # noqa: SLF001
    monkeypatch.setattr(runner, "_show_progress", lambda step: (shown.append(step.done), show(step)))
    for done in range(1, 51):
        runner._on_progress(Progress("features", done, 50, "tiles"))  # noqa: SLF001
    assert shown == [1]  # the first at once, the rest waiting
    qtbot.waitUntil(lambda: shown[-1] == 50, timeout=int(3000 * runner_module.PROGRESS_INTERVAL_S))
    assert shown == [1, 50] and runner.progress.value() == 50
    runner._on_progress(Progress("predicting", 1, 2, "spots"))  # noqa: SLF001
    runner._settle(lambda _result: runner.status.setText("predicted"), None)  # noqa: SLF001
    qtbot.wait(int(1500 * runner_module.PROGRESS_INTERVAL_S))
    assert shown == [1, 50] and runner.status.text() == "predicted"


def test_an_unreliable_genes_label_comes_with_the_first_stage_not_the_jobs_end(
        qtbot, viewer, dock, tiny_run_dir, monkeypatch, tmp_path, one_torch_thread):
    """The canvas label of an unreliable gene is drawn with the first partial colours (its glyphs
    and shader warmed when the layer was made), not as a new visual when the job ends."""
    from napari_dkan._widgets import jobs, trust_view
    from napari_dkan._widgets.cache import PredictionCache
    from napari_dkan._widgets.scope import Scope
    from napari_dkan.engine import progressive

    dock.choose_model(str(tiny_run_dir))
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    label = trust_view.text_overlay(viewer)
    assert not label.visible and label.text == ""  # the warm-up draw left nothing behind
    monkeypatch.setattr(trust_view, "verdict", lambda r: "unreliable")  # every gene, for the test
    monkeypatch.setattr(jobs, "PROGRESSIVE_MIN_SPOTS", 100)
    monkeypatch.setattr(progressive, "CHUNK", 40)
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dock, "cache", PredictionCache(disk=False))
    dock.set_scope(Scope.ALL_SPOTS)
    seen: list[tuple[bool, bool]] = []

    def record(step):
        if isinstance(step, jobs.PartialPrediction):
            seen.append((dock.busy, label.visible and "UNRELIABLE" in label.text))

    worker = dock.predict()
    worker.yielded.connect(record)
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    assert len(seen) >= 3
    # from the second stage on (the first stage's label comes one event-loop turn after it),
    # while the job still runs, the label is up
    assert any(busy and shown for busy, shown in seen[1:]), seen
    assert label.visible and f"{dock.session.gene}: UNRELIABLE" in label.text
