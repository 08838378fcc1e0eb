"""Live training curves in the dock: training loss and agreement on held-out spots per epoch.

The lines are plain :class:`matplotlib.lines.Line2D` objects whose data are the epoch values,
so tests (and anyone) can read back what is drawn.  Redraws are ``draw_idle``: several epochs
arriving at once cost one draw.

What the plots must not do: show fractional epochs (one epoch used to give ticks 0.945…1.050),
make a +0.008 change fill the whole height (the agreement axis spans at least
:data:`MIN_PCC_SPAN`), or glare white in napari's dark window (the colours follow its theme).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from napari_dkan._widgets.training_run import EpochRecord

#: the agreement (Pearson r) axis spans at least this much, so small changes look small
MIN_PCC_SPAN = 0.2
PCC_LABEL = "agreement (r)"
PCC_TIP = ("agreement on held-out spots: the Pearson correlation r between predicted and measured "
           "values over the validation spots, averaged over the panel's genes (technically: "
           "validation PCC); 1 is perfect, 0 unrelated")


@dataclass(frozen=True)
class PlotTheme:
    """Colours of the plots (napari's dark theme by default)."""

    background: str = "#262930"
    foreground: str = "#414851"
    text: str = "#f0f1f2"
    loss: str = "#ffb74d"
    pcc: str = "#64b5f6"
    best: str = "#81c784"
    base: str = "#9e9e9e"

    @classmethod
    def of_napari(cls, theme_name: str) -> PlotTheme:
        """The colours of a napari theme (``viewer.theme``); the default when unknown."""
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(theme_name)
            # the dock's own background (napari's canvas colour is black)
            return cls(background=theme.background.as_hex(), foreground=theme.secondary.as_hex(),
                       text=theme.text.as_hex())
        except Exception:  # noqa: BLE001 - plots in the default colours rather than none
            return cls()


class TrainingCurves(QWidget):
    """Two small plots, one above the other (docks are narrow): loss, and agreement on held-out
    spots with the best epoch and, when fine-tuning, the base model's score."""

    def __init__(self, parent: QWidget | None = None, theme: PlotTheme | None = None) -> None:
        super().__init__(parent)
        self.theme = theme or PlotTheme()
        self.planned_epochs = 0
        # fixed margins, not constrained layout, and a fixed legend place: a redraw then costs
        # ~3× less GUI-thread time (it runs once per epoch while training)
        self.figure = Figure(figsize=(3.6, 3.0), facecolor=self.theme.background)
        self.figure.subplots_adjust(left=0.19, right=0.97, top=0.88, bottom=0.13, hspace=0.14)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.canvas.setFixedHeight(300)
        self.canvas.setMinimumWidth(200)
        self.canvas.setToolTip(PCC_TIP)
        self.loss_axes, self.pcc_axes = self.figure.subplots(2, 1, sharex=True)
        t = self.theme
        (self.loss_line,) = self.loss_axes.plot([], [], "o-", ms=3, color=t.loss)
        (self.pcc_line,) = self.pcc_axes.plot([], [], "o-", ms=3, color=t.pcc, label="fine-tuned")
        (self.best_marker,) = self.pcc_axes.plot([], [], "*", ms=10, color=t.best, label="best (kept)")
        self.base_line = self.pcc_axes.axhline(0.0, ls="--", lw=1, color=t.base, label="base model")
        self.base_line.set_visible(False)
        for axes, title in ((self.loss_axes, "training loss"), (self.pcc_axes, PCC_LABEL)):
            axes.set_facecolor(t.background)
            axes.set_ylabel(title, fontsize=8, color=t.text)
            axes.tick_params(labelsize=7, colors=t.text)
            for spine in axes.spines.values():
                spine.set_color(t.foreground)
            axes.grid(True, color=t.foreground, lw=0.5, alpha=0.6)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        self.pcc_axes.set_xlabel("epoch", fontsize=8, color=t.text)
        # the legend above the plots, out of the curves' way
        self.legend = self.figure.legend(handles=[self.pcc_line, self.best_marker, self.base_line],
                                         loc="upper center", ncol=3, fontsize=7, frameon=False,
                                         labelcolor=t.text, handlelength=1.5, columnspacing=1.0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.records: list[EpochRecord] = []
        self._update()

    def clear(self, planned_epochs: int = 0) -> None:
        """Empty plots for a new run of ``planned_epochs`` (0: not known)."""
        self.records = []
        self.planned_epochs = planned_epochs
        self.base_line.set_visible(False)
        self._update()

    def set_base(self, val_pcc: float | None) -> None:
        """The base model's agreement before fine-tuning: the line to beat."""
        self.base_line.set_visible(val_pcc is not None)
        if val_pcc is not None:
            self.base_line.set_ydata([val_pcc, val_pcc])
        self._update()

    def add_epoch(self, record: EpochRecord) -> None:
        # a resumed run reports from its next epoch on: keep one point per epoch
        self.records = [r for r in self.records if r.epoch < record.epoch] + [record]
        self._update()

    def pcc_limits(self) -> tuple[float, float]:
        return tuple(self.pcc_axes.get_ylim())

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
        handles = [self.pcc_line, self.best_marker] + ([self.base_line] if fine_tuning else [])
        for text, handle in zip(self.legend.get_texts(), [self.pcc_line, self.best_marker, self.base_line]):
            text.set_text(handle.get_label())
            text.set_visible(handle in handles)
        for handle, shown in zip(self.legend.legend_handles, (True, True, fine_tuning)):
            handle.set_visible(shown)
        self.loss_axes.relim(visible_only=True)
        self.loss_axes.set_autoscale_on(True)
        self.loss_axes.autoscale_view(scalex=False)
        last = max(epochs, default=0)
        self.pcc_axes.set_xlim(0.5, max(last, self.planned_epochs, 1) + 0.5)
        self.pcc_axes.set_ylim(*self._pcc_range())
        self.canvas.draw_idle()

    def _pcc_range(self) -> tuple[float, float]:
        values = [_nan(r.val_pcc) for r in self.records] + [_nan(r.best_pcc) for r in self.records]
        if self.base_line.get_visible():
            values.append(float(self.base_line.get_ydata()[0]))
        values = [v for v in values if math.isfinite(v)]
        if not values:
            return (0.0, MIN_PCC_SPAN * 2)
        lo, hi = min(values), max(values)
        pad = max((hi - lo) * 0.1, 0.01)
        lo, hi = lo - pad, hi + pad
        if hi - lo < MIN_PCC_SPAN:
            mid = (lo + hi) / 2
            lo, hi = mid - MIN_PCC_SPAN / 2, mid + MIN_PCC_SPAN / 2
        return (max(lo, -1.0), min(hi, 1.0))


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)
