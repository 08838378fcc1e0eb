"""The training dock: fine-tune a model (or train one from scratch) on a sample, inside napari.

A thin Qt layer: :class:`~napari_dkan._widgets.training_form.TrainingForm` builds a request,
:func:`~napari_dkan._widgets.training_run.training_steps` checks it and trains through the
engine in napari's worker thread (the engine itself on a helper thread), and the dock shows
what comes back: problems before anything starts, progress and live curves while it runs, the
saved run when it ends.  Each ended run goes into
:data:`~napari_dkan._widgets.recent_models.RECENT_MODELS`, which every prediction dock lists.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import napari
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_dkan._widgets.curves import PlotTheme, TrainingCurves
from napari_dkan._widgets.dock_layout import place_in_scroll_area, tabify_with_siblings
from napari_dkan._widgets.recent_models import RECENT_MODELS, RecentModels
from napari_dkan._widgets.runner import JobRunner
from napari_dkan._widgets.sources import source_of_layer
from napari_dkan._widgets.training_form import TrainingForm
from napari_dkan._widgets.training_plan import (
    BaseChoice,
    CheckResult,
    default_settings,
    describe_plan,
    run_training_settings,
)
from napari_dkan._widgets.training_run import (
    EngineInfo,
    EpochRecord,
    SectionInfo,
    TrainingOutcome,
    TrainingProgress,
    dataset_steps,
    engine_info_steps,
    training_steps,
)

#: where new runs are suggested (the user can pick any folder)
RUNS_ROOT = Path.home() / "napari-dkan-runs"
PROBLEM_STYLE = "color: #ff8a80;"


class TrainingDock(QWidget):
    """Fine-tune on an in-house sample; see the module docstring."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, registry: RecentModels = RECENT_MODELS,
                 runs_root: Path = RUNS_ROOT) -> None:
        super().__init__()
        from napari_dkan.bundled import default_model_path

        self.viewer, self.registry, self.runs_root = napari_viewer, registry, runs_root
        self.bundled = default_model_path()
        self.presets: dict[str, dict[str, Any]] = {}
        self.history: list[EpochRecord] = []
        self.last_progress: TrainingProgress | None = None
        self.outcome: TrainingOutcome | None = None
        self._clock: tuple[float, int] | None = None  # (time, steps done) when training began
        self._quiet_jobs = 0
        self._want_section: str | None = None
        self._build_ui()
        self.runner = JobRunner(self.progress, self.status, self.train_button, self.cancel_button)
        self._connect()
        self._start_quiet(engine_info_steps(), self._engine_ready, "checking devices")
        self._prefill_from_layers()
        tabify_with_siblings(self)  # a tab beside the prediction dock, with the whole height

    # -- UI ------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.form = TrainingForm(bundled=self.bundled is not None)
        self.check_button = QPushButton("Check inputs", toolTip="check the inputs without training")
        self.train_button = QPushButton("Train", toolTip="check the inputs, then train if all is well")
        self.cancel_button = QPushButton("Cancel", toolTip="stop after the current step; the best "
                                         "checkpoint so far is kept and usable")
        self.progress = QProgressBar(textVisible=True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.problems = QLabel("")
        self.problems.setWordWrap(True)
        self.problems.setStyleSheet(PROBLEM_STYLE)
        self.problems.setVisible(False)
        self.curves = TrainingCurves(theme=PlotTheme.of_napari(str(getattr(self.viewer, "theme", "dark"))))
        self.estimate = QLabel("", toolTip="from the time the epochs so far took; training may stop "
                               "earlier when the agreement on held-out spots stops improving")
        self.result = QLabel("")
        self.result.setWordWrap(True)
        buttons = QHBoxLayout()
        for b in (self.check_button, self.train_button, self.cancel_button):
            buttons.addWidget(b)
        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.addWidget(self.form)
        layout.addLayout(buttons)
        for w in (self.progress, self.status, self.estimate, self.problems, self.curves, self.result):
            layout.addWidget(w)
        layout.addStretch(1)
        # the form is taller than a laptop's dock area: scroll vertically, never sideways
        place_in_scroll_area(self, inner)

    def _connect(self) -> None:
        self.form.data_changed.connect(self.read_dataset)
        self.form.base_changed.connect(self._refresh_defaults)
        self.form.section.currentIndexChanged.connect(lambda _: self.form.suggest_output(self.runs_root))
        self.check_button.clicked.connect(lambda: self.check())
        self.train_button.clicked.connect(lambda: self.train())
        self.cancel_button.clicked.connect(self._cancelling)
        events = self.viewer.layers.events
        handler = self._prefill_from_layers
        events.inserted.connect(handler)
        self.destroyed.connect(lambda *_: events.inserted.disconnect(handler))

    # -- inputs --------------------------------------------------------------------------------
    def _start_quiet(self, steps: Any, on_return: Any, what: str) -> None:
        """A short job beside any other (reading a dataset, listing devices); tracked by :attr:`busy`."""
        self._quiet_jobs += 1
        self.runner.start(steps, on_return, what, quiet=True, on_finished=self._quiet_done)

    def _quiet_done(self) -> None:
        self._quiet_jobs -= 1

    def _engine_ready(self, info: EngineInfo) -> None:
        self.form.set_devices(info.devices)
        self.form.set_presets(list(info.presets))
        self.presets = info.presets
        self._refresh_defaults()

    def _refresh_defaults(self) -> None:
        """Advanced settings back to the defaults of the chosen base model or preset."""
        choice = self.form.base_choice
        base = None
        if choice is BaseChoice.BUNDLED:
            base = run_training_settings(self.bundled)
        elif choice is BaseChoice.RUN:
            base = run_training_settings(self.form.base_run.text)
        preset = self.presets.get(self.form.preset.currentText())
        if base is None and preset is None:
            return  # the engine's presets are not known yet, or the run folder is not chosen
        self.form.apply_defaults(default_settings(preset or base or {}, base))
        self.form.suggest_output(self.runs_root)

    def read_dataset(self) -> None:
        """List the sections of the dataset (and image) in the form."""
        path = self.form.dataset.text
        if path:
            self._start_quiet(dataset_steps(path, self.form.image.text or None), self._sections_read,
                              "reading the dataset")

    def _sections_read(self, sections: list[SectionInfo]) -> None:
        self.form.set_sections(sections)
        if self._want_section is not None and self.form.section.findData(self._want_section) >= 0:
            self.form.choose(self.form.section, self._want_section)
        self._want_section = None
        self.form.suggest_output(self.runs_root)

    def _prefill_from_layers(self, *_: Any) -> None:
        """Start from the section the viewer shows, when it came from a spot dataset."""
        if self.form.dataset.text:
            return
        for layer in self.viewer.layers:
            source = source_of_layer(layer)
            if source is not None and source.section:
                self.form.dataset.edit.setText(source.path)
                self.form.image.edit.setText(source.image or "")
                self._want_section = source.section
                self.read_dataset()
                return

    # -- run -----------------------------------------------------------------------------------
    def check(self) -> Any:
        """Check the inputs only; the problems (or what would run) are shown in the dock."""
        return self._start(check_only=True)

    def train(self) -> Any:
        """Check the inputs and train when they are fine; returns the worker (None when refused)."""
        return self._start(check_only=False)

    def _start(self, check_only: bool) -> Any:
        if self.runner.busy:  # the last run's curves and result stay as they are
            show_warning(f"napari-dkan: wait for {self.runner.what} to finish, or cancel it")
            return None
        request = self.form.request()
        cancel = threading.Event()
        self._show_problems(())
        self.result.setText("")
        self.last_progress = None
        if not check_only:
            self.history = []
            self.curves.clear(planned_epochs=request.epochs)
            self._clock = None
        self.estimate.setText("")
        self.check_button.setEnabled(False)
        worker = self.runner.start(training_steps(request, cancel, check_only), self._ended,
                                   "checking the inputs" if check_only else "training", cancel=cancel,
                                   on_yield=self._on_progress,
                                   on_finished=lambda: self.check_button.setEnabled(True))
        if worker is None:
            self.check_button.setEnabled(True)
        return worker

    def _on_progress(self, item: Any) -> None:
        if not isinstance(item, TrainingProgress):
            return
        self.last_progress = item
        self._estimate_time(item)
        if item.base_val_pcc is not None:
            self.curves.set_base(item.base_val_pcc)
        if item.epoch is not None:
            self.history = [r for r in self.history if r.epoch < item.epoch.epoch] + [item.epoch]
            self.curves.add_epoch(item.epoch)

    def _estimate_time(self, item: TrainingProgress) -> None:
        """Time left, from the pace of the training steps so far (shown once there is a pace)."""
        import time

        if item.stage != "training" or item.total <= 0:
            return
        now = time.perf_counter()
        if self._clock is None:
            self._clock = (now, item.done)
            return
        t0, done0 = self._clock
        if item.done <= done0 or now - t0 < 1.0:
            return
        left = (now - t0) / (item.done - done0) * (item.total - item.done)
        self.estimate.setText(f"about {format_duration(left)} left at most" if item.done < item.total
                              else "")

    def _cancelling(self) -> None:
        if self.runner.busy:
            self.status.setText("cancelling: the current step ends, the best checkpoint so far is kept…")

    def _ended(self, result: CheckResult | TrainingOutcome) -> None:
        if isinstance(result, CheckResult):
            if result.problems:
                self._show_problems(result.problems)
                self.status.setText(f"{len(result.problems)} problem(s) to fix before training")
                show_warning(f"napari-dkan: {len(result.problems)} input problem(s); see the training dock")
            else:
                assert result.plan is not None
                self.status.setText(describe_plan(result.plan))
            return
        self.outcome = result
        cancelled = result.status == "cancelled"
        kind = "fine-tuned" if result.model.config.get("fine_tuned_from") else "trained"
        self.registry.add(result.run_dir, f"{kind}{' (cancelled)' if cancelled else ''}: {result.run_dir.name}")
        self.status.setText(result.summary)
        self.estimate.setText(gain_text(result.best_val_pcc, result.base_val_pcc))
        self.result.setText(f"saved: {result.run_dir} — choose it in the prediction dock's model list")
        show_info(f"napari-dkan: {result.summary}")

    def _show_problems(self, problems: tuple[str, ...] | list[str]) -> None:
        self.problems.setText("\n".join(f"• {p}" for p in problems))
        self.problems.setVisible(bool(problems))

    def cancel(self) -> None:
        """Stop training after its current step (see :mod:`~napari_dkan._widgets.training_run`)."""
        self.runner.cancel()
        self._cancelling()

    @property
    def busy(self) -> bool:
        return self.runner.busy or self._quiet_jobs > 0

    def closeEvent(self, event: Any) -> None:
        self.runner.cancel()
        super().closeEvent(event)


def format_duration(seconds: float) -> str:
    """"40 s", "3 min", "1 h 10 min"."""
    if seconds < 60:
        return f"{max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def gain_text(best: float | None, base: float | None) -> str:
    """The result in words: the best agreement, and its change over the base model's."""
    if best is None:
        return ""
    text = f"best agreement on held-out spots r = {best:.3f}"
    if base is not None:
        change = best - base
        size = "a small" if abs(change) < 0.02 else "a clear"
        way = "gain" if change > 0 else "loss"
        text += f" ({change:+.3f} over the base model's {base:.3f}: {size} {way})"
    return text
