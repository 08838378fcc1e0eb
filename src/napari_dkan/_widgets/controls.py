"""Small Qt pieces of the prediction dock: gene picker, display settings, model and device.

Each is a plain widget with signals; none knows about napari, the session or the engine.  The
dock wires them (see :mod:`napari_dkan._widgets.dock`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qtpy.QtCore import QStringListModel, Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_dkan._widgets.colour_scales import QUANTITY, QUANTITY_WORDS, ColourScale, describe_scale
from napari_dkan._widgets.session import COLORMAPS, Display


class GenePicker(QWidget):
    """Type-to-search over the panel: a line edit whose completer matches anywhere in a name."""

    gene_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("type a gene, e.g. ERBB2")
        self.edit.setClearButtonEnabled(True)
        self._model = QStringListModel([])
        self.completer = QCompleter(self._model, self)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.completer.setMaxVisibleItems(12)
        self.edit.setCompleter(self.completer)
        self.previous = QToolButton(text="◀", toolTip="previous gene in the panel")
        self.next = QToolButton(text="▶", toolTip="next gene in the panel")
        self.count = QLabel("no genes")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for w in (self.edit, self.previous, self.next, self.count):
            row.addWidget(w)
        self.completer.activated[str].connect(self.gene_chosen.emit)
        # Return or leaving the box: what it says is asked for; the dock puts it back to the
        # gene the map shows when that is not a panel gene, so box and map never disagree
        self.edit.editingFinished.connect(self._finished)
        self.previous.clicked.connect(lambda: self._step(-1))
        self.next.clicked.connect(lambda: self._step(1))
        self._genes: list[str] = []

    def set_genes(self, genes: Sequence[str]) -> None:
        self._genes = list(genes)
        self._model.setStringList(self._genes)
        self.count.setText(f"{len(self._genes)} genes")

    def set_current(self, gene: str) -> None:
        """Show ``gene`` (the gene the map shows)."""
        self._current = gene
        if self.edit.text() != gene:
            self.edit.setText(gene)

    def _finished(self) -> None:
        text = self.edit.text().strip()
        if text and text != getattr(self, "_current", None):
            self.gene_chosen.emit(text)
        elif not text:
            self.set_current(getattr(self, "_current", "") or "")

    def _step(self, delta: int) -> None:
        if not self._genes:
            return
        current = self.edit.text()
        i = self._genes.index(current) if current in self._genes else -delta
        self.gene_chosen.emit(self._genes[(i + delta) % len(self._genes)])


class DisplayControls(QWidget):
    """Colour scale, colormap, percentiles, residual layer, side-by-side view and the
    measured ↔ predicted flip; a line says what the colours show."""

    display_changed = Signal(object)  # Display
    residual_toggled = Signal(bool)
    grid_toggled = Signal(bool)
    flip_clicked = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        default = Display()
        self.scale = QComboBox(toolTip="how values become colours")
        for scale in ColourScale:
            self.scale.addItem(str(scale), scale.value)
            self.scale.setItemData(self.scale.count() - 1, scale.tooltip, Qt.ItemDataRole.ToolTipRole)
        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.setCurrentText(default.colormap)
        self.low = QDoubleSpinBox(decimals=1, minimum=0.0, maximum=99.9, singleStep=0.5,
                                  value=default.low_percentile, suffix=" %")
        self.high = QDoubleSpinBox(decimals=1, minimum=0.1, maximum=100.0, singleStep=0.5,
                                   value=default.high_percentile, suffix=" %")
        self.limits = QLabel("", toolTip=QUANTITY_WORDS)
        self.limits.setWordWrap(True)
        self.residual = QCheckBox("residual layer (predicted − measured)")
        self.grid = QPushButton("Side by side", checkable=True,
                                toolTip="measured and predicted in two panels (napari grid)")
        self.flip = QPushButton("Measured ⇄ predicted",
                                toolTip="show the other one of measured and predicted in place "
                                        "(one click back and forth)")
        percentiles = QHBoxLayout()
        percentiles.addWidget(self.low)
        percentiles.addWidget(QLabel("to"))
        percentiles.addWidget(self.high)
        buttons = QHBoxLayout()
        buttons.addWidget(self.flip)
        buttons.addWidget(self.grid)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("scale", self.scale)
        form.addRow("colormap", self.colormap)
        form.addRow("percentiles", percentiles)
        form.addRow("colours", self.limits)
        form.addRow(self.residual)
        form.addRow(buttons)
        self.scale.currentIndexChanged.connect(self._emit)
        self.colormap.currentTextChanged.connect(self._emit)
        self.low.valueChanged.connect(self._emit)
        self.high.valueChanged.connect(self._emit)
        self.residual.toggled.connect(self.residual_toggled.emit)
        self.grid.toggled.connect(self.grid_toggled.emit)
        self.flip.clicked.connect(self.flip_clicked.emit)
        self._scale_changed()

    @property
    def colour_scale(self) -> ColourScale:
        return ColourScale(self.scale.currentData())

    def set_scale(self, scale: ColourScale) -> None:
        self.scale.setCurrentIndex(self.scale.findData(scale.value))

    def _scale_changed(self) -> None:
        scale = self.colour_scale
        self.scale.setToolTip(scale.tooltip)
        self.low.setEnabled(scale is ColourScale.PER_GENE)
        self.high.setEnabled(scale is not ColourScale.Z_SCORE)

    def _emit(self, *_: object) -> None:
        self._scale_changed()
        if self.low.value() >= self.high.value():
            return  # mid-edit; the user is still typing the other bound
        self.display_changed.emit(Display(self.colormap.currentText(), self.low.value(),
                                          self.high.value(), self.colour_scale))

    def show_limits(self, limits: tuple[float, float], gene: str = "") -> None:
        """Say what the colours span, in what quantity, on which scale."""
        scale = self.colour_scale
        unit = "SD from the section mean" if scale is ColourScale.Z_SCORE else QUANTITY
        self.limits.setText(f"{limits[0]:.3g} to {limits[1]:.3g} {unit}\n"
                            f"{describe_scale(scale, self.low.value(), self.high.value())}")


class ModelChooser(QWidget):
    """A model (bundled default, recent, or a run directory / checkpoint) and a device."""

    model_chosen = Signal(str)  # a path
    device_chosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = QComboBox(editable=True, toolTip="a run directory, or its config.json / "
                               "model.safetensors; type a path and press Enter")
        self.model.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        # a long run path must not widen the dock
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(12)
        self.model.lineEdit().setPlaceholderText("choose a trained model…")
        self.browse = QPushButton("Browse…")
        self.info = QLabel("no model")
        self.info.setWordWrap(True)
        self.device = QComboBox(toolTip="only devices that work on this machine are listed")
        self.device.addItems(["auto", "cpu"])
        self.in_use = QLabel("")
        self.in_use.setWordWrap(True)
        self.stain = QCheckBox("Match the slide's staining to the model's training slides (Reinhard)")
        self.show_stain_reference(None)
        row = QHBoxLayout()
        row.addWidget(self.model, 1)
        row.addWidget(self.browse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.info)
        form = QFormLayout()
        form.addRow("device", self.device)
        layout.addLayout(form)
        layout.addWidget(self.stain)
        layout.addWidget(self.in_use)
        self.browse.clicked.connect(self._browse)
        self.model.activated.connect(lambda i: self._choose(self.model.itemData(i) or self.model.itemText(i)))
        self.model.lineEdit().returnPressed.connect(lambda: self._choose(self.model.currentText()))
        self.device.currentTextChanged.connect(self.device_chosen.emit)

    def add_model(self, label: str, path: str, select: bool = False) -> None:
        index = self.model.findData(path)
        if index < 0:
            self.model.addItem(label, path)
            index = self.model.count() - 1
        if select:
            self.model.setCurrentIndex(index)

    def show_stain_reference(self, run_dir: str | Path | None) -> None:
        """Offer stain normalisation when the model's run folder holds its stain reference."""
        from napari_dkan.features.stain import STAIN_FILE

        has = run_dir is not None and (Path(run_dir) / STAIN_FILE).is_file()
        self.stain.setEnabled(has)
        if not has:
            self.stain.setChecked(False)
        self.stain.setToolTip(
            "For a slide from another lab, scanner or patient: its tissue colours (mean and spread in "
            "LAB) are moved to those of the slides the model was trained on before the image encoder "
            "reads them. It helped a model trained on one patient predict another's slide; on slides "
            "like the training ones it can cost a little. Off by default."
            if has else
            ("choose a model first" if run_dir is None else
             f"this model has no stain reference ({STAIN_FILE}): it was trained before stain "
             "normalisation existed. Write one with `napari-dkan trust DATASET --model RUN --only-stain`"))

    def set_devices(self, names: Sequence[str]) -> None:
        current = self.device.currentText()
        self.device.blockSignals(True)
        self.device.clear()
        self.device.addItems(list(names))
        self.device.setCurrentText(current if current in names else "auto")
        self.device.blockSignals(False)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a trained model (its config.json or model.safetensors)", "",
            "napari-dkan run (config.json model.safetensors);;All files (*)")
        if path:
            self._choose(path)

    def _choose(self, path: str) -> None:
        if path.strip():
            self.model_chosen.emit(path.strip())
