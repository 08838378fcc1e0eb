"""Whole-slide prediction in stages: view first, then coarse to fine, the end equal to one shot."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dkan.engine.progressive import every_kth, lattice_pitch, plan_stages, predict_in_stages
from napari_dkan.features import extract_section_features
from napari_dkan.features.section import extract_in_stages


def _hex_lattice(rows: int, cols: int, pitch: float = 100.0) -> np.ndarray:
    return np.array([((c + 0.5 * (r % 2)) * pitch, r * pitch * np.sqrt(3) / 2)
                     for r in range(rows) for c in range(cols)])


def test_stages_cover_every_spot_once_view_first_then_coarse_to_fine():
    xy = _hex_lattice(60, 60)
    assert lattice_pitch(xy) == pytest.approx(100.0)
    view = np.flatnonzero((xy[:, 0] < 500) & (xy[:, 1] < 500))
    stages = plan_stages(xy, in_view=view, chunk=1000)
    everything = np.concatenate([s.index for s in stages])
    assert sorted(everything.tolist()) == list(range(len(xy)))  # a partition
    assert stages[0].name == "view" and set(stages[0].index) == set(view)
    names = [s.name for s in stages]
    assert names[1:4] == ["coarse 1/64", "coarse 1/16", "coarse 1/4"]
    assert all(name.startswith("fill") for name in names[4:]) and max(len(s.index) for s in stages[4:]) <= 1000
    # each coarse level spreads over the whole slide: one spot per k·pitch cell
    for k, stage in zip((8, 4, 2), stages[1:4]):
        cumulative = every_kth(xy, k, 100.0)
        assert len(cumulative) == pytest.approx(len(xy) / (k * k * np.sqrt(3) / 2), rel=0.25)
        cells = np.floor((xy[cumulative] - xy.min(0)) / (k * 100.0)).astype(int)
        assert len({tuple(c) for c in cells}) == len(cumulative)  # no two spots in one cell
        assert np.ptp(xy[stage.index, 0]) > 0.8 * np.ptp(xy[:, 0])  # not one corner of the slide


def test_staged_extraction_encodes_each_tile_once_and_matches_one_shot(c2, one_torch_thread):
    stages = plan_stages(c2.spots.xy, in_view=np.arange(10), levels=(4,), chunk=60)
    done_counts, tiles, partial = [], [], []
    for done, feats in extract_in_stages(c2, [s.index for s in stages], encoder="tiny", cache=False,
                                         progress=lambda d, t: tiles.append((d, t))):
        done_counts.append(len(done))
        last = (done, feats)
        if len(done) < len(c2.spots):
            assert feats.patch.shape[0] == len(done) and feats.region.shape[0] == len(done)
            partial = [feats, done]
    partial_feats, partial_rows = partial
    assert done_counts == sorted(done_counts) and done_counts[0] == 10 and done_counts[-1] == len(c2.spots)
    one_shot = extract_section_features(c2, "tiny", cache=False)
    done, feats = last
    np.testing.assert_array_equal(feats.patch, one_shot.patch)
    np.testing.assert_array_equal(feats.region, one_shot.region)
    assert feats.meta["tiles_encoded"] == one_shot.meta["tiles_encoded"]  # no tile encoded twice
    assert tiles[-1][0] == tiles[-1][1] == one_shot.meta["tiles_encoded"]
    # a spot's features while others are pending are already its final ones
    np.testing.assert_array_equal(partial_feats.patch, one_shot.patch[partial_rows])
    np.testing.assert_array_equal(partial_feats.region, one_shot.region[partial_rows])


def test_staged_prediction_previews_then_ends_equal_to_one_shot(c2, tiny_run_dir, one_torch_thread,
                                                               tmp_path, monkeypatch):
    from napari_dkan.engine.runs import TrainedModel

    # an empty feature cache: from a cache hit everything comes in one final stage (tested apart)
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path))

    model = TrainedModel.load(tiny_run_dir)
    stages = plan_stages(c2.spots.xy, in_view=np.arange(20), levels=(4,), chunk=80)
    out = list(predict_in_stages(model, c2, stages, device="cpu"))
    assert out[0].stage == "view" and list(out[0].spot_index) == list(range(20))
    assert out[0].context == 20 and not out[0].final
    assert out[-1].stage == "refined" and out[-1].final
    n = len(c2.spots)
    final = np.full((n, len(model.panel)), np.nan, np.float32)
    for part in out:
        final[part.spot_index] = part.values
    one_shot = model.predict(model.section_data(c2, with_targets=False, device="cpu"), device="cpu")
    np.testing.assert_allclose(final, one_shot, rtol=1e-4, atol=1e-5)
    # the first preview saw 20 spots of context and is not the final value
    assert not np.allclose(out[0].values, one_shot[:20], atol=1e-5)
    # spots predicted with the whole slide's context are not predicted again
    refined = set(out[-1].spot_index.tolist())
    last_fill = [p for p in out if p.final and p.stage != "refined"]
    assert last_fill and not refined & set(last_fill[0].spot_index.tolist())


def test_slide_context_is_computed_once_per_prediction_with_the_same_values(c2, tiny_run_dir,
                                                                            one_torch_thread):
    """predict_store runs the slide branch once for all batches: same values as per batch."""
    import torch

    from napari_dkan.engine.families import SpotStore, predict_store
    from napari_dkan.engine.runs import TrainedModel

    model = TrainedModel.load(tiny_run_dir)
    data = model.section_data(c2, with_targets=False, device="cpu")
    net, family, text = model._net, model._family, model._text  # noqa: SLF001
    store = SpotStore([data], torch.device("cpu"))
    calls = []
    handle = net.slide_branch.register_forward_hook(lambda *a: calls.append(1))
    try:
        fast = predict_store(family, net, store, text, batch_size=32)
    finally:
        handle.remove()
    assert len(calls) == 1  # not once per batch (187 spots: 6 batches)
    with torch.no_grad():
        slow = np.concatenate([
            family.predict(net, family.inputs(store, torch.arange(a, min(a + 32, len(store))), None), text).numpy()
            for a in range(0, len(store), 32)])
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    rows = np.array([5, 100, 3])
    np.testing.assert_allclose(predict_store(family, net, store, text, rows=rows), fast[rows], rtol=1e-5, atol=1e-6)


def test_a_progressive_job_waits_for_each_stage_to_be_drawn(monkeypatch):
    """After reporting a stage the job waits until the dock has coloured and drawn it (the GUI
    thread then has the CPU and Python's GIL to itself), at most DRAW_WAIT_S, and not at all
    when driven by run_to_end."""
    import threading
    import time
    from types import SimpleNamespace

    from napari_dkan._widgets import jobs
    from napari_dkan.engine import progressive

    rng = np.random.default_rng(0)
    xy = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0)), -1).reshape(-1, 2) * 100
    spots = type("Spots", (), {"xy": xy, "__len__": lambda self: len(xy)})()
    section = SimpleNamespace(spots=spots)
    model = SimpleNamespace(panel=["A", "B"], smoothing=False)

    def stages(model, section, plan, **_):
        for stage in plan:
            yield progressive.StagePrediction(stage.name, stage.index,
                                              rng.normal(size=(len(stage.index), 2)), 0, False)

    monkeypatch.setattr(progressive, "predict_in_stages", stages)
    request = jobs.PredictRequest(model, section)
    reports: list = []
    job = threading.Thread(target=jobs._progressively, args=(request, reports.append, threading.Event()))
    job.start()
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(reports) == 1 and not reports[0].drawn.is_set()  # waiting for the dock
    reports[0].drawn.set()
    while len(reports) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(reports) == 2  # the next stage came once the first was drawn
    monkeypatch.setattr(jobs, "DRAW_WAIT_S", 0.05)  # nobody draws: the job goes on anyway
    job.join(5)
    assert not job.is_alive() and len(reports) == len(progressive.plan_stages(xy))
    # a script's run_to_end sets each stage drawn as it hands it on
    items: list = []
    t = time.monotonic()
    monkeypatch.setattr(jobs, "DRAW_WAIT_S", 30.0)
    values = jobs.run_to_end(jobs.stepwise(
        lambda report: jobs._progressively(request, report, threading.Event()), threading.Event()),
        items.append)
    assert time.monotonic() - t < 10 and values.shape == (len(xy), 2)
    assert all(item.drawn.is_set() for item in items)
