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
from collections import Counter
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
from napari_dkan._widgets.dock_layout import place_in_scroll_area, tabify_with_siblings
from napari_dkan._widgets.export import write_predictions
from napari_dkan._widgets.expression import SPOT_ID, Expression, gene_columns
from napari_dkan._widgets.layers import MEASURED, ROLES, LayerBuilder, role_of
from napari_dkan._widgets.recent_models import RECENT_MODELS, RecentModel, RecentModels
from napari_dkan._widgets.runner import JobRunner
from napari_dkan._widgets.scope import Scope, visible_box
from napari_dkan._widgets.section_facts import (
    Needs,
    data_notices,
    describe_section,
    section_needs,
)
from napari_dkan._widgets.section_inputs import SectionInputs
from napari_dkan._widgets.session import Display, SpotSession
from napari_dkan._widgets.sources import META_KEY, SectionSource, source_of_layer
from napari_dkan._widgets.trust_view import (
    TrustPanel,
    UncertaintyLayer,
    interval_summary,
    mark_reliability,
    uncertainty_tip,
)
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
        self.needs = Needs()
        #: whether the prediction on screen read a stain-matched slide (None: nothing predicted)
        self._shown_stain: bool | None = None
        self._last_summary = ""
        self._build_ui()
        self.runner = JobRunner(self.progress, self.status, self.predict_button, self.cancel_button)
        self._connect()
        self._follow_recent_models()
        self._refresh_slides()
        tabify_with_siblings(self)  # beside the fine-tuning dock, not squeezed under it
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
        self.inputs = SectionInputs()
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
        from napari_dkan.io.spatialdata_export import INSTALL_HINT, spatialdata_available

        # offered when the optional spatialdata package is installed (the spatialdata extra)
        self.export_zarr = QPushButton("Export SpatialData…", toolTip=(
            "a SpatialData .zarr store: the slide, the spots as circles, a table of predicted "
            "and measured values (napari-spatialdata, squidpy)"))
        self.export_zarr.setVisible(spatialdata_available())
        if not spatialdata_available():
            self.export_h5ad.setToolTip(f"AnnData with Space Ranger-style images (scanpy, "
                                        f"squidpy). SpatialData export: {INSTALL_HINT}")

        slide_box = _group("Slide", self.slide, self.section_info, self.inputs)
        model_box = _group("Model", self.models)
        scope_row = _row(QLabel("spots:"), self.scope_fov, self.scope_all)
        run_row = _row(self.predict_button, self.cancel_button)
        predict_box = _group("Predict", scope_row, run_row, self.progress, self.status)
        compare_box = _group("Compare", self.genes, self.trust, self.scores, self.display)
        export_box = _group("Export predictions",
                            _row(self.export_h5ad, self.export_csv, self.export_zarr))
        inner = QWidget()
        layout = QVBoxLayout(inner)
        for box in (slide_box, model_box, predict_box, compare_box, export_box):
            layout.addWidget(box)
        layout.addStretch(1)
        # taller than a laptop's dock area (and shared with the fine-tuning dock): scroll
        # vertically rather than clip the last buttons
        place_in_scroll_area(self, inner)

    def _connect(self) -> None:
        self.slide.currentIndexChanged.connect(lambda _: self._slide_changed())
        self.models.model_chosen.connect(self.choose_model)
        self.inputs.applied.connect(self.use_inputs)
        self.models.device_chosen.connect(lambda _: self._show_in_use())
        self.models.stain.toggled.connect(self._stain_toggled)
        self.predict_button.clicked.connect(lambda: self.predict())
        self.genes.gene_chosen.connect(self.set_gene)
        self.display.display_changed.connect(self._display_changed)
        self.display.residual_toggled.connect(self._residual_toggled)
        self.display.grid_toggled.connect(self.set_side_by_side)
        self.trust.order_changed.connect(self._refresh_trust)
        self.trust.uncertainty_toggled.connect(self.set_uncertainty_visible)
        self.display.flip_clicked.connect(self.flip_measured_predicted)
        self.export_h5ad.clicked.connect(lambda: self._export_dialog(".h5ad"))
        self.export_csv.clicked.connect(lambda: self._export_dialog(".csv"))
        self.export_zarr.clicked.connect(lambda: self._export_dialog(".zarr"))
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
        self._shown_stain = None
        session.gene_changed.connect(self._gene_changed)
        session.values_changed.connect(self._show_scores)
        session.display_changed.connect(self._show_scores)
        self._show_section(session)
        if self.model is not None:
            self.choose_model(self.model)  # its panel's measured values for this section
        else:
            self._adopt_reader_measured(session)
        self.builder.fit_once()
        return session

    def _show_section(self, session: SpotSession) -> None:
        """What the section really holds, what it still needs, and what the reader noticed."""
        try:
            self.section_info.setText(describe_section(session.section, session.source))
            self.needs = section_needs(session.section, session.source)
        except DataError as exc:
            self.section_info.setText(f"{session.source.label}: {exc}")
            self.needs = Needs()
        self.inputs.show_needs(self.needs)
        self.inputs.show_notices(data_notices(session.section, None))

    def use_inputs(self, image: str | None, mpp: float | None) -> bool:
        """Reopen the section with the image and/or µm per pixel given in the dock's fields."""
        session, builder = self.session, self.builder
        if session is None or builder is None:
            return False
        if self.needs.image and not image:
            show_error("choose the full-resolution image first (Browse…)")
            return False
        if self.needs.mpp and not mpp:
            show_error("enter the µm per pixel first")
            return False
        old = session.source
        source = SectionSource(path=old.path, section=old.section, image=image or old.image,
                               mpp=mpp if mpp is not None else old.mpp)
        try:
            section = source.open()
            layer = builder.slide_layer
            if image:
                from napari_dkan._reader import slide_layer

                data, meta, _ = slide_layer(section.open_slide())  # checks the spots fit in it
                meta["name"] = f"{section.name} · slide"
                meta["metadata"][META_KEY]["source"] = source.to_metadata()
            elif mpp:
                section.open_slide(check_spots=False)
        except DataError as exc:
            show_error(str(exc))
            self.inputs.show_notices([str(exc)])
            return False
        for other in self.viewer.layers:  # the reader's measured layer follows its section
            info = (other.metadata or {}).get(META_KEY, {})
            if info.get("source") == old.to_metadata() and other is not layer:
                info["source"] = source.to_metadata()
        # the old session's spot layers go; its measured values carry over (same spots)
        measured = session.measured if self.model is None else None
        for role in ROLES:
            spots_layer = builder.layer(role)
            if spots_layer is not None:
                self.viewer.layers.remove(spots_layer)
        if image:
            index = self.viewer.layers.index(layer)
            new = self.viewer.add_image(data, **meta)
            self.viewer.layers.move(self.viewer.layers.index(new), index)
            self.viewer.layers.remove(layer)
            layer = new
        else:
            layer.metadata[META_KEY]["source"] = source.to_metadata()
            layer.metadata[META_KEY]["mpp"] = mpp
            layer.metadata[META_KEY]["pixel_scale"] = (mpp, mpp)
            layer.scale = (mpp, mpp)
            layer.units = ("µm", "µm")
        self._refresh_slides()  # may already reopen the session (a removed slide layer)
        if self.session is session:
            self.open_session(layer)
        if measured is not None and self.session is not None and self.session.measured is None:
            self.session.set_measured(measured)
        return True

    def _adopt_reader_measured(self, session: SpotSession) -> None:
        """Show the reader's measured genes until a model is chosen."""
        for layer in self.viewer.layers:
            if role_of(layer) == MEASURED and source_of_layer(layer) == session.source:
                features = layer.features
                ids = session.section.spots.spot_id
                if SPOT_ID in features and list(features[SPOT_ID]) == list(ids):
                    genes = tuple(gene_columns(features))
                    values = features[list(genes)].to_numpy(dtype=np.float32)
                    space = layer.metadata[META_KEY].get("space", "")
                    session.set_measured(Expression(genes, values, np.arange(len(ids)), space))
                return

    # -- model ---------------------------------------------------------------------------------
    def choose_model(self, model: str | TrainedModel) -> Any:
        """Load a run (off the GUI thread) and ready the section for it; returns the worker."""
        section = self._section_for_model()
        if isinstance(model, str):
            self.models.add_model(Path(model).name or model, model, select=True)
        steps = jobs.load_model_steps(model, section, self.models.device.currentText())
        return self.runner.start(steps, self._model_loaded, "loading the model")

    def _model_loaded(self, loaded: jobs.LoadedModel) -> None:
        self.model = loaded.model
        section = self._section_for_model()
        if loaded.section is not section:  # the user changed slides while it loaded
            QTimer.singleShot(0, lambda: self.choose_model(loaded.model))  # once this job ends
            return
        text, details = describe_model(loaded.model.describe())
        self.models.info.setText(text)
        self.models.info.setToolTip(details)
        self._runtime = loaded.runtime
        self._show_in_use(loaded.device)
        self._shown_stain = None  # this model has predicted nothing on screen yet
        self.models.show_stain_reference(loaded.model.run_dir)
        self._spot_trust = None
        if self.uncertainty is not None:
            self.uncertainty.set_trust(None, None)
        if self.session is not None and section is not None:
            self.session.set_model(loaded.model, loaded.measured)
            self.inputs.show_notices(data_notices(self.session.section, loaded.model))
        if self.builder is not None:
            self.builder.fit_once()  # a bare slide's spots are known now
        self._refresh_trust()
        self._show_scores()
        self.status.setText(f"model ready: {len(loaded.model.panel)} genes")

    def _section_for_model(self) -> Any:
        """The section a model gets ready for; none while its µm/px is unknown (no spots yet)."""
        return None if self.session is None or self.needs.mpp else self.session.section

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
        runtime = getattr(self, "_runtime", "")
        if name in ("cuda", "mps"):  # the exported runtimes are CPU-only
            runtime = "torch"
        runtime = f" · encoder on {runtime}" if runtime and self.model is not None else ""
        self.models.in_use.setText(f"in use: {device}{runtime} · {model}")

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
                                 "predicting", cancel=cancel, on_yield=self._partial)

    def _request(self) -> jobs.PredictRequest:
        if self.session is None or self.builder is None:
            raise DataError("open a slide first (File ▸ Open), then choose it in the dock")
        if self.needs.image:
            raise DataError("this section has no full-resolution image: choose it under Slide "
                            "(image, Browse…) and press Use")
        if self.needs.mpp:
            raise DataError("this image has no µm per pixel: enter it under Slide and press Use")
        if self.model is None:
            raise DataError("choose a model first: a run directory or its checkpoint file")
        self.model.use_stain_normalisation(self.models.stain.isChecked())
        view = visible_box(self.viewer, self.builder.slide_layer)
        box = view if self.scope is Scope.FIELD_OF_VIEW else None
        return jobs.PredictRequest(self.model, self.session.section, box,
                                   self.models.device.currentText(), view=view)

    def _partial(self, step: Any) -> None:
        """Colour the spots a progressive prediction has finished so far; the job waits until
        they are drawn (see :class:`~napari_dkan._widgets.jobs.PartialPrediction`)."""
        if not isinstance(step, jobs.PartialPrediction):
            return
        try:
            s = self.session
            if step.expression is None or s is None or self.runner.cancel_event.is_set() \
                    or step.model is not s.model or step.section is not s.section:
                return  # cancelled, or the slide or the model changed while it ran
            first = s.predicted is None
            s.set_prediction(step.expression)
            if first:  # the map now shows predictions: the gene's UNRELIABLE label belongs on it,
                # in a turn of its own (its first draw renders glyphs) rather than at the job's end
                QTimer.singleShot(0, self._mark_reliability)
        finally:
            if step.drawn is not None:  # one thing per turn of the event loop, then the job
                drawn = step.drawn  # the canvas's repaint (a posted event) comes first

                def show_progress() -> None:
                    if self.runner._alive():  # noqa: SLF001 - the dock may be closing
                        self.runner.show_pending()
                    QTimer.singleShot(0, drawn.set)

                QTimer.singleShot(0, show_progress)

    def _mark_reliability(self) -> None:
        """Fade and label the predicted layer by the chosen gene's reliability (the label only
        over predictions; see :func:`~napari_dkan._widgets.trust_view.mark_reliability`)."""
        s = self.session
        if s is not None and self.builder is not None:
            mark_reliability(self.viewer, self.builder.layer("predicted"), s.model, s.gene,
                             predicted=s.predicted is not None)

    def _predicted(self, result: jobs.PredictResult) -> None:
        s = self.session
        if s is None or result.section is not s.section or result.model is not s.model:
            return  # the slide or the model changed while it ran
        self._spot_trust = result.trust
        self.session.trust = result.trust  # exported with the prediction (lower / upper layers)
        if self.uncertainty is not None:
            self.uncertainty.set_trust(result.trust, result.expression.spot_index)
        self.session.set_prediction(result.expression)
        if self.builder is not None:
            self.builder.show_predicted_area(result.box)
        self._refresh_trust()
        self._show_scores()
        self._last_summary = prediction_summary(result, s.n_spots)
        self._shown_stain = result.stain_normalised
        self.status.setText(self._last_summary)
        if self.models.stain.isChecked() != result.stain_normalised:
            self._stain_toggled(self.models.stain.isChecked())  # changed while it ran
        self._show_in_use(result.device)

    def _stain_toggled(self, checked: bool) -> None:
        """The staining box changed: the map on screen was predicted the other way until Predict."""
        shown = self._shown_stain
        if shown is None or self.busy:
            return  # nothing predicted yet (or the running job sets the status when done)
        if checked == shown:
            self.status.setText(self._last_summary)
        else:
            self.status.setText(stain_change_note(checked))

    def cancel(self) -> None:
        """Stop the running prediction (see :meth:`JobRunner.cancel`)."""
        self.runner.cancel()

    # -- comparison ----------------------------------------------------------------------------
    def set_gene(self, gene: str) -> None:
        """Show ``gene``; an unknown name is refused and the box goes back to the map's gene."""
        if self.session is None:
            self.genes.set_current("")
            return
        try:
            self.session.set_gene(gene)
        except DataError as exc:
            shown = self.session.gene
            show_warning(f"{exc}; the map still shows {shown}" if shown else str(exc))
            self.genes.set_current(shown or "")

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
        if model is not None and self._spot_trust is not None and self._spot_trust.depth is not None:
            self.trust.uncertainty.setToolTip(uncertainty_tip(  # the depth these intervals are for
                model.trust.calibration, self._spot_trust.depth, s.section.name, self._spot_trust.inflation))
        self.trust.show_gene(model, s.gene)
        self.genes.set_genes(self.trust.gene_list(model, s.genes))
        if self.builder is None:
            return
        predicted = self.builder.layer("predicted")
        if predicted is not None:
            self._mark_reliability()
            interval = None if self.uncertainty is None else self.uncertainty.gene_interval(s.gene)
            predicted.metadata[META_KEY]["interval"] = interval  # hover: value (90 % interval lo–hi)
            predicted.metadata[META_KEY]["interval_level"] = None if interval is None else self.uncertainty.level
        self.trust.show_intervals(self._interval_line())
        if self.uncertainty is not None and self.trust.uncertainty.isChecked():
            self.uncertainty.show(True)

    def _interval_line(self) -> str:
        """The chosen gene's intervals against its predicted map's range, in words."""
        s = self.session
        interval = None if self.uncertainty is None else self.uncertainty.gene_interval(s.gene)
        if interval is None or s.predicted is None:
            return ""
        return interval_summary(s.gene, interval[:, 1] - interval[:, 0], s.gene_values(s.predicted),
                                self.uncertainty.level)

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
                                     high_percentile=display.high_percentile, scale=display.scale)

    def _residual_toggled(self, visible: bool) -> None:
        if self.builder is not None:
            self.builder.set_residual_visible(visible)

    def set_side_by_side(self, enabled: bool) -> int:
        """Measured and predicted (and residual, when shown) in panels; returns the count."""
        if self.builder is None:
            return 1
        panels = self.builder.set_grid(enabled)
        self._mark_reliability()  # the canvas's UNRELIABLE label moves off the panels' titles
        if enabled and panels < 2:
            show_info(side_by_side_refusal(self.session))
        return panels

    def flip_measured_predicted(self) -> str | None:
        """One click: predicted in place of measured, or back; returns the role now shown."""
        if self.builder is None or self.builder.grid:
            return None
        shown = self.builder.flip()
        if shown is None:
            show_info("predict first: the flip needs both measured and predicted")
        return shown

    def _show_scores(self, *_: Any) -> None:
        s = self.session
        if s is None:
            return
        if s.gene is not None and s.genes:
            self.display.show_limits(s.contrast_limits(), s.gene)
        scores = s.scores()
        if scores is None:
            self.scores.setText("Pearson r and MAE appear when both predicted and measured exist")
            return
        notice = self.trust.seen_notice
        self.scores.setText(f"{scores.gene}: Pearson r {scores.pearson:.3f} · MAE {scores.mae:.3f} "
                            f"over {scores.n_spots} spots in scope"
                            + (f" — {notice}" if notice else ""))
        self.scores.setToolTip("agreement of predicted and measured values of this gene over the "
                               "spots that have both: Pearson r (1: same pattern, 0: unrelated) and "
                               "mean absolute error in log10(1 + 10⁴·x/Σ)")

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
        kind = {".h5ad": "AnnData (*.h5ad)", ".csv": "CSV (*.csv)",
                ".zarr": "SpatialData (*.zarr)"}[suffix]
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


