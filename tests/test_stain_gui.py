"""The prediction dock's stain-normalisation checkbox: offered only with the model's reference."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_stain_checkbox_is_greyed_and_explained_without_a_reference(tmp_path):
    from qtpy.QtWidgets import QApplication

    from napari_dkan._widgets.controls import ModelChooser
    from napari_dkan.features.stain import StainReference, TissueStats

    app = QApplication.instance() or QApplication([])  # noqa: F841 - widgets need one
    chooser = ModelChooser()
    assert not chooser.stain.isEnabled() and "choose a model" in chooser.stain.toolTip()
    chooser.show_stain_reference(tmp_path)
    assert not chooser.stain.isEnabled() and "no stain reference" in chooser.stain.toolTip()
    StainReference(TissueStats((70.0, 12.0, -10.0), (15.0, 5.0, 7.0), 1000), ("C3",)).save(tmp_path)
    chooser.show_stain_reference(tmp_path)
    assert chooser.stain.isEnabled() and not chooser.stain.isChecked()  # off by default
    assert "another lab, scanner or patient" in chooser.stain.toolTip()
    chooser.stain.setChecked(True)
    chooser.show_stain_reference(tmp_path / "elsewhere")  # a model without one: unchecked again
    assert not chooser.stain.isChecked()


def test_dock_predicts_with_the_slide_matched_to_the_training_staining(
        qtbot, viewer, her2st, her2st_dataset, tiny_run_dir, one_torch_thread, tmp_path):
    import shutil

    from napari_dkan.features.stain import STAIN_FILE, write_reference
    from plugin_support import prediction_dock

    plain, with_ref = tmp_path / "plain", tmp_path / "with-ref"
    for run in (plain, with_ref):
        shutil.copytree(tiny_run_dir, run)
        (run / STAIN_FILE).unlink(missing_ok=True)
    ref = write_reference(with_ref, [her2st_dataset["C3"]])
    dock = prediction_dock(viewer, her2st / "ST-imgs" / "C" / "C3")
    stain = dock.models.stain

    def use(run, checked: bool) -> None:
        dock.choose_model(str(run))
        qtbot.waitUntil(lambda: not dock.busy, timeout=120_000)
        if checked:
            stain.setChecked(True)
        assert dock.predict() is not None
        qtbot.waitUntil(lambda: not dock.busy, timeout=120_000)

    use(plain, checked=False)
    assert not stain.isEnabled() and "no stain reference" in stain.toolTip()
    assert dock.model.stain is None
    assert dock.session.to_anndata().uns["napari_dkan"]["stain_normalised"] is False
    use(with_ref, checked=True)
    assert stain.isEnabled() and dock.model.stain == ref
    assert dock.session.to_anndata().uns["napari_dkan"]["stain_normalised"] is True
    # the status line says the slide's staining was matched, and that a toggle needs a new Predict
    from napari_dkan._widgets.dock import STAIN_MATCHED

    summary = dock.status.text()
    assert STAIN_MATCHED in summary
    stain.setChecked(False)
    assert "press Predict" in dock.status.text() and STAIN_MATCHED not in dock.status.text()
    stain.setChecked(True)  # back as predicted: the prediction's own summary again
    assert dock.status.text() == summary
    stain.setChecked(False)
    assert dock.predict() is not None
    qtbot.waitUntil(lambda: not dock.busy, timeout=120_000)
    assert STAIN_MATCHED not in dock.status.text() and "press Predict" not in dock.status.text()
    assert dock.session.to_anndata().uns["napari_dkan"]["stain_normalised"] is False
