"""The training dock in a real viewer (Xvfb): fine-tune a tiny model on HER2ST C2, validated on C3.

Through the docks as a user drives them: the section the viewer shows prefills the form, the
run ends with the progress bar full and both curves drawn, the new model is offered by the
prediction dock at once and predicting with it recolours the layers.  Cancel from the dock
keeps the best checkpoint so far.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def base_run(tiny_run_dir):
    return tiny_run_dir


@pytest.fixture(scope="module")
def docks(viewer, her2st, tmp_path_factory):
    from napari_dkan import bundled
    from napari_dkan._widgets.recent_models import RecentModels
    from napari_dkan._widgets.training_dock import TrainingDock

    viewer.open(str(her2st / "ST-imgs" / "C" / "C2"), plugin="napari-dkan")
    with pytest.MonkeyPatch.context() as mp:  # no bundled model loading in the background
        mp.setattr(bundled, "default_model_path", lambda: None)
        _, predict = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    # through the manifest, as the Plugins menu does; then one with a private registry and runs
    # folder, so the tests neither see nor leave models of other sessions
    _, listed = viewer.window.add_plugin_dock_widget("napari-dkan", "Fine-tune a model")
    assert isinstance(listed, TrainingDock)
    registry = RecentModels()
    registry.added.connect(predict._offer_model)
    train = TrainingDock(viewer, registry=registry, runs_root=tmp_path_factory.mktemp("dock-runs"))
    viewer.window.add_dock_widget(train, name="training (test)")
    return predict, train


def _wait(qtbot, dock):
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)


def _fill(qtbot, dock, base_run, out, epochs):
    from napari_dkan._widgets.training_plan import BaseChoice

    _wait(qtbot, dock)  # devices, presets and the prefilled dataset's sections have arrived
    form = dock.form
    form.choose(form.validation, "C3")
    form.set_base(BaseChoice.RUN, str(base_run))
    _wait(qtbot, dock)
    form.epochs.setValue(epochs)
    form.batch_size.setValue(32)
    form.device.setCurrentText("cpu")
    form.output.edit.setText(str(out))


def test_the_form_starts_from_the_section_the_viewer_shows(qtbot, docks, her2st):
    _, train = docks
    _wait(qtbot, train)
    assert train.form.dataset.text == str(her2st)
    assert train.form.section.currentData() == "C2"
    offered = {train.form.validation.itemData(i) for i in range(train.form.validation.count())}
    assert {None, "C3", "C4"} <= offered  # a spatial block of C2, or another section


def test_both_docks_are_tabs_with_the_whole_height_nothing_clipped(qtbot, viewer, docks):
    from qtpy.QtCore import QPoint
    from qtpy.QtWidgets import QApplication, QDockWidget, QScrollArea

    from napari_dkan._widgets.dock_layout import _dock_of

    predict, _ = docks
    QApplication.processEvents()
    window = viewer.window._qt_window
    listed = [d for d in window.findChildren(QDockWidget)
              if d.windowTitle().startswith("Fine-tune a model")]
    assert listed
    predict_dock = _dock_of(predict)
    assert listed[0] in window.tabifiedDockWidgets(predict_dock)  # a tab, not squeezed below
    # at the default window size the prediction dock's last buttons are reachable, not clipped
    viewer.window.resize(1200, 800)
    predict_dock.raise_()
    QApplication.processEvents()
    scroll = predict.findChild(QScrollArea)
    button = predict.display.grid
    scroll.ensureWidgetVisible(button)
    QApplication.processEvents()
    right = button.mapTo(scroll.viewport(), QPoint(button.width(), button.height()))
    assert 0 < right.x() <= scroll.viewport().width() and 0 < right.y() <= scroll.viewport().height()
    # nor cut at the right: every button of the dock lies within its width
    from qtpy.QtWidgets import QAbstractButton

    for b in predict.findChildren(QAbstractButton):
        if b.isVisibleTo(predict):
            edge = b.mapTo(scroll.viewport(), QPoint(b.width(), 0)).x()
            assert edge <= scroll.viewport().width() + 1, (b.text(), edge, scroll.viewport().width())
    assert predict_dock.height() > 400
    viewer.window.resize(1400, 900)


def test_trainable_sections_come_first_and_the_others_are_greyed(qtbot, docks):
    _, train = docks
    _wait(qtbot, train)
    combo = train.form.section
    model = combo.model()
    enabled = [model.item(i).isEnabled() for i in range(combo.count())]
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert enabled[0] and "no image" not in labels[0]
    first_disabled = enabled.index(False)
    assert all(enabled[:first_disabled]) and not any(enabled[first_disabled:])
    assert all("no image" in t for t in labels[first_disabled:])
    assert "no image" in model.item(first_disabled).toolTip()


def test_curves_in_the_dark_with_whole_epochs_and_an_honest_scale(qtbot):
    from matplotlib.colors import to_hex

    from napari_dkan._widgets.curves import MIN_PCC_SPAN, PlotTheme, TrainingCurves
    from napari_dkan._widgets.training_dock import format_duration, gain_text
    from napari_dkan._widgets.training_run import EpochRecord

    curves = TrainingCurves(theme=PlotTheme.of_napari("dark"))
    qtbot.addWidget(curves)
    curves.clear(planned_epochs=1)
    curves.set_base(0.300)
    curves.add_epoch(EpochRecord(1, 0.8, 0.308, 0.308, 1))
    curves.canvas.draw()
    ticks = [t for t in curves.pcc_axes.get_xticks() if 0.5 <= t <= 1.5]
    assert ticks == [1.0]  # not 0.945 … 1.050
    lo, hi = curves.pcc_limits()
    assert hi - lo >= MIN_PCC_SPAN - 1e-9  # +0.008 over the base looks small
    assert lo < 0.300 and hi > 0.308  # the base line and the point both in view
    background = to_hex(curves.figure.get_facecolor())
    assert sum(int(background[i:i + 2], 16) for i in (1, 3, 5)) < 3 * 80  # dark, like napari
    labels = [t.get_text() for t in curves.legend.get_texts() if t.get_visible()]
    assert labels == ["fine-tuned", "best (kept)", "base model"]
    assert all(t.get_fontsize() >= 7 for t in curves.legend.get_texts())
    assert "+0.008" in gain_text(0.308, 0.300) and "small" in gain_text(0.308, 0.300)
    assert format_duration(200) == "3 min" and format_duration(12) == "10 s"


def test_fine_tune_two_epochs_through_the_dock(qtbot, docks, base_run, tmp_path):
    from napari_dkan.engine.runs import TrainedModel

    predict, train = docks
    out = tmp_path / "c2-fine-tuned"
    _fill(qtbot, train, base_run, out, epochs=2)
    assert train.train() is not None
    _wait(qtbot, train)

    outcome = train.outcome
    assert outcome is not None and outcome.status == "finished" and outcome.epochs_run == 2
    assert train.progress.maximum() > 0 and train.progress.value() == train.progress.maximum()
    assert [r.epoch for r in train.history] == [1, 2]
    # the curves hold what was drawn: two losses, two validation PCCs, the base model's line
    assert list(train.curves.loss_line.get_xdata()) == [1, 2]
    assert np.all(np.isfinite(train.curves.loss_line.get_ydata()))
    assert np.all(np.isfinite(train.curves.pcc_line.get_ydata()))
    assert train.curves.base_line.get_visible()
    assert str(out) in train.result.text()
    assert "best agreement on held-out spots" in train.estimate.text()

    model = TrainedModel.load(out)  # written and loadable as it is
    base = TrainedModel.load(base_run)
    assert model.panel == base.panel and model.config["fine_tuned_from"] == str(base.run_dir)
    assert (out / "model.safetensors").is_file()

    # offered by the prediction dock at once; predicting with it recolours the layers
    combo = predict.models.model
    paths = [combo.itemData(i) for i in range(combo.count())]
    assert str(out.resolve()) in paths
    predict.choose_model(str(out.resolve()))
    _wait(qtbot, predict)
    assert predict.model is not None and str(predict.model.run_dir) == str(out.resolve())
    from napari_dkan._widgets.scope import Scope

    predict.set_scope(Scope.ALL_SPOTS)
    assert predict.predict() is not None
    _wait(qtbot, predict)
    gene = predict.session.genes[0]
    predict.set_gene(gene)
    layer = predict.builder.layer("predicted")
    expected = model.predict(model.section_data(predict.session.section, with_targets=False), device="cpu")
    column = np.asarray(layer.features[gene], dtype=float)
    order = np.argsort(layer.features["spot_id"].to_numpy()) if "spot_id" in layer.features else slice(None)
    assert column.shape[0] == expected.shape[0]
    expected = np.maximum(expected, 0.0)  # shown at the floor of log10(1 + x): not detected
    np.testing.assert_allclose(np.sort(column[order]), np.sort(expected[:, 0]), rtol=1e-4, atol=1e-5)


def test_input_problems_are_shown_in_the_dock_before_anything_runs(qtbot, docks, base_run, tmp_path):
    _, train = docks
    _fill(qtbot, train, base_run, tmp_path / "new", epochs=2)
    train.form.choose(train.form.validation, "C2")  # the training section again
    assert train.check() is not None
    _wait(qtbot, train)
    assert train.problems.isVisible() or train.problems.text()
    assert "validation section must differ" in train.problems.text()
    assert not (tmp_path / "new" / "model.safetensors").exists()


def test_cancel_from_the_dock_keeps_the_best_checkpoint(qtbot, docks, base_run, tmp_path):
    from napari_dkan.engine.runs import TrainedModel

    _, train = docks
    out = tmp_path / "cancelled"
    _fill(qtbot, train, base_run, out, epochs=200)
    assert train.train() is not None
    qtbot.waitUntil(lambda: len(train.history) >= 1, timeout=WAIT_MS)
    train.cancel()
    _wait(qtbot, train)
    outcome = train.outcome
    assert outcome is not None and outcome.status == "cancelled"
    assert 1 <= outcome.epochs_run < 200 and outcome.best_epoch is not None
    model = TrainedModel.load(out)
    assert model.config["status"] == "cancelled"
    assert "cancelled" in train.status.text()
