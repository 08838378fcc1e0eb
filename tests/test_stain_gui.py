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
