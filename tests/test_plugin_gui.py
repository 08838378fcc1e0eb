"""The napari plugin in a real viewer (Xvfb): HER2ST C2, a tiny DKAN model, screenshots.

One viewer and one dock serve the module; each test brings them to the state it needs.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from plugin_support import prediction_dock

pytestmark = pytest.mark.gui
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def run_dir(tiny_run_dir):
    return tiny_run_dir


@pytest.fixture(scope="module")
def dock(viewer, her2st):
    return prediction_dock(viewer, her2st / "ST-imgs" / "C" / "C2")


def _wait(qtbot, dock):
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)


def _ready(qtbot, dock, run_dir):
    """The tiny model loaded and every spot of C2 predicted."""
    from napari_dkan._widgets.scope import Scope

    if dock.model is None:
        dock.choose_model(str(run_dir))
        _wait(qtbot, dock)
    if dock.session.predicted is None or len(dock.session.predicted) != dock.session.n_spots:
        dock.set_scope(Scope.ALL_SPOTS)
        assert dock.predict() is not None
        _wait(qtbot, dock)
    assert dock.session.predicted is not None


def _fit_to_spots(viewer, session, zoom=1.0):
    spots, mpp = session.section.spots, session.section.mpp
    lo = np.array([spots.y.min(), spots.x.min()]) * mpp
    hi = np.array([spots.y.max(), spots.x.max()]) * mpp
    camera = viewer.scene.camera
    camera.center = tuple((lo + hi) / 2)
    camera.zoom = zoom * 0.9 * min(np.array(viewer.canvas.size) / (hi - lo))


def _only(viewer, *visible):
    for layer in viewer.layers:
        layer.visible = layer in visible


def _shot(viewer):
    return np.asarray(viewer.screenshot(canvas_only=True))[..., :3].astype(int)


def _changed(a, b, tol=30):
    return float((np.abs(a - b).sum(axis=-1) > tol).mean())


def _distinct_genes(session):
    """The pair of genes whose mean prediction differs most in colormap position."""
    position = {}
    for gene in session.genes:
        session.set_gene(gene)
        lo, hi = session.contrast_limits()
        position[gene] = (np.nanmean(session.gene_values(session.predicted)) - lo) / (hi - lo)
    low, high = min(position, key=position.get), max(position, key=position.get)
    assert position[high] - position[low] > 0.2, f"the test model predicts one level: {position}"
    return low, high


def test_manifest_provides_reader_widget_and_writer(dock, her2st):
    from napari.plugins import _npe2
    from npe2 import PluginManager

    assert type(dock).__name__ == "PredictionDock"
    assert "napari-dkan" in _npe2.get_readers(str(her2st / "ST-imgs" / "C" / "C2"))
    manifest = PluginManager.instance().get_manifest("napari-dkan")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Predict expression", "Fine-tune a model"]
    assert manifest.contributions.writers[0].layer_types == ["points"]


def test_open_c2_adopts_measured_layer_and_lists_its_genes(viewer, dock):
    from napari.utils.notifications import notification_manager

    from napari_dkan._widgets.spots_layer import SpotsLayer

    assert dock.predict() is None  # no model yet: refused with a message, not an exception
    assert "choose a model first" in notification_manager.records[-1].message

    names = [layer.name for layer in viewer.layers]
    assert names[:2] == ["C2 · slide", "C2 · measured"]
    assert isinstance(viewer.layers["C2 · measured"], SpotsLayer)  # the reader's layer, adopted
    assert dock.session.section.name == "C2" and len(dock.session.genes) == 250


def test_the_view_fits_the_tissue_and_the_controls_say_only_what_is_true(viewer, dock):
    from napari_dkan._widgets.layer_controls import HIDDEN_CONTROLS, layer_controls

    session = dock.session
    spots, mpp = session.section.spots, session.section.mpp
    width_um = (spots.x.max() - spots.x.min()) * mpp
    height_um = (spots.y.max() - spots.y.min()) * mpp
    camera = viewer.scene.camera
    canvas_h, canvas_w = viewer.canvas.viewbox_size(viewer.layers)
    shown_w, shown_h = canvas_w / camera.zoom, canvas_h / camera.zoom
    # the spots fill the canvas in one direction (not a third of it, as the whole image did)
    assert max(width_um / shown_w, height_um / shown_h) > 0.8
    centre = np.asarray(camera.center[-2:])
    half = np.array([shown_h, shown_w]) / 2
    assert np.all(np.array([spots.y.min(), spots.x.min()]) * mpp >= centre - half)  # all in view
    assert np.all(np.array([spots.y.max(), spots.x.max()]) * mpp <= centre + half)
    # gene-coloured spots: no "face color: white", no ticked "display text"
    layer = viewer.layers["C2 · measured"]
    assert layer.text.visible is False
    controls = layer_controls(viewer, layer)
    for name in HIDDEN_CONTROLS:
        for row in getattr(controls, name).get_widget_controls():
            assert all(not w.isVisibleTo(controls) for w in row), name


def test_no_empty_colorbar_before_a_prediction(qtbot, viewer, dock, run_dir):
    from napari_dkan._widgets.canvas_text import layer_text
    from napari_dkan._widgets.layers import COLORBAR_TITLE, TITLE

    if dock.model is None:
        dock.choose_model(str(run_dir))
        _wait(qtbot, dock)
    assert dock.session.predicted is None
    predicted, measured = viewer.layers["C2 · predicted"], viewer.layers["C2 · measured"]
    assert not predicted.face_colorbar.visible  # all-NaN: no 0–1 bar over nothing
    assert layer_text(predicted, TITLE) is None and layer_text(predicted, COLORBAR_TITLE) is None
    assert measured.face_colorbar.visible  # the measured values have the colour scale
    assert layer_text(measured, COLORBAR_TITLE).startswith(f"{dock.session.gene} (C2)")


def test_predict_then_switch_genes_recolours_in_place(qtbot, viewer, dock, run_dir):
    _ready(qtbot, dock, run_dir)
    session = dock.session
    predicted = viewer.layers["C2 · predicted"]
    # the spot id, one column per gene, and the colour column (the gene shown, on the scale in use)
    assert predicted.features.shape == (session.n_spots, 2 + len(session.genes))
    assert "12 genes" in dock.models.info.text() and "image encoder tiny" in dock.models.info.toolTip()
    assert "in use: cpu" in dock.models.in_use.text()
    layers_before = list(viewer.layers)
    _fit_to_spots(viewer, session)
    _only(viewer, viewer.layers["C2 · slide"])
    slide_only = _shot(viewer)
    _only(viewer, viewer.layers["C2 · slide"], predicted)
    # two genes whose predictions sit at clearly different places on the shared colour scale
    first_gene, second_gene = _distinct_genes(session)
    dock.set_gene(first_gene)
    shot_a = _shot(viewer)
    dock.genes.gene_chosen.emit(second_gene)  # as the picker does
    assert session.gene == second_gene and dock.genes.edit.text() == second_gene
    shot_b = _shot(viewer)
    assert _changed(slide_only, shot_a) > 0.02, "the predicted overlay draws nothing"
    assert _changed(shot_a, shot_b) > 0.01, "switching gene did not change the picture"
    assert list(viewer.layers) == layers_before  # recoloured in place, nothing added
    # predicted and measured share colormap and limits; the predicted layer shows the colorbar
    measured = viewer.layers["C2 · measured"]
    assert predicted.face_contrast_limits == pytest.approx(measured.face_contrast_limits)
    assert predicted.face_contrast_limits == pytest.approx(session.contrast_limits())
    assert predicted.face_colorbar.visible and not measured.face_colorbar.visible
    dock.display.high.setValue(90.0)
    assert predicted.face_contrast_limits == pytest.approx(session.contrast_limits())
    dock.display.colormap.setCurrentText("magma")
    assert predicted.face_colormap.name == measured.face_colormap.name == "magma"
    assert "Pearson r" in dock.scores.text() and f"{session.n_spots} spots" in dock.scores.text()


def test_gene_picker_searches_the_panel_as_you_type(qtbot, dock, run_dir):
    from qtpy.QtCore import Qt

    _ready(qtbot, dock, run_dir)
    picker = dock.genes
    picker.completer.setCompletionPrefix("rbb")  # matches anywhere in the name
    assert picker.completer.completionCount() == 1 and picker.completer.currentCompletion() == "ERBB2"
    picker.edit.clear()
    qtbot.keyClicks(picker.edit, "erbb2")
    qtbot.keyClick(picker.edit, Qt.Key.Key_Return)
    assert dock.session.gene == "ERBB2"
    picker.next.click()
    assert dock.session.gene == dock.session.genes[dock.session.genes.index("ERBB2") + 1]


def test_hover_shows_the_spot_in_um_and_measured_predicted_residual(qtbot, viewer, dock, run_dir):
    _ready(qtbot, dock, run_dir)
    session = dock.session
    gene, other = session.genes[1], session.genes[3]
    dock.set_gene(gene)
    i = 5
    spots, mpp = session.section.spots, session.section.mpp
    measured = session.gene_values(session.measured)[i]
    predicted = session.gene_values(session.predicted)[i]
    for name in ("C2 · predicted", "C2 · measured"):  # the same reading over either layer
        viewer.layers[name].visible = True  # napari reads nothing from a hidden layer
        status = viewer.layers[name].get_status((spots.y[i] * mpp, spots.x[i] * mpp), world=True)
        text = status["coordinates"]
        assert text.startswith(f"x {spots.x[i] * mpp:,.0f} µm, y {spots.y[i] * mpp:,.0f} µm")
        assert f"spot {spots.spot_id[i]} at x {spots.x[i] * mpp:,.0f} µm" in text
        meta = viewer.layers["C2 · predicted"].metadata["napari_dkan"]
        interval = meta.get("interval")  # the model's interval, when calibrated
        pm = "" if interval is None else (f" ({round(100 * meta['interval_level'])} % interval "
                                          f"{interval[i, 0]:.2f}–{interval[i, 1]:.2f})")
        assert (f"{gene}: measured {measured:.2f} · predicted {predicted:.2f}{pm} · "
                f"residual {predicted - measured:.2f}") in text
        assert other not in text  # not every feature column
        assert f"{i};" not in text and "[" not in text  # no point index, no bare pixel pair
    tooltip = viewer.layers["C2 · predicted"]._get_tooltip_text((spots.y[i] * mpp, spots.x[i] * mpp),
                                                               world=True)
    assert f"residual {predicted - measured:.2f}" in tooltip


def test_colorbar_and_panels_name_the_gene_quantity_and_scale(qtbot, viewer, dock, run_dir):
    from napari_dkan._widgets.canvas_text import layer_text
    from napari_dkan._widgets.colour_scales import QUANTITY, Z_RANGE, ColourScale
    from napari_dkan._widgets.layers import COLORBAR_TITLE, TITLE

    _ready(qtbot, dock, run_dir)
    session = dock.session
    predicted, measured = viewer.layers["C2 · predicted"], viewer.layers["C2 · measured"]
    dock.display.high.setValue(99.0)
    dock.set_gene("ERBB2")
    title = layer_text(predicted, COLORBAR_TITLE)
    assert title.splitlines() == ["ERBB2 (C2)", QUANTITY, "1–99 % stretch"]
    assert layer_text(measured, COLORBAR_TITLE) is None  # one colorbar for the shared scale
    assert layer_text(predicted, TITLE) == "ERBB2 · predicted"
    assert layer_text(measured, TITLE) == "ERBB2 · measured"
    assert "per-gene stretch" in dock.display.limits.text() and QUANTITY in dock.display.limits.text()
    # the title is drawn: the canvas's top right changes when it is hidden
    _fit_to_spots(viewer, session)
    _only(viewer, viewer.layers["C2 · slide"], predicted)
    with_title = _shot(viewer)
    predicted._overlays[COLORBAR_TITLE].visible = False
    without = _shot(viewer)
    predicted._overlays[COLORBAR_TITLE].visible = True
    h, w = with_title.shape[:2]
    assert _changed(with_title[: h // 3, w // 2:], without[: h // 3, w // 2:]) > 0.002

    # a fixed scale: the same limits for every gene, and it says so
    dock.display.set_scale(ColourScale.FIXED)
    limits = predicted.face_contrast_limits
    dock.set_gene(session.genes[0])
    assert predicted.face_contrast_limits == pytest.approx(limits) and limits[0] == 0.0
    assert "fixed for all genes" in layer_text(predicted, COLORBAR_TITLE)
    assert "fixed scale for all genes" in dock.display.limits.text()
    # z-scores: each source standardised over the section, coloured −2.5 to +2.5 SD
    dock.display.set_scale(ColourScale.Z_SCORE)
    shown = measured.features["_colour"].to_numpy()
    assert np.nanmean(shown) == pytest.approx(0.0, abs=1e-4) and np.nanstd(shown) == pytest.approx(1.0, abs=1e-3)
    assert predicted.face_contrast_limits == pytest.approx((-Z_RANGE, Z_RANGE))
    assert "z-score" in layer_text(predicted, COLORBAR_TITLE)
    dock.display.set_scale(ColourScale.PER_GENE)
    assert predicted.face_contrast_limits == pytest.approx(session.contrast_limits())
    assert "_colour" not in [c for c in dock.session.genes]


def test_the_search_box_and_the_map_never_disagree(qtbot, viewer, dock, run_dir):
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import Qt

    _ready(qtbot, dock, run_dir)
    dock.set_gene("ERBB2")
    picker = dock.genes
    predicted = viewer.layers["C2 · predicted"]
    assert "PTPRC" not in dock.session.genes
    picker.edit.clear()
    qtbot.keyClicks(picker.edit, "PTPRC")
    qtbot.keyClick(picker.edit, Qt.Key.Key_Return)
    assert picker.edit.text() == "ERBB2" == dock.session.gene  # the box went back to the map's gene
    assert predicted.metadata["napari_dkan"]["gene"] == "ERBB2"
    message = notification_manager.records[-1].message
    assert "PTPRC" in message and "still shows ERBB2" in message
    # leaving the box with an unknown name does the same
    picker.edit.setText("NOTAGENE")
    picker.edit.editingFinished.emit()
    assert picker.edit.text() == "ERBB2" == dock.session.gene


def test_one_click_flips_measured_and_predicted(qtbot, viewer, dock, run_dir):
    _ready(qtbot, dock, run_dir)
    predicted, measured = viewer.layers["C2 · predicted"], viewer.layers["C2 · measured"]
    predicted.visible = measured.visible = True
    dock.display.flip.click()
    assert predicted.visible and not measured.visible
    dock.display.flip.click()
    assert measured.visible and not predicted.visible
    assert measured.face_colorbar.visible and not predicted.face_colorbar.visible  # the shown one's
    dock.display.flip.click()
    measured.visible = True


def test_residual_and_side_by_side_grid(qtbot, viewer, dock, run_dir):
    _ready(qtbot, dock, run_dir)
    session = dock.session
    dock.display.residual.setChecked(True)
    residual = viewer.layers["C2 · residual"]
    assert residual.visible and residual.face_colormap.name == "PiYG"
    lo, hi = residual.face_contrast_limits
    assert lo == pytest.approx(-hi)
    assert np.allclose(residual.features[session.gene], session.residual(), equal_nan=True)
    dock.display.residual.setChecked(False)
    for layer in viewer.layers:
        layer.visible = layer.name != "C2 · residual"
    n_layers = len(viewer.layers)
    viewer.layers.selection.active = viewer.layers["C2 · predicted"]
    dock.display.grid.setChecked(True)  # the one click
    assert viewer.canvas.grid.enabled
    assert viewer.canvas.grid.actual_shape(viewer.layers) == (1, 2)
    from napari_dkan._widgets.canvas_text import layer_text
    from napari_dkan._widgets.layers import TITLE

    gene = session.gene
    assert layer_text(viewer.layers["C2 · predicted"], TITLE) == f"{gene} · predicted"  # each panel
    assert layer_text(viewer.layers["C2 · measured"], TITLE) == f"{gene} · measured"
    assert viewer.layers.selection.active is viewer.layers["C2 · predicted"]
    shot = _shot(viewer)
    half = shot.shape[1] // 2
    left, right = shot[:, :half], shot[:, half:]
    for panel in (left, right):
        assert (panel.std(axis=-1) > 20).mean() > 0.005, "a panel shows no coloured spots"
    dock.display.grid.setChecked(False)
    assert not viewer.canvas.grid.enabled and len(viewer.layers) == n_layers  # twins removed


def test_field_of_view_predicts_only_visible_spots(qtbot, viewer, dock, run_dir):
    from napari_dkan._widgets.scope import Scope, visible_box

    _ready(qtbot, dock, run_dir)
    session = dock.session
    spots, mpp = session.section.spots, session.section.mpp
    _fit_to_spots(viewer, session, zoom=2.5)
    camera = viewer.scene.camera
    camera.center = (float(np.percentile(spots.y, 30) * mpp), float(np.percentile(spots.x, 30) * mpp))
    _shot(viewer)  # draw once, so napari updates the layer's loaded region
    # what the canvas shows, worked out here from the camera and the canvas size
    half = np.array(viewer.canvas.size) / 2 / camera.zoom
    (r0, c0), (r1, c1) = (np.array(camera.center[-2:]) - half) / mpp, (np.array(camera.center[-2:]) + half) / mpp
    visible = np.flatnonzero((spots.y >= r0) & (spots.y <= r1) & (spots.x >= c0) & (spots.x <= c1))
    assert 0 < len(visible) < len(spots)
    dock.set_scope(Scope.FIELD_OF_VIEW)
    dock.predict()
    _wait(qtbot, dock)
    predicted = session.predicted
    assert np.array_equal(np.sort(predicted.spot_index), visible)
    layer = viewer.layers["C2 · predicted"]
    assert np.array_equal(np.flatnonzero(layer.shown), visible)  # the others are hidden
    # napari's loaded region (chunk-aligned, a superset of the view) holds every predicted spot
    image = viewer.layers["C2 · slide"]
    corners = image.corner_pixels * image.downsample_factors[image.data_level]
    assert (spots.y[visible] >= corners[0, 0] - 1).all() and (spots.y[visible] <= corners[1, 0] + 1).all()
    assert "Pearson r" in dock.scores.text() and f"over {len(visible)} spots" in dock.scores.text()
    # the predicted area is outlined, its spots ringed, and the dock and the panel say how many
    from napari_dkan._widgets.canvas_text import layer_text
    from napari_dkan._widgets.layers import TITLE

    area = viewer.layers["C2 · predicted area"]
    box = visible_box(viewer, image)
    (y0, x0), (y1, x1) = area.data[0].min(axis=0), area.data[0].max(axis=0)
    assert (x0, y0, x1, y1) == pytest.approx((box.x0, box.y0, box.x1, box.y1), rel=1e-6)
    assert area.scale[-1] == pytest.approx(image.scale[-1]) and area.face_color[0][3] == 0
    assert np.all(layer.border_width > 0)
    assert f"({len(visible)} of {len(spots)} spots)" in layer_text(layer, TITLE)
    assert f"{len(visible)} of {len(spots)} spots in the outlined field of view" in dock.status.text()
    dock.set_scope(Scope.ALL_SPOTS)
    dock.predict()
    _wait(qtbot, dock)
    assert "C2 · predicted area" not in [lyr.name for lyr in viewer.layers]  # all spots: no box
    assert np.all(layer.border_width == 0)


def test_cancel_stops_within_a_second_and_leaves_the_viewer_usable(qtbot, viewer, dock, run_dir,
                                                                    monkeypatch, tmp_path):
    from napari_dkan._widgets.cache import PredictionCache

    _ready(qtbot, dock, run_dir)
    before = dock.session.predicted
    n_layers = len(viewer.layers)
    # empty caches: the prediction must encode the slide's tiles, so there is work to cancel
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dock, "cache", PredictionCache(disk=False))
    asked: list[float] = []

    def cancel_during_features(step):
        if step.stage == "features" and not asked:
            asked.append(time.perf_counter())
            dock.cancel()

    worker = dock.predict()
    worker.yielded.connect(cancel_during_features)
    _wait(qtbot, dock)
    stopped = time.perf_counter()
    assert asked, "the prediction ended before it could be cancelled"
    assert stopped - asked[0] < 1.0
    assert "cancelled" in dock.status.text()
    assert dock.session.predicted is before and len(viewer.layers) == n_layers
    assert dock.predict_button.isEnabled() and not dock.cancel_button.isEnabled()
    # still usable: another gene, then a full prediction
    dock.set_gene(dock.session.genes[4])
    assert viewer.layers["C2 · predicted"].metadata["napari_dkan"]["gene"] == dock.session.genes[4]
    measured_features = viewer.layers["C2 · measured"].features
    dock.predict()
    _wait(qtbot, dock)
    assert dock.session.predicted is not before and len(dock.session.predicted) == dock.session.n_spots
    assert viewer.layers["C2 · measured"].features is measured_features  # not rebuilt for nothing


def test_export_from_the_dock_and_the_napari_writer(qtbot, viewer, dock, run_dir, tmp_path):
    import anndata
    import napari
    import pandas as pd
    from napari.utils.notifications import notification_manager

    _ready(qtbot, dock, run_dir)
    session = dock.session
    path = dock.export(tmp_path / "c2.h5ad")
    assert str(path) in notification_manager.records[-1].message  # the user is told where
    adata = anndata.read_h5ad(path)
    assert adata.n_obs == session.n_spots and list(adata.var_names) == list(session.genes)
    assert np.allclose(adata.X, session.predicted.values)
    assert "measured" in adata.layers and adata.uns["napari_dkan"]["section"] == "C2"
    written = napari.save_layers(str(tmp_path / "layer.csv"), [viewer.layers["C2 · predicted"]],
                                 plugin="napari-dkan")
    assert written and str(tmp_path / "layer.csv") in notification_manager.records[-1].message
    frame = pd.read_csv(written[0], index_col=0)
    assert len(frame) == session.n_spots and list(frame.columns[2:]) == list(session.genes)


def test_a_slide_without_spots_is_predicted_on_a_tissue_lattice(qtbot, viewer, dock, run_dir, wsi_dir):
    """Near the end of the module: it moves the dock to another slide."""
    from napari_dkan.io.lattice import lattice_spots
    from napari_dkan.io.slides import open_slide

    _ready(qtbot, dock, run_dir)
    path = wsi_dir / "CMU-1-Small-Region.svs"
    viewer.open(str(path), plugin="napari-dkan")
    qtbot.waitUntil(lambda: dock.slide.count() == 2, timeout=WAIT_MS)
    dock.slide.setCurrentIndex(1)  # as the user picks it in the dock
    assert dock.session.section.name == path.stem and dock.session.source.section is None
    _wait(qtbot, dock)  # the model readies the new section: its lattice, no measured values
    assert dock.session.measured is None
    dock.predict()
    _wait(qtbot, dock)
    with open_slide(path) as slide:
        expected = lattice_spots(slide)
    predicted = dock.session.predicted
    assert len(predicted) == len(expected) > 20
    layer = viewer.layers[f"{path.stem} · predicted"]
    # Visium-like 55 µm spots on the slide's own µm scale
    assert layer.size[0] * layer.scale[-1] == pytest.approx(55.0)
    assert np.allclose(layer.data, np.column_stack([expected.y, expected.x]))
    assert f"{path.stem} · measured" not in [lyr.name for lyr in viewer.layers]
    assert "Pearson r and MAE appear" in dock.scores.text()


def test_the_bundled_model_is_offered_and_loaded_when_present(qtbot, run_dir, monkeypatch):
    import napari

    from napari_dkan import bundled

    monkeypatch.setattr(bundled, "default_model_path", lambda: run_dir)
    other = napari.Viewer(show=False)
    try:
        _, dock = other.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
        assert dock.models.model.currentText() == f"bundled: {run_dir.name}"
        _wait(qtbot, dock)
        assert dock.model is not None and "12 genes" in dock.models.info.text()
    finally:
        other.close()


def test_closing_the_viewer_during_a_prediction_cancels_it_quietly(qtbot, run_dir, her2st,
                                                                   monkeypatch, tmp_path, capfd):
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_dkan import bundled
    from napari_dkan._widgets.cache import PredictionCache

    monkeypatch.setattr(bundled, "default_model_path", lambda: None)
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path / "cache"))  # tiles must be encoded
    other = napari.Viewer(show=True)
    _, dock = other.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    other.open(str(her2st / "ST-imgs" / "C" / "C2"), plugin="napari-dkan")
    QApplication.processEvents()
    dock.choose_model(str(run_dir))
    _wait(qtbot, dock)
    dock.cache = PredictionCache(disk=False)
    worker = dock.predict()
    stages: list[str] = []
    worker.yielded.connect(lambda step: stages.append(step.stage))
    qtbot.waitUntil(lambda: "features" in stages, timeout=WAIT_MS)
    runner = dock.runner
    capfd.readouterr()
    other.close()
    qtbot.waitUntil(lambda: runner.worker is None, timeout=5_000)  # cancelled, not run to the end
    qtbot.wait(200)  # let late signals arrive (one event-loop wait, not a processEvents loop)
    err = capfd.readouterr().err
    assert runner.closed and runner.cancel_event.is_set()
    assert "already deleted" not in err and "Signal source has been deleted" not in err, err
    import gc

    qtbot.waitUntil(lambda: gc.get_freeze_count() == 0, timeout=5_000)  # the job's heap freeze is undone