def describe_model(info: dict[str, Any]) -> tuple[str, str]:
    """The model in a pathologist's words, and the technical detail for a tooltip."""
    name = str(info.get("model", "model"))
    members = info.get("members") or []

    def family(model: str) -> str:
        return "DKAN" if model.startswith("dkan") else "TRIPLEX" if model == "triplex" else model

    if members:
        counts = Counter(family(str(m["model"])) for m in members)  # first-seen order kept
        kind = "ensemble of " + " + ".join(f"{n} {f}" if n > 1 else f for f, n in counts.items())
    else:
        kind = "DKAN model" if name.startswith("dkan") else f"{name} model"
    trained = info.get("trained_on") or []
    text = f"{kind} · {info['genes']} genes"
    if trained:
        text += f" · learned from sections {', '.join(map(str, trained))}"
    if members:
        details = ["the mean of its networks' predictions, weighted:"] + [
            f"  {m['model']}" + (f" ({m['preset']} preset)" if m.get("preset") else "")
            + f", weight {m['weight']:.2f}, {m['parameters']:,} parameters" for m in members]
    else:
        details = [f"network: {name}" + (f" ({info['preset']} preset)" if info.get("preset") else "")]
    details.append(f"image encoder {info['image_encoder']} (turns tissue tiles into features)")
    text_encoders = [info.get("text_encoder")] + [m.get("text_encoder") for m in members]
    for enc in dict.fromkeys(t for t in text_encoders if t):
        details.append(f"text encoder {enc} (reads the genes' descriptions)")
    return text, "\n".join(details)


