"""The napari plugin's library side, without a viewer: reader, session, jobs, cache, export."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_dkan._widgets.cache import PredictionCache, PredictionKey
from napari_dkan._widgets.expression import Expression, measured_expression
from napari_dkan._widgets.jobs import PredictRequest, Progress, predict_steps, run_to_end, stepwise
from napari_dkan._widgets.scope import PixelBox, spots_in_box
from napari_dkan._widgets.session import SpotSession
from napari_dkan._widgets.sources import SectionSource
from napari_dkan.io.errors import DataError
from napari_dkan.progress import Cancelled
from plugin_support import tiny_run


@pytest.fixture(scope="module")
def model(her2st_dataset, panels_dir, tmp_path_factory):
    from napari_dkan.engine.runs import TrainedModel

    return TrainedModel.load(tiny_run(her2st_dataset, panels_dir, tmp_path_factory.mktemp("runs")))


@pytest.fixture()
def session(her2st):
    source = SectionSource(path=str(her2st), section="C2")
    return SpotSession(source, source.open())


# -- reader ---------------------------------------------------------------------------------------
def test_reader_accepts_sections_datasets_and_slides_and_nothing_else(her2st, visium_dir, wsi_dir, tmp_path):
    from napari_dkan._reader import napari_get_reader, read_dataset, read_slide

    c2_folder = her2st / "ST-imgs" / "C" / "C2"
    assert napari_get_reader(str(c2_folder)) is read_dataset
    assert napari_get_reader(str(next(c2_folder.glob("*.jpg")))) is read_dataset
    assert napari_get_reader(str(her2st)) is read_dataset
    assert napari_get_reader(str(visium_dir)) is read_dataset
    assert napari_get_reader(str(wsi_dir / "CMU-1-Small-Region.svs")) is read_slide
    # quietly None: a patient folder, an unrelated folder, a text file
    assert napari_get_reader(str(her2st / "ST-imgs" / "C")) is None
    assert napari_get_reader(str(tmp_path)) is None
    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader([str(her2st), str(her2st)]) is None


def test_reader_opens_a_her2st_section_as_slide_and_measured_spots(her2st, c2):
    from napari_dkan._reader import read_dataset

    (image, img_meta, img_kind), (coords, pts_meta, pts_kind) = read_dataset(str(her2st / "ST-imgs" / "C" / "C2"))
    assert (img_kind, pts_kind) == ("image", "points")
    assert img_meta["multiscale"] and img_meta["rgb"] and img_meta["units"] == ("µm", "µm")
    assert image[0].shape[:2] == (c2.open_slide().dimensions[1], c2.open_slide().dimensions[0])
    mpp = c2.mpp
    assert np.allclose(img_meta["scale"], (mpp, mpp)) and np.allclose(pts_meta["scale"], (mpp, mpp))
    # spots in level-0 pixels (row, col), drawn at their true 100 µm diameter
    assert np.allclose(coords, np.column_stack([c2.spots.y, c2.spots.x]))
    assert pts_meta["size"] * mpp == pytest.approx(100.0, rel=1e-6)
    features = pts_meta["features"]
    assert list(features["spot_id"]) == list(c2.spots.spot_id)
    assert features.shape[1] == 1 + 250  # one column per gene of the section's top-250 panel
    assert pts_meta["metadata"]["napari_dkan"]["source"] == {"path": str(her2st), "section": "C2"}
    # values are the normalised measured expression of that gene
    gene = features.columns[1]
    expected = measured_expression(c2, list(features.columns[1:]), smoothing=False).column(gene)
    assert np.allclose(features[gene], expected)


def test_reader_opens_visium_with_its_low_resolution_image(visium_dir):
    from napari_dkan._reader import read_dataset

    layers = read_dataset(str(visium_dir))
    (_, img_meta, _), (coords, pts_meta, _) = layers
    mpp = pts_meta["scale"][0]
    # this copy's hires PNG is blank: the lowres PNG is scaled so that its pixels land under
    # the full-resolution spots
    import json

    factors = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    assert img_meta["name"].endswith("lowres image")
    assert img_meta["scale"][0] == pytest.approx(mpp / factors["tissue_lowres_scalef"])
    assert len(coords) == len(pts_meta["features"]) == 100
    # spot_diameter_fullres spans Space Ranger's 65 µm; the capture spot is 55 µm
    assert pts_meta["size"] == pytest.approx(factors["spot_diameter_fullres"] * 55 / 65)
    assert pts_meta["size"] * mpp == pytest.approx(55.0)


def test_reader_opens_an_h5ad_section(c2, tmp_path):
    from napari_dkan._reader import read_dataset
    from napari_dkan.io.anndata_io import write_spatial_h5ad

    path = tmp_path / "c2.h5ad"
    write_spatial_h5ad(path, c2.counts, c2.spots.with_scale(c2.mpp), "C2", image_path=c2.image_path)
    kinds = [kind for _, _, kind in read_dataset(str(path))]
    assert kinds == ["image", "points"]


# -- session --------------------------------------------------------------------------------------
class _Model:
    """What the session needs of a model: a panel and its trust files, here none (tests without
    the engine)."""

    def __init__(self, panel):
        from napari_dkan.engine.trust import Trust

        self.panel = list(panel)
        self.trust = Trust(None, None, None)


def test_session_shares_limits_scores_and_keeps_the_gene(session):
    genes = ("A", "B")
    n = session.n_spots
    rng = np.random.default_rng(0)
    measured = Expression(genes, rng.random((n, 2)), np.arange(n))
    session.set_model(_Model(genes), measured)
    assert session.gene == "A"
    index = np.arange(0, n, 2)  # a "field of view": half the spots
    pred = Expression(genes, measured.values[index] * 2 + 1, index)
    session.set_prediction(pred)
    seen = []
    session.gene_changed.connect(seen.append)
    session.set_gene("b")  # case-insensitive
    assert session.gene == "B" and seen == ["B"]
    with pytest.raises(DataError, match="not in the panel"):
        session.set_gene("ERBB2")
    scores = session.scores()
    p, m = pred.values[:, 1], measured.values[index, 1]
    assert scores.n_spots == len(index)
    assert scores.pearson == pytest.approx(np.corrcoef(p, m)[0, 1])  # perfectly linear: r = 1
    assert scores.mae == pytest.approx(np.abs(p - m).mean())
    lo, hi = session.contrast_limits()
    both = np.concatenate([p, measured.values[:, 1]])
    assert (lo, hi) == pytest.approx(tuple(np.percentile(both, [1, 99])))
    session.set_display(low_percentile=10, high_percentile=90)
    assert session.contrast_limits() == pytest.approx(tuple(np.percentile(both, [10, 90])))
    rlo, rhi = session.residual_limits()
    assert rlo == -rhi and rhi > 0
    residual = session.residual()
    assert np.isnan(residual[1]) and residual[0] == pytest.approx(p[0] - m[0])
    with pytest.raises(DataError, match="percentiles"):
        session.set_display(low_percentile=95, high_percentile=5)


def test_colour_scales_fixed_across_genes_and_z_scores_per_source(session):
    from napari_dkan._widgets.colour_scales import Z_RANGE, ColourScale

    genes = ("LOW", "HIGH")
    n = session.n_spots
    rng = np.random.default_rng(1)
    measured = Expression(genes, np.column_stack([rng.random(n) * 0.2, 1 + rng.random(n)]), np.arange(n))
    session.set_model(_Model(genes), measured)
    session.set_prediction(Expression(genes, measured.values * 0.5 + 0.1, np.arange(n)))
    per_gene = session.contrast_limits()
    session.set_display(scale=ColourScale.FIXED)
    fixed = session.contrast_limits()
    session.set_gene("HIGH")
    assert session.contrast_limits() == fixed != per_gene  # one range for every gene
    everything = np.concatenate([measured.values.ravel(), (measured.values * 0.5 + 0.1).ravel()])
    assert fixed == pytest.approx((0.0, np.percentile(everything, 99)))
    # a LOW spot reads low on the fixed scale: the colour means the same level for both genes
    session.set_gene("LOW")
    assert session.gene_values(session.measured).max() < fixed[0] + 0.25 * (fixed[1] - fixed[0])
    session.set_display(scale=ColourScale.Z_SCORE)
    assert session.contrast_limits() == (-Z_RANGE, Z_RANGE)
    for source in (session.measured, session.predicted):  # each standardised on its own
        z = session.shown_values(source)
        assert z.mean() == pytest.approx(0, abs=1e-5) and z.std() == pytest.approx(1, abs=1e-4)
    # the predicted values are a linear function of the measured: identical z-scores
    assert np.allclose(session.shown_values(session.measured), session.shown_values(session.predicted), atol=1e-4)


def test_negative_predictions_are_raised_to_the_floor_and_counted():
    from napari_dkan._widgets.expression import clip_to_floor

    values, n = clip_to_floor(np.array([[-0.27, 0.5], [0.0, -1e-3]], dtype=np.float32))
    assert n == 2 and values.min() == 0.0 and values[0, 1] == pytest.approx(0.5)
    same, none = clip_to_floor(np.array([[0.1]], dtype=np.float32))
    assert none == 0 and same[0, 0] == pytest.approx(0.1)


def test_hover_reads_the_spot_in_um_with_all_values_and_takes_extra_fields(session):
    from napari_dkan._widgets import hover

    genes = ("A",)
    n = session.n_spots
    measured = Expression(genes, np.linspace(0, 1, n)[:, None], np.arange(n))
    session.set_model(_Model(genes), measured)
    lines = hover.spot_hover(session, 3)
    spots, mpp = session.section.spots, session.section.mpp
    assert lines[0] == f"spot {spots.spot_id[3]} at x {spots.x[3] * mpp:,.0f} µm, y {spots.y[3] * mpp:,.0f} µm"
    assert lines[1] == f"A: measured {measured.values[3, 0]:.2f}"  # nothing predicted yet
    session.set_prediction(Expression(genes, np.full((1, 1), 0.5), np.array([3])))
    lines = hover.spot_hover(session, 3, extra=[lambda s, i: f"interval for {s.gene} at {i}"])
    v = measured.values[3, 0]
    assert lines[1] == f"A: measured {v:.2f} · predicted 0.50 · residual {0.5 - v:.2f}"
    assert lines[2] == "interval for A at 3"
    interval = np.full((n, 2), np.nan, dtype=np.float32)
    interval[3] = (0.2, 0.9)  # a calibrated model's interval: shown with the prediction, as bounds
    assert hover.spot_hover(session, 3, interval=interval, level=0.9)[1] == (
        f"A: measured {v:.2f} · predicted 0.50 (90 % interval 0.20–0.90) · residual {0.5 - v:.2f}")
    assert hover.spot_hover(session, 4)[1] == f"A: measured {measured.values[4, 0]:.2f} · predicted n/a"


def test_measured_expression_marks_absent_genes_as_missing(c2):
    expr = measured_expression(c2, ["ERBB2", "NOT-A-GENE"], smoothing=True)
    assert np.isfinite(expr.column("ERBB2")).all()
    assert np.isnan(expr.column("NOT-A-GENE")).all()


# -- jobs ------------------------------------------------------------------------------------------
def test_stepwise_relays_progress_and_stops_promptly_on_cancel():
    cancel = threading.Event()
    release = threading.Event()

    def slow(report):
        report("features", 1, 10)
        release.wait(10)  # an engine call that does not check the flag for a long time
        return "late"

    steps = stepwise(slow, cancel)
    first = next(steps)
    assert first == Progress("features", 1, 10, "tiles")
    cancel.set()
    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        next(steps)
    assert time.perf_counter() - t0 < 1.0
    release.set()
    assert run_to_end(stepwise(lambda report: 42, threading.Event())) == 42


def test_predict_field_of_view_predicts_only_spots_in_the_box_and_caches(model, c2, monkeypatch):
    spots = c2.spots
    box = PixelBox(x0=float(np.median(spots.x)), y0=float(spots.y.min()), x1=float(spots.x.max()),
                   y1=float(np.median(spots.y)))
    inside = np.flatnonzero((spots.x >= box.x0) & (spots.x <= box.x1) & (spots.y >= box.y0) & (spots.y <= box.y1))
    assert 0 < len(inside) < len(spots)
    cache = PredictionCache(disk=True)
    request = PredictRequest(model, c2, box, device="cpu")
    seen: list[Progress] = []
    first = run_to_end(predict_steps(request, threading.Event(), cache), seen.append)
    assert np.array_equal(first.expression.spot_index, inside)
    assert first.expression.values.shape == (len(inside), len(model.panel)) and not first.cached
    assert any(p.stage == "predicting" and p.done == p.total == len(inside) for p in seen)
    from napari_dkan.features import pipeline

    work = []
    monkeypatch.setattr(model, "predict", lambda *a, **k: work.append("network pass"))
    encode = pipeline.encode_tiles
    monkeypatch.setattr(pipeline, "encode_tiles",
                        lambda *a, **k: work.append("tiles encoded") or encode(*a, **k))
    again = run_to_end(predict_steps(request, threading.Event(), cache))
    # served from the cache, proved by the work not done: no network pass, no tile encoded (the
    # trust layer's features come from the feature cache)
    assert again.cached and work == []
    assert np.array_equal(again.expression.values, first.expression.values)
    # a new process (empty memory) finds the prediction on disk
    cache.clear_memory()
    from napari_dkan.features import with_spots

    assert cache.get(PredictionKey.of(model, with_spots(c2, inside))) is not None


def test_spots_in_an_empty_field_of_view_is_a_readable_error(c2):
    with pytest.raises(DataError, match="field of view"):
        spots_in_box(c2.spots, PixelBox(-100, -100, -50, -50))


def test_prediction_cache_keys_on_spots(model, c2):
    from napari_dkan.features import with_spots

    cache = PredictionCache(disk=False)
    cache.put(PredictionKey.of(model, c2), np.ones((len(c2.spots), 3)))
    assert cache.get(PredictionKey.of(model, c2)) is not None
    assert cache.get(PredictionKey.of(model, with_spots(c2, np.arange(5)))) is None


# -- export ----------------------------------------------------------------------------------------
def test_export_writes_engine_anndata_and_csv(model, session, tmp_path):
    import anndata
    import pandas as pd

    from napari_dkan._widgets.export import write_points_layer, write_predictions

    n = session.n_spots
    measured = measured_expression(session.section, model.panel, smoothing=model.smoothing)
    session.set_model(model, measured)
    index = np.arange(10, 30)
    pred = Expression(tuple(model.panel), np.random.default_rng(1).random((20, len(model.panel))), index)
    session.set_prediction(pred)
    adata = anndata.read_h5ad(write_predictions(session, tmp_path / "p.h5ad"))
    assert list(adata.obs_names) == list(session.section.spots.spot_id[index])
    assert list(adata.var_names) == list(model.panel)
    assert np.allclose(adata.X, pred.values)
    assert np.allclose(adata.layers["measured"], measured.values[index])
    assert adata.uns["napari_dkan"]["section"] == "C2"
    frame = pd.read_csv(write_predictions(session, tmp_path / "p.csv"), index_col=0)
    assert list(frame.columns[:4]) == ["array_row", "array_col", "x", "y"]
    assert np.allclose(frame[list(model.panel)].to_numpy(), pred.values, atol=1e-6)
    with pytest.raises(DataError, match=r"\.h5ad, \.csv or \.zarr"):
        write_predictions(session, tmp_path / "p.xlsx")
    # the napari writer rebuilds the same AnnData from a predicted layer's metadata
    from napari_dkan._widgets.expression import spot_features

    features = spot_features(session.section.spots.spot_id, model.panel, pred.full(n))
    meta = {"features": features, "metadata": {"napari_dkan": {
        "role": "predicted", "model": str(model.run_dir), "source": session.source.to_metadata()}}}
    coords = np.column_stack([session.section.spots.y, session.section.spots.x])
    again = anndata.read_h5ad(write_points_layer(tmp_path / "w.h5ad", coords, meta))
    assert list(again.obs_names) == list(adata.obs_names) and np.allclose(again.X, adata.X)
    rows = pd.read_csv(write_points_layer(tmp_path / "w.csv", coords, meta), index_col=0)
    assert len(rows) == len(index) and rows["x"].iloc[0] == pytest.approx(session.section.spots.x[10])
    meta["metadata"]["napari_dkan"]["role"] = "measured"
    with pytest.raises(DataError, match="save this layer as .csv"):
        write_points_layer(tmp_path / "m.h5ad", coords, meta)


def test_tiny_panel_is_what_the_model_was_trained_on(model, panels_dir, her2st_dataset):
    """The test model's genes are the published HER2ST panel's first ones, read here from the
    file (not through the helper that chose them), and its text vectors follow that order."""
    from plugin_support import PANEL_SIZE

    published = (Path(panels_dir) / "her2st.txt").read_text().split()
    assert list(model.panel) == published[:PANEL_SIZE]
    text = model.gene_text()
    assert list(text.genes) == published[:PANEL_SIZE] and text.matrix.shape[0] == PANEL_SIZE
    measured = set(her2st_dataset["C3"].counts.genes)  # the section it was trained on
    assert set(model.panel) <= measured


def test_colorbar_heading_puts_a_long_slide_name_on_its_own_line():
    from napari_dkan._widgets.colour_scales import QUANTITY, colorbar_heading

    assert colorbar_heading("ERBB2", "C2") == "ERBB2 (C2)"
    heading = colorbar_heading("ERBB2", "CMU-1-Small-Region")  # ran over the colorbar on one line
    assert heading == "ERBB2\n(CMU-1-Small-Region)"
    assert max(map(len, heading.splitlines())) <= len(QUANTITY) + 2


def test_side_by_side_refusal_says_a_slide_without_measured_data_has_none():
    from types import SimpleNamespace

    from napari_dkan._widgets.dock import side_by_side_refusal

    bare = SimpleNamespace(predicted=object(), measured=None)  # e.g. a WSI: predicted, nothing measured
    assert "no measured data" in side_by_side_refusal(bare)
    assert "predict first" in side_by_side_refusal(SimpleNamespace(predicted=None, measured=object()))
    assert "predict first" in side_by_side_refusal(None)


def test_a_new_model_opens_on_its_first_gene_that_is_not_unreliable(session, model, tmp_path):
    import shutil

    from napari_dkan.engine.reliability import from_folds
    from napari_dkan.engine.runs import TrainedModel

    run = tmp_path / "run"
    shutil.copytree(model.run_dir, run)
    panel = model.panel
    r = np.full(len(panel), 0.5)
    r[:2] = 0.02  # the panel's first two genes are unreliable
    from_folds(panel, {"B4": r, "C2": r}, "test protocol").save(run / "reliability.json")
    session.set_model(TrainedModel.load(run), None)
    assert session.gene == panel[2]
    # a gene the user chose is kept, reliable or not
    session.set_gene(panel[0])
    session.set_model(TrainedModel.load(run), None)
    assert session.gene == panel[0]
    # without reliability (older runs): the panel's first gene, as before
    (run / "reliability.json").unlink()
    other = SpotSession(session.source, session.section)
    other.set_model(TrainedModel.load(run), None)
    assert other.gene == panel[0]
