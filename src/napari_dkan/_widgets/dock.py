"""The prediction dock: choose a slide and a model, predict, compare with measured, export.

A thin Qt layer over the library: it builds requests for the generators in
:mod:`~napari_dkan._widgets.jobs`, runs them with napari's ``create_worker`` (off the GUI
thread), and hands results to the :class:`~napari_dkan._widgets.session.SpotSession`, whose
signals the :class:`~napari_dkan._widgets.layers.LayerBuilder` turns into layer updates.
User-facing problems (:class:`~napari_dkan.io.errors.DataError`) become napari notifications.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import napari
import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from napari_dkan._widgets import jobs
from napari_dkan._widgets.cache import PREDICTIONS, PredictionCache
from napari_dkan._widgets.controls import DisplayControls, GenePicker, ModelChooser
from napari_dkan._widgets.export import write_predictions
from napari_dkan._widgets.expression import SPOT_ID, Expression
from napari_dkan._widgets.layers import MEASURED, LayerBuilder, role_of
from napari_dkan._widgets.recent_models import RECENT_MODELS, RecentModel, RecentModels
from napari_dkan._widgets.runner import JobRunner
from napari_dkan._widgets.scope import Scope, visible_box
from napari_dkan._widgets.session import Display, SpotSession
from napari_dkan._widgets.sources import META_KEY, source_of_layer
from napari_dkan._widgets.trust_view import TrustPanel, UncertaintyLayer, mark_reliability
from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel


class PredictionDock(QWidget):
    """Predict expression on a slide and compare it with the measured values."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, cache: PredictionCache = PREDICTIONS,
                 recent: RecentModels = RECENT_MODELS) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.cache = cache
        self.recent = recent
        self.session: SpotSession | None = None
        self.builder: LayerBuilder | None = None
        self.model: TrainedModel | None = None
        self._build_ui()
        self.runner = JobRunner(self.progress, self.status, self.predict_button, self.cancel_button)
        self._connect()
        self._follow_recent_models()
        self._refresh_slides()
        self.runner.start(jobs.available_devices_steps(), self.models.set_devices, "checking devices",
                          quiet=True)
        from napari_dkan.bundled import default_model_path

        bundled = default_model_path()
        if bundled is not None:
            self.models.add_model(f"bundled: {bundled.name}", str(bundled), select=True)
            self.choose_model(str(bundled))

    # -- UI ------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.slide = QComboBox(toolTip="the slide to predict on (image layers opened from a file)")
        self.section_info = QLabel("open a slide or a spot dataset (File ▸ Open)")
        self.section_info.setWordWrap(True)
        self.models = ModelChooser()
        self.scope_fov = QRadioButton(str(Scope.FIELD_OF_VIEW))
        self.scope_all = QRadioButton(str(Scope.ALL_SPOTS), checked=True)
        self._scopes = QButtonGroup(self)
        self._scopes.addButton(self.scope_fov)
        self._scopes.addButton(self.scope_all)
        self.predict_button = QPushButton("Predict")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar(textVisible=True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.genes = GenePicker()
        self.scores = QLabel("")
        self.scores.setWordWrap(True)
        self.trust = TrustPanel()
        self.uncertainty: UncertaintyLayer | None = None
        self._spot_trust: Any = None
        self.display = DisplayControls()
        self.export_h5ad = QPushButton("Export .h5ad…")
        self.export_csv = QPushButton("Export .csv…")

        slide_box = _group("Slide", self.slide, self.section_info)
        model_box = _group("Model", self.models)
        scope_row = _row(QLabel("spots:"), self.scope_fov, self.scope_all)
        run_row = _row(self.predict_button, self.cancel_button)
        predict_box = _group("Predict", scope_row, run_row, self.progress, self.status)
        compare_box = _group("Compare", self.genes, self.trust, self.scores, self.display)
        export_box = _group("Export predictions", _row(self.export_h5ad, self.export_csv))
        layout = QVBoxLayout(self)
        for box in (slide_box, model_box, predict_box, compare_box, export_box):
            layout.addWidget(box)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.slide.currentIndexChanged.connect(lambda _: self._slide_changed())
        self.models.model_chosen.connect(self.choose_model)
        self.models.device_chosen.connect(lambda _: self._show_in_use())
        self.predict_button.clicked.connect(lambda: self.predict())
        self.genes.gene_chosen.connect(self.set_gene)
        self.display.display_changed.connect(self._display_changed)
        self.display.residual_toggled.connect(self._residual_toggled)
        self.display.grid_toggled.connect(self.set_side_by_side)
        self.trust.order_changed.connect(self._refresh_trust)
        self.trust.uncertainty_toggled.connect(self.set_uncertainty_visible)
        self.export_h5ad.clicked.connect(lambda: self._export_dialog(".h5ad"))
        self.export_csv.clicked.connect(lambda: self._export_dialog(".csv"))
        events = self.viewer.layers.events
        events.inserted.connect(self._layers_changed)
        events.removed.connect(self._layers_changed)
        # a single-shot timer owned by the dock: it dies with it, so no late call reaches a
        # deleted widget; and the viewer stops calling us when the dock goes
        self._sync_timer = QTimer(self, singleShot=True, interval=0)
        self._sync_timer.timeout.connect(self._sync_with_layers)
        handler = self._layers_changed
        self.destroyed.connect(lambda *_: (events.inserted.disconnect(handler),
                                           events.removed.disconnect(handler)))

    # -- slide and session ---------------------------------------------------------------------
    def _slide_layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image) and role_of(layer) in ("slide", None)
                and source_of_layer(layer) is not None]

    def _layers_changed(self, *_: Any) -> None:
        # after napari has finished inserting or removing: adopting a layer changes the list
        self._sync_timer.start()

    def _sync_with_layers(self) -> None:
        self._refresh_slides()
        session = self.session
        if session is not None and self.model is None and session.measured is None:
            self._adopt_reader_measured(session)  # the reader added it after the slide

    def _refresh_slides(self, *_: Any) -> None:
        layers = self._slide_layers()
        current = self.session_slide
        self.slide.blockSignals(True)
        self.slide.clear()
        for layer in layers:
            self.slide.addItem(layer.name)
        if current in layers:
            self.slide.setCurrentIndex(layers.index(current))
        self.slide.blockSignals(False)
        if layers and current not in layers:
            self._slide_changed()

    @property
    def session_slide(self) -> Any:
        return None if self.builder is None else self.builder.slide_layer

    def _slide_changed(self) -> None:
        layers = self._slide_layers()
        index = self.slide.currentIndex()
        if not 0 <= index < len(layers) or layers[index] is self.session_slide:
            return
        try:
            self.open_session(layers[index])
        except DataError as exc:
            show_error(str(exc))

    def open_session(self, slide_layer: Any) -> SpotSession:
        """Follow the section shown by ``slide_layer`` (a reader-made measured layer is adopted)."""
        source = source_of_layer(slide_layer)
        if source is None:
            raise DataError(f"layer {slide_layer.name!r} does not come from a file")
        if self.builder is not None:
            self.builder.close()
        session = SpotSession(source, source.open())
        self.session = session
        self.builder = LayerBuilder(self.viewer, session, slide_layer)
        self.uncertainty = UncertaintyLayer(self.viewer, self.builder)
        self._spot_trust = None
        session.gene_changed.connect(self._gene_changed)
        session.values_changed.connect(self._show_scores)
        session.display_changed.connect(self._show_scores)
        kind = "spots from the dataset" if source.section else "a lattice over the detected tissue"
        self.section_info.setText(f"{source.label}: {kind}")
        if self.model is not None:
            self.choose_model(self.model)  # its panel's measured values for this section
        else:
            self._adopt_reader_measured(session)
        return session

    def _adopt_reader_measured(self, session: SpotSession) -> None:
        """Show the reader's measured genes until a model is chosen."""
        for layer in self.viewer.layers:
            if role_of(layer) == MEASURED and source_of_layer(layer) == session.source:
                features = layer.features
                ids = session.section.spots.spot_id
                if SPOT_ID in features and list(features[SPOT_ID]) == list(ids):
                    genes = tuple(c for c in features.columns if c != SPOT_ID)
                    values = features[list(genes)].to_numpy(dtype=np.float32)
                    space = layer.metadata[META_KEY].get("space", "")
                    session.set_measured(Expression(genes, values, np.arange(len(ids)), space))
                return

    # -- model ---------------------------------------------------------------------------------
    def choose_model(self, model: str | TrainedModel) -> Any:
        """Load a run (off the GUI thread) and ready the section for it; returns the worker."""
        section = None if self.session is None else self.session.section
        if isinstance(model, str):
            self.models.add_model(Path(model).name or model, model, select=True)
        steps = jobs.load_model_steps(model, section, self.models.device.currentText())
        return self.runner.start(steps, self._model_loaded, "loading the model")

    def _model_loaded(self, loaded: jobs.LoadedModel) -> None:
        self.model = loaded.model
        section = None if self.session is None else self.session.section
        if loaded.section is not section:  # the user changed slides while it loaded
            QTimer.singleShot(0, lambda: self.choose_model(loaded.model))  # once this job ends
            return
        info = loaded.model.describe()
        self.models.info.setText(
            f"{info['model']}{' ' + info['preset'] if info.get('preset') else ''} · "
            f"{info['genes']} genes · image encoder {info['image_encoder']}"
            + (f" · text encoder {info['text_encoder']}" if info.get("text_encoder") else "")
            + (f" · trained on {', '.join(info['trained_on'])}" if info.get("trained_on") else ""))
        self._show_in_use(loaded.device)
        self._spot_trust = None
        if self.uncertainty is not None:
            self.uncertainty.set_trust(None, None)
        if self.session is not None:
            self.session.set_model(loaded.model, loaded.measured)
        self._refresh_trust()
        self._show_scores()
        self.status.setText(f"model ready: {len(loaded.model.panel)} genes")

    def _follow_recent_models(self) -> None:
        """Offer the models trained in this session, now and as the training dock ends runs."""
        for entry in self.recent.entries:
            self._offer_model(entry)
        added, handler = self.recent.added, self._offer_model
        added.connect(handler)
        self.destroyed.connect(lambda *_: added.disconnect(handler))

    def _offer_model(self, entry: RecentModel) -> None:
        self.models.add_model(entry.label, entry.path)

    def _show_in_use(self, device: str | None = None) -> None:
        name = self.models.device.currentText()
        if device is None:
            if "torch" not in sys.modules:  # describing a device imports torch: not here
                device = name
            else:
                device = jobs.describe_device(name)
        model = "no model" if self.model is None else f"model {Path(self.model.run_dir).name}"
        self.models.in_use.setText(f"in use: {device} · {model}")

    # -- predict -------------------------------------------------------------------------------
    @property
    def scope(self) -> Scope:
        return Scope.FIELD_OF_VIEW if self.scope_fov.isChecked() else Scope.ALL_SPOTS

    def set_scope(self, scope: Scope) -> None:
        (self.scope_fov if scope is Scope.FIELD_OF_VIEW else self.scope_all).setChecked(True)

    def predict(self) -> Any:
        """Start a prediction of the spots in scope; returns the worker (None when refused)."""
        try:
            request = self._request()
        except DataError as exc:
            show_error(str(exc))
            return None
        cancel = threading.Event()
        return self.runner.start(jobs.predict_steps(request, cancel, self.cache), self._predicted,
                                 "predicting", cancel=cancel)

    def _request(self) -> jobs.PredictRequest:
        if self.session is None or self.builder is None:
            raise DataError("open a slide first (File ▸ Open), then choose it in the dock")
        if self.model is None:
            raise DataError("choose a model first: a run directory or its checkpoint file")
        box = None
        if self.scope is Scope.FIELD_OF_VIEW:
            box = visible_box(self.viewer, self.builder.slide_layer)
        return jobs.PredictRequest(self.model, self.session.section, box,
                                   self.models.device.currentText())

    def _predicted(self, result: jobs.PredictResult) -> None:
        s = self.session
        if s is None or result.section is not s.section or result.model is not s.model:
            return  # the slide or the model changed while it ran
        self._spot_trust = result.trust
        self.session.trust = result.trust  # exported with the prediction (lower / upper layers)
        if self.uncertainty is not None:
            self.uncertainty.set_trust(result.trust, result.expression.spot_index)
        self.session.set_prediction(result.expression)
        self._refresh_trust()
        self._show_scores()
        how = "from the cache" if result.cached else f"in {result.seconds:.1f} s"
        self.status.setText(f"predicted {len(result.expression)} spots {how}")
        self._show_in_use(result.device)

    def cancel(self) -> None:
        """Stop the running prediction (see :meth:`JobRunner.cancel`)."""
        self.runner.cancel()

    # -- comparison ----------------------------------------------------------------------------
    def set_gene(self, gene: str) -> None:
        if self.session is None:
            return
        try:
            self.session.set_gene(gene)
        except DataError as exc:
            show_warning(str(exc))

    def _gene_changed(self, gene: str) -> None:
        if self.session is not None:
            self.genes.set_genes(self.trust.gene_list(self.session.model, self.session.genes))
        self.genes.set_current(gene)
        self._refresh_trust()
        self._show_scores()

    # -- trust (reliability, training-section notice, uncertainty, out of domain) -------------
    def _refresh_trust(self, *_: Any) -> None:
        s = self.session
        model = None if s is None else s.model
        self.trust.show_model(model, None if s is None else s.section.name)
        self.trust.show_domain(self._spot_trust, model)
        if s is None:
            return
        self.trust.show_gene(model, s.gene)
        self.genes.set_genes(self.trust.gene_list(model, s.genes))
        if self.builder is None:
            return
        predicted = self.builder.layer("predicted")
        if predicted is not None:
            mark_reliability(self.viewer, predicted, model, s.gene)
            half = None if self.uncertainty is None else self.uncertainty.gene_halfwidth(s.gene)
            predicted.metadata[META_KEY]["halfwidth"] = half  # hover: value ± half-width
        if self.uncertainty is not None and self.trust.uncertainty.isChecked():
            self.uncertainty.show(True)

    def set_uncertainty_visible(self, visible: bool) -> Any:
        """Show the chosen gene's interval width as its own layer; returns it (None: no intervals)."""
        if self.uncertainty is None:
            return None
        if self.trust.uncertainty.isChecked() != visible:
            self.trust.uncertainty.setChecked(visible)  # re-enters through the toggle signal
            return self.uncertainty.layer
        layer = self.uncertainty.show(visible)
        if visible and layer is None:
            show_info("no intervals yet: predict with a model that carries a calibration")
        return layer

    def _display_changed(self, display: Display) -> None:
        if self.session is not None:
            self.session.set_display(colormap=display.colormap, low_percentile=display.low_percentile,
                                     high_percentile=display.high_percentile)

    def _residual_toggled(self, visible: bool) -> None:
        if self.builder is not None:
            self.builder.set_residual_visible(visible)

    def set_side_by_side(self, enabled: bool) -> int:
        """Measured and predicted (and residual, when shown) in panels; returns the count."""
        if self.builder is None:
            return 1
        panels = self.builder.set_grid(enabled)
        if enabled and panels < 2:
            show_info("side by side needs two layers: predict first (and open measured data)")
        return panels

    def _show_scores(self, *_: Any) -> None:
        s = self.session
        if s is None:
            return
        if s.gene is not None and s.genes:
            self.display.show_limits(s.contrast_limits())
        scores = s.scores()
        if scores is None:
            self.scores.setText("Pearson r and MAE appear when both predicted and measured exist")
            return
        notice = self.trust.seen_notice
        self.scores.setText(f"{scores.gene}: Pearson r {scores.pearson:.3f} · MAE {scores.mae:.3f} "
                            f"over {scores.n_spots} spots in scope"
                            + (f" — {notice}" if notice else ""))

    # -- export --------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path | None:
        if self.session is None:
            show_error("nothing to export: open a slide and predict first")
            return None
        try:
            written = write_predictions(self.session, path)
        except DataError as exc:
            show_error(str(exc))
            return None
        show_info(f"napari-dkan wrote {written}")
        return written

    def _export_dialog(self, suffix: str) -> None:
        from qtpy.QtWidgets import QFileDialog

        name = f"{self.session.section.name if self.session else 'predictions'}-predictions{suffix}"
        kind = "AnnData (*.h5ad)" if suffix == ".h5ad" else "CSV (*.csv)"
        path, _ = QFileDialog.getSaveFileName(self, "Export predictions", name, kind)
        if path:
            self.export(path if path.endswith(suffix) else path + suffix)

    # -- jobs ----------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.runner.busy

    def closeEvent(self, event: Any) -> None:
        self.runner.cancel()
        super().closeEvent(event)


def _group(title: str, *items: Any) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    for item in items:
        if isinstance(item, QWidget):
            layout.addWidget(item)
        else:
            layout.addLayout(item)
    return box


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for w in widgets:
        row.addWidget(w)
    return row
