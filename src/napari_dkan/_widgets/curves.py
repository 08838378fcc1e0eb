"""Live training curves in the dock: training loss and validation PCC per epoch (matplotlib).

The lines are plain :class:`matplotlib.lines.Line2D` objects whose data are the epoch values,
so tests (and anyone) can read back what is drawn.  Redraws are ``draw_idle``: several epochs
arriving at once cost one draw.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from napari_dkan._widgets.training_run import EpochRecord


class TrainingCurves(QWidget):
    """Two small plots, one above the other (docks are narrow): loss, and validation PCC with the
    best epoch and, when fine-tuning, the base model's score."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # fixed margins, not constrained layout, and a fixed legend place: a redraw then costs
        # ~3× less GUI-thread time (it runs once per epoch while training)
        self.figure = Figure(figsize=(3.6, 2.8))
        self.figure.subplots_adjust(left=0.2, right=0.97, top=0.97, bottom=0.14, hspace=0.12)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(280)
        self.canvas.setMinimumWidth(200)
        self.loss_axes, self.pcc_axes = self.figure.subplots(2, 1, sharex=True)
        (self.loss_line,) = self.loss_axes.plot([], [], "o-", ms=3, color="tab:orange")
        (self.pcc_line,) = self.pcc_axes.plot([], [], "o-", ms=3, color="tab:blue", label="fine-tuned")
        (self.best_marker,) = self.pcc_axes.plot([], [], "*", ms=10, color="tab:green", label="best (kept)")
        self.base_line = self.pcc_axes.axhline(0.0, ls="--", lw=1, color="gray", label="base model")
        self.base_line.set_visible(False)
        for axes, title in ((self.loss_axes, "training loss"), (self.pcc_axes, "validation PCC")):
            axes.set_ylabel(title, fontsize=8)
            axes.tick_params(labelsize=7)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.pcc_axes.set_xlabel("epoch", fontsize=8)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.records: list[EpochRecord] = []
        self._update()

    def clear(self) -> None:
        self.records = []
        self.base_line.set_visible(False)
        self._update()

    def set_base(self, val_pcc: float | None) -> None:
        """The base model's validation PCC before fine-tuning: the line to beat."""
        self.base_line.set_visible(val_pcc is not None)
        if val_pcc is not None:
            self.base_line.set_ydata([val_pcc, val_pcc])
        self._update()

    def add_epoch(self, record: EpochRecord) -> None:
        # a resumed run reports from its next epoch on: keep one point per epoch
        self.records = [r for r in self.records if r.epoch < record.epoch] + [record]
        self._update()

    def _update(self) -> None:
        epochs = [r.epoch for r in self.records]
        self.loss_line.set_data(epochs, [r.train_loss for r in self.records])
        self.pcc_line.set_data(epochs, [_nan(r.val_pcc) for r in self.records])
        best = self.records[-1] if self.records else None
        if best is not None and best.best_epoch is not None and best.best_pcc is not None:
            self.best_marker.set_data([best.best_epoch], [best.best_pcc])
        else:
            self.best_marker.set_data([], [])
        fine_tuning = self.base_line.get_visible()
        self.pcc_line.set_label("fine-tuned" if fine_tuning else "trained")
        self.base_line.set_label("base model" if fine_tuning else "_base model")  # "_": not in the legend
        for axes in (self.loss_axes, self.pcc_axes):
            axes.relim(visible_only=True)
            axes.set_autoscale_on(True)  # set_xlim below turns it off
            axes.autoscale_view()
        if not self.records:  # empty plots: epochs 1 to 10 rather than matplotlib's ±0.05
            self.pcc_axes.set_xlim(0.5, 10.5)
        if self.records:
            self.pcc_axes.legend(fontsize=6, loc="lower right")
        self.canvas.draw_idle()


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)