def prediction_summary(result: jobs.PredictResult, n_spots: int) -> str:
    """What a prediction covered, how long it took, and any values raised to the floor."""
    n = len(result.expression)
    how = "from the cache" if result.cached else f"in {result.seconds:.1f} s"
    where = (f"{n} of {n_spots} spots in the outlined field of view" if result.box is not None
             else f"{n} spots")
    text = f"predicted {where} {how}"
    if result.stain_normalised:
        text += f"; {STAIN_MATCHED}"
    if result.clipped:
        text += (f"; {result.clipped} values below 0 (not detected) shown as 0")
    return text


def side_by_side_refusal(session: SpotSession | None) -> str:
    """Why side by side shows one panel: a slide without measured data never gets a second."""
    if session is not None and session.predicted is not None and session.measured is None:
        return "no measured data on this slide: side by side compares predicted with measured"
    return "side by side needs two layers: predict first (and open measured data)"


#: how the status line says a prediction read the slide with its staining matched to the model's
STAIN_MATCHED = "slide staining matched to the training slides (Reinhard)"


def stain_change_note(checked: bool) -> str:
    """What the status line says when the staining box changes after a prediction."""
    return ("staining match on" if checked else "staining match off") + \
        ": press Predict to apply it (the map still shows the previous prediction)"


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
