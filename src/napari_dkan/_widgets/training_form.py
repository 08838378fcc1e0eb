"""The training dock's inputs: data, base model, gene panel, advanced settings, output folder.

Plain Qt widgets that build a :class:`~napari_dkan._widgets.training_plan.TrainingRequest`;
they know nothing about napari or the engine.  The dock fills in what needs the engine (the
devices and presets, the sections of a dataset) and reacts to :attr:`TrainingForm.data_changed`
and :attr:`TrainingForm.base_changed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_dkan._widgets.training_plan import (
    FINE_TUNE_LR_FACTOR,
    FINE_TUNE_MAX_EPOCHS,
    BaseChoice,
    PanelChoice,
    SettingDefaults,
    TrainingRequest,
)
from napari_dkan._widgets.training_run import SectionInfo
from napari_dkan.features.registry import DEFAULT_ENCODER, list_encoders

SPATIAL_BLOCK = "a spatial block of the training section (20 % of its spots)"


class PathField(QWidget):
    """A line edit with Browse buttons (a folder, a file, or both)."""

    def __init__(self, placeholder: str, tip: str, folder: str | None = None, file: str | None = None) -> None:
        super().__init__()
        self.edit = QLineEdit(placeholderText=placeholder, toolTip=tip)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        if folder is not None:
            button = QPushButton("Folder…" if file is not None else "Browse…")
            button.clicked.connect(lambda: self._pick(QFileDialog.getExistingDirectory(self, folder)))
            row.addWidget(button)
        if file is not None:
            button = QPushButton("File…" if folder is not None else "Browse…")
            button.clicked.connect(lambda: self._pick(QFileDialog.getOpenFileName(self, file)[0]))
            row.addWidget(button)

    def _pick(self, path: str) -> None:
        if path:
            self.edit.setText(path)
            self.edit.editingFinished.emit()

    @property
    def text(self) -> str:
        return self.edit.text().strip()


class TrainingForm(QWidget):
    data_changed = Signal()  # dataset path or image: the dock reads the sections again
    base_changed = Signal()  # base model or preset: the dock resets the advanced defaults

    def __init__(self, bundled: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.dataset = PathField("a Visium folder, a HER2ST-style root or an .h5ad",
                                 "the sample to train on: a Space Ranger output folder, a legacy-ST "
                                 "root (ST-cnts/, ST-spotfiles/, ST-imgs/) or an AnnData .h5ad",
                                 folder="Choose a dataset folder", file="Choose an .h5ad file")
        self.image = PathField("full-resolution image (Visium, .h5ad)",
                               "the full-resolution H&E image the spots were aligned to; Space "
                               "Ranger does not copy it into its output folder", file="Choose the image")
        self.section = QComboBox(toolTip="the section to train on (it needs counts and an image)")
        self.base = QComboBox(toolTip="fine-tune a trained model on this sample, or train a new one")
        for choice in BaseChoice:
            if choice is not BaseChoice.BUNDLED or bundled:
                self.base.addItem(choice.value, choice.value)  # Qt hands enums back as plain str
        self.base_run = PathField("a trained run's folder", "the run directory of the model to "
                                  "fine-tune (its config.json and model.safetensors)",
                                  folder="Choose a trained run")
        self.preset = QComboBox(toolTip="network size: compact suits a CPU; her2st, skin and stnet "
                                "are the paper's (GPU); tiny is for quick trials")
        self.preset.addItem("compact")
        self.encoder = QComboBox(editable=True, toolTip="frozen image encoder (NAME or NAME@weights "
                                 "file); " + "; ".join(f"{k}: {v}" for k, v in list_encoders().items()))
        self.encoder.addItems([n for n in list_encoders() if ":" not in n])
        self.encoder.setCurrentText(DEFAULT_ENCODER)
        self.panel_base = QRadioButton(str(PanelChoice.BASE), checked=True,
                                       toolTip="fine-tuning keeps the base model's genes; the sample must measure them all")
        self.panel_top = QRadioButton(str(PanelChoice.TOP),
                                      toolTip="the N genes with the highest mean count in the training section")
        self._panels = QButtonGroup(self)
        for b in (self.panel_base, self.panel_top):
            self._panels.addButton(b)
        self.panel_size = QSpinBox(minimum=1, maximum=5000, value=250, suffix=" genes",
                                   toolTip="N of the top-N panel (the paper uses 250)")
        self._build_advanced()
        self.output = PathField("a new folder for the trained model",
                                "where the run is written (config.json, model.safetensors, "
                                "checkpoints); an earlier run's folder resumes that run",
                                folder="Choose the output folder")
        self._suggested: str | None = None
        self._layout()
        for combo in self.findChildren(QComboBox):
            # long entries (paths, the spatial-block wording) must not widen the dock
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        self.base.currentIndexChanged.connect(lambda _: self._base_toggled())
        self.preset.currentTextChanged.connect(lambda _: self.base_changed.emit())
        self.base_run.edit.editingFinished.connect(self.base_changed.emit)
        self.dataset.edit.editingFinished.connect(self.data_changed.emit)
        self.image.edit.editingFinished.connect(self.data_changed.emit)
        self.panel_top.toggled.connect(self.panel_size.setEnabled)
        self.advanced_toggle.toggled.connect(self._advanced_toggled)
        self._base_toggled()

    def _build_advanced(self) -> None:
        self.advanced_toggle = QToolButton(text="Advanced", checkable=True,
                                           toolTip="epochs, learning rate, batch size, validation, device")
        self.advanced_toggle.setArrowType(_arrow(False))
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced = QWidget()
        self.epochs = QSpinBox(minimum=1, maximum=10_000, value=100, toolTip=(
            "passes over the training spots; the best epoch by agreement on the held-out spots "
            "(validation PCC) is kept. Default: "
            f"the preset's from scratch; the base run's, at most {FINE_TUNE_MAX_EPOCHS}, when fine-tuning"))
        self.lr = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1.0, singleStep=1e-4, value=5e-4,
                                 toolTip=("Adam learning rate. Default: the preset's from scratch; "
                                          f"{FINE_TUNE_LR_FACTOR:g} × the base run's when fine-tuning, "
                                          "so the pretrained weights are adjusted, not overwritten"))
        self.batch_size = QSpinBox(minimum=1, maximum=4096, value=64, toolTip=(
            "spots per step; smaller uses less memory, larger is faster on a GPU"))
        self.validation = QComboBox(toolTip=(
            "the spots that select the checkpoint: another section, or a spatial block of the "
            "training section (a contiguous band, so validation spots are not the smoothed "
            "neighbours of training spots)"))
        self.validation.addItem(SPATIAL_BLOCK, None)
        self.device = QComboBox(toolTip="only devices that work on this machine are listed")
        self.device.addItems(["auto", "cpu"])
        form = QFormLayout(self.advanced)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("epochs", self.epochs)
        form.addRow("learning rate", self.lr)
        form.addRow("batch size", self.batch_size)
        form.addRow("validation", self.validation)
        form.addRow("device", self.device)
        self.advanced.setVisible(False)

    def _layout(self) -> None:
        data = QGroupBox("Data")
        form = QFormLayout(data)
        form.addRow("dataset", self.dataset)
        form.addRow("image", self.image)
        form.addRow("section", self.section)
        model = QGroupBox("Base model")
        form = QFormLayout(model)
        form.addRow("start from", self.base)
        form.addRow("run", self.base_run)
        form.addRow("preset", self.preset)
        form.addRow("image model", self.encoder)
        self._model_form = form
        panel = QGroupBox("Gene panel")
        rows = QVBoxLayout(panel)
        rows.addWidget(self.panel_base)
        top = QHBoxLayout()
        top.addWidget(self.panel_top)
        top.addWidget(self.panel_size)
        rows.addLayout(top)
        out = QGroupBox("Output")
        QVBoxLayout(out).addWidget(self.output)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (data, model, panel, self.advanced_toggle, self.advanced, out):
            layout.addWidget(w)

    # -- state -----------------------------------------------------------------------------------
    @property
    def base_choice(self) -> BaseChoice:
        return BaseChoice(self.base.currentData())

    def _base_toggled(self) -> None:
        choice = self.base_choice
        for widget, shown in ((self.base_run, choice is BaseChoice.RUN),
                              (self.preset, choice is BaseChoice.SCRATCH),
                              (self.encoder, choice is BaseChoice.SCRATCH)):
            widget.setVisible(shown)
            self._model_form.labelForField(widget).setVisible(shown)
        # from scratch there is no base panel; fine-tuning normally keeps it
        self.panel_base.setEnabled(choice is not BaseChoice.SCRATCH)
        (self.panel_top if choice is BaseChoice.SCRATCH else self.panel_base).setChecked(True)
        self.panel_size.setEnabled(self.panel_top.isChecked())
        self.base_changed.emit()

    def _advanced_toggled(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(_arrow(shown))

    def set_base(self, choice: BaseChoice, run: str | None = None) -> None:
        if run is not None:
            self.base_run.edit.setText(run)
        self.base.setCurrentIndex(self.base.findData(choice.value))
        self.base_changed.emit()

    def set_presets(self, names: Sequence[str]) -> None:
        current = self.preset.currentText()
        self.preset.blockSignals(True)
        self.preset.clear()
        self.preset.addItems(list(names))
        self.preset.setCurrentText(current if current in names else "compact")
        self.preset.blockSignals(False)

    def set_devices(self, names: Sequence[str]) -> None:
        current = self.device.currentText()
        self.device.clear()
        self.device.addItems(list(names))
        self.device.setCurrentText(current if current in names else "auto")

    def set_sections(self, sections: Sequence[SectionInfo]) -> None:
        """Train on any section with counts; validate on another one, or on a spatial block."""
        keep, keep_val = self.section.currentData(), self.validation.currentData()
        self.section.clear()
        self.validation.clear()
        self.validation.addItem(SPATIAL_BLOCK, None)
        # trainable sections first; the others listed after them, greyed out, saying why not
        usable = [i for i in sections if i.has_counts and i.has_image]
        unusable = [i for i in sections if i.has_counts and not i.has_image]
        for combo in (self.section, self.validation):
            for info in usable:
                combo.addItem(info.label, info.name)
            for info in unusable:
                combo.addItem(info.label, info.name)
                _disable_last(combo, "no image of this section: the model learns from the tissue "
                              "image, so it can neither train nor validate on it")
        for combo, value in ((self.section, keep), (self.validation, keep_val)):
            index = combo.findData(value)
            if index >= 0:
                combo.setCurrentIndex(index)

    def choose(self, combo: QComboBox, name: str | None) -> None:
        """Select the entry of a section combo holding ``name`` (raises when absent)."""
        index = combo.findData(name)
        if index < 0:
            raise ValueError(f"{name!r} is not offered")
        combo.setCurrentIndex(index)

    def apply_defaults(self, defaults: SettingDefaults) -> None:
        self.epochs.setValue(defaults.epochs)
        self.lr.setValue(defaults.lr)
        self.batch_size.setValue(defaults.batch_size)

    def request(self) -> TrainingRequest:
        choice = self.base_choice
        return TrainingRequest(
            dataset=self.dataset.text, output=self.output.text,
            section=self.section.currentData(), image=self.image.text or None,
            validation=self.validation.currentData(), base=choice,
            base_run=(self.base_run.text or None) if choice is BaseChoice.RUN else None,
            preset=self.preset.currentText(), encoder=self.encoder.currentText().strip() or DEFAULT_ENCODER,
            panel=PanelChoice.BASE if self.panel_base.isChecked() else PanelChoice.TOP,
            panel_size=self.panel_size.value(), epochs=self.epochs.value(), lr=self.lr.value(),
            batch_size=self.batch_size.value(), device=self.device.currentText() or "auto")

    def suggest_output(self, root: Path) -> None:
        """A fresh folder under ``root`` named after the section, unless the user chose one."""
        if self.output.text and self.output.text != self._suggested:
            return
        name = f"{self.section.currentData() or 'model'}-" + (
            "fine-tuned" if self.base_choice is not BaseChoice.SCRATCH else self.preset.currentText())
        path, k = root / name, 2
        while path.exists():
            path, k = root / f"{name}-{k}", k + 1
        self._suggested = str(path)
        self.output.edit.setText(self._suggested)


def _disable_last(combo: QComboBox, why: str) -> None:
    """Grey out the combo's last entry (it stays listed, with ``why`` as its tooltip)."""
    from qtpy.QtGui import QStandardItemModel

    model = combo.model()
    if isinstance(model, QStandardItemModel):
        item = model.item(combo.count() - 1)
        item.setEnabled(False)
        item.setToolTip(why)


def _arrow(open_: bool) -> Qt.ArrowType:
    return Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow
