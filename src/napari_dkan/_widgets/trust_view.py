"""How far to trust what the prediction dock shows, in words and in one extra layer.

- :class:`TrustPanel`: the chosen gene's expected r on unseen sections with its verdict
  (reliable ≥ 0.3 > weak ≥ 0.1 > unreliable), the gene list's order / filter by it, a notice when
  the section in view trained or selected the model, the model's lineage, an out-of-domain
  banner, and the *uncertainty layer* switch.  When a run lacks a part (older runs), it says so.
- :class:`UncertaintyLayer`: the chosen gene's interval width per spot (its own colormap).
- :func:`mark_reliability`: the predicted layer of an unreliable gene is drawn faded and the
  canvas carries a label saying the gene is unreliable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_dkan._widgets.expression import COLOUR_VALUE, spot_features
from napari_dkan._widgets.sources import META_KEY
from napari_dkan._widgets.spots_layer import SpotsLayer
from napari_dkan.engine.reliability import verdict

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.engine.trust import SpotTrust

UNCERTAINTY = "uncertainty"
UNCERTAINTY_COLORMAP = "bop orange"  # not the expression colormap: a width is not a level
PANEL_ORDER, BY_RELIABILITY, RELIABLE_ONLY = "panel order", "most reliable first", "hide unreliable genes"
SEEN_NOTICE = "this section was used to {what} the model: the score is optimistic"
OOD_BANNER = ("⚠ this tissue looks unlike the model's training data ({domain}): predictions may be "
              "meaningless (out-of-domain score {score:.2f}, threshold {threshold:.2f})")
FADED_OPACITY, NORMAL_OPACITY = 0.35, 0.9
_WARN = "color: black; background-color: #f2b134; padding: 3px; border-radius: 3px;"
_ALARM = "color: white; background-color: #b3261e; padding: 4px; border-radius: 3px; font-weight: bold;"


def training_domain(model: TrainedModel) -> str:
    """The model's training data in words (the bundled model: HER2+ breast cancer)."""
    name = (model.config.get("dataset") or {}).get("name") or ""
    if "HER2" in name.upper():
        return "HER2+ breast cancer"
    return name or ", ".join(model.config.get("training", {}).get("train_sections") or []) or "unknown"


def seen_as(model: TrainedModel | None, section_name: str | None) -> str | None:
    """``training`` / ``validation`` when the section trained or selected the model, else None."""
    if model is None or section_name is None:
        return None
    return model.seen_sections.get(section_name)


def lineage_text(model: TrainedModel) -> str:
    """``fine-tuned from A (B4, C2) ← …`` for a fine-tuned run; empty otherwise."""
    chain = model.config.get("ancestry") or []
    if not chain:
        return ""
    own = ", ".join(model.config.get("training", {}).get("train_sections") or [])
    steps = [f"{a.get('name')} (trained on {', '.join(a.get('train_sections') or []) or '?'})"
             for a in reversed(chain)]
    return f"fine-tuned on {own or '?'} from " + " ← ".join(steps)


class TrustPanel(QWidget):
    """The dock's trust section; see the module docstring."""

    order_changed = Signal()
    uncertainty_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.banner = QLabel(wordWrap=True, styleSheet=_ALARM)
        self.banner.hide()
        self.seen = QLabel(wordWrap=True, styleSheet=_WARN)
        self.seen.hide()
        self.gene_line = QLabel("choose a model to see how reliable each gene is", wordWrap=True)
        self.lineage = QLabel(wordWrap=True)
        self.lineage.hide()
        self.missing = QLabel(wordWrap=True)
        self.missing.hide()
        self.interval_line = QLabel(wordWrap=True, toolTip=(
            "the chosen gene's median interval width against the spread of its predicted values "
            "(1st to 99th percentile over the predicted spots): an interval wider than that spread "
            "covers every level the map shows"))
        self.interval_line.hide()
        self.order = QComboBox(toolTip="order or filter the gene list by expected r on unseen sections "
                                       "(reliable ≥ 0.3, unreliable < 0.1)")
        self.order.addItems([PANEL_ORDER, BY_RELIABILITY, RELIABLE_ONLY])
        self.uncertainty = QCheckBox("Uncertainty layer", toolTip=uncertainty_tip(None))
        row = QHBoxLayout()
        row.addWidget(QLabel("genes:"))
        row.addWidget(self.order)
        row.addWidget(self.uncertainty)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (self.banner, self.gene_line, self.interval_line, self.seen, self.lineage, self.missing):
            layout.addWidget(w)
        layout.addLayout(row)
        self.order.currentIndexChanged.connect(lambda _: self.order_changed.emit())
        self.uncertainty.toggled.connect(self.uncertainty_toggled.emit)
        self._seen: str | None = None

    # -- what the panel knows --------------------------------------------------------------
    @property
    def seen_notice(self) -> str | None:
        if self._seen is None:
            return None
        return SEEN_NOTICE.format(what="train" if self._seen == "training" else "select (validate)")

    def show_model(self, model: TrainedModel | None, section_name: str | None) -> None:
        self._seen = seen_as(model, section_name)
        notice = self.seen_notice
        self.seen.setText(f"{section_name}: {notice}" if notice else "")
        self.seen.setVisible(notice is not None)
        text = lineage_text(model) if model is not None else ""
        self.lineage.setText(text)
        self.lineage.setVisible(bool(text))
        missing = model.trust.missing if model is not None else []
        self.missing.setText(("this model carries no " + ", no ".join(missing)
                              + " (trained before napari-dkan recorded them; `napari-dkan trust` adds them)")
                             if missing else "")
        self.missing.setVisible(bool(missing))
        cal = model.trust.calibration if model is not None else None
        self.uncertainty.setEnabled(cal is not None)
        self.uncertainty.setToolTip(uncertainty_tip(cal))
        self.show_domain(None, model)

    def show_gene(self, model: TrainedModel | None, gene: str | None) -> None:
        if model is None or gene is None:
            self.gene_line.setText("")
            return
        rel = model.trust.reliability
        if rel is None:
            self.gene_line.setText(f"{gene} — expected r on unseen sections: not recorded for this model")
            return
        text = rel.describe(gene)
        if verdict(rel.of(gene)) == "unreliable":
            text = f"<b>{text}</b> — do not read this gene's map as expression"
        self.gene_line.setText(text)

    def show_intervals(self, text: str) -> None:
        """The chosen gene's interval line (:func:`interval_summary`); empty: hidden."""
        self.interval_line.setText(text)
        self.interval_line.setVisible(bool(text))

    def show_domain(self, spot_trust: SpotTrust | None, model: TrainedModel | None) -> None:
        check = None if spot_trust is None else spot_trust.domain
        if check is None or not check.out_of_domain or model is None:
            self.banner.hide()
            return
        self.banner.setText(OOD_BANNER.format(domain=training_domain(model), score=check.score,
                                              threshold=check.threshold))
        self.banner.show()

    def gene_list(self, model: TrainedModel | None, genes: Sequence[str]) -> list[str]:
        """The panel in the chosen order (filtered when asked); the panel as is without reliability."""
        rel = None if model is None else model.trust.reliability
        mode = self.order.currentText()
        if rel is None or mode == PANEL_ORDER:
            return list(genes)
        ranked = [g for g in rel.order() if g in set(genes)] + [g for g in genes if g not in rel.genes]
        if mode == RELIABLE_ONLY:
            ranked = [g for g in ranked if verdict(rel.of(g)) != "unreliable"]
        return ranked


def text_overlay(viewer: Any) -> Any:
    """napari's canvas text overlay (``viewer.canvas.overlays.text`` since napari 0.9)."""
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    overlay = getattr(overlays, "text", None)
    return overlay if overlay is not None else getattr(viewer, "text_overlay", None)


def mark_reliability(viewer: Any, layer: Any, model: TrainedModel | None, gene: str | None,
                     predicted: bool = True) -> None:
    """Fade the predicted layer of an unreliable gene and label the canvas so; undo otherwise.

    The layer keeps its name (scripts find layers by name); the label is napari's canvas text
    overlay, shown only once there is a prediction (``predicted``): before it the canvas shows
    measured values, which the model's reliability says nothing about.
    """
    if layer is None:
        return
    rel = None if model is None or gene is None else model.trust.reliability
    bad = rel is not None and gene in rel.genes and verdict(rel.of(gene)) == "unreliable"
    r = None if rel is None else rel.of(gene)
    layer.opacity = FADED_OPACITY if bad else NORMAL_OPACITY
    overlay = text_overlay(viewer)
    if overlay is None:
        return
    if bad and predicted:
        overlay.text = (f"{gene}: UNRELIABLE (expected r {r:.2f})" if r is not None
                        else f"{gene}: UNRELIABLE (r not measurable)")
        overlay.color = (1.0, 0.35, 0.3, 1.0)
        overlay.font_size = 12
        # bottom left, always: the top left holds the layers' titles ("COL1A1 · measured", in
        # every panel side by side) and the top right the colorbars, under which a long label
        # ran on a narrow canvas
        overlay.position = "bottom_left"
        overlay.visible = True
    elif ": UNRELIABLE (" in overlay.text:
        overlay.visible = False  # ours: take it down (another tool's text is left alone)
        overlay.text = ""


#: what the per-spot width does not tell (benchmarks/README.md, "Turn 6": on held-out sections the
#: widths rank the spots' errors at Spearman ρ ≈ 0.19, and an interval of the same coverage with
#: one width per gene is as narrow on the sections of the calibration section's patient)
WIDTH_CAVEAT = ("Read the width as how far to trust this gene at this depth, not as a map of where the "
                "model errs: on unseen sections it follows the gene, its predicted level and the "
                "sequencing depth, and is about as wide where the model errs as where it does not.")


def uncertainty_tip(calibration: Any, depth: Any = None, section: str | None = None,
                    inflation: float = 1.0) -> str:
    """What the uncertainty layer shows, in short lines, the most important first: what the
    width is, what it is not (:data:`WIDTH_CAVEAT`), then — before a prediction the rule, after
    it (``depth``: the prediction's DepthProfile; ``inflation``: its out-of-domain factor on the
    model error) — the sequencing depth and the widening used."""
    head = ("The width of each spot's 90 % prediction interval for the chosen gene, in the map's units "
            "(calibrated on spots the model did not train on).")
    if calibration is None:
        return head
    lines = [head, WIDTH_CAVEAT, _depth_line(calibration, depth, section)]
    if inflation > 1.0:
        lines.append(f"Widened ×{inflation:.2f}: the model's error is taken that much larger, as these images "
                     "sit that much further from the training images than the calibration section's.")
    elif getattr(calibration, "domain_reference", None) is not None and depth is None:
        lines.append("Widened for a section whose images sit further from the training images than the "
                     "calibration section's.")
    return "\n".join(lines)


def _depth_line(calibration: Any, depth: Any, section: str | None) -> str:
    """Which sequencing depth the intervals are for (a measured reading is noisier when shallow)."""
    if calibration.measurement is None:
        return ("Calibrated before intervals knew the sequencing depth: a section sequenced shallower than "
                "the calibration section gets intervals that are too narrow (`napari-dkan trust` recalibrates).")
    reference = f"{calibration.measurement.reference.median:.0f}"
    if depth is None:
        own = "each spot's own" if calibration.spot_depth else "the section's own"
        return (f"For {own} sequencing depth when the section has counts, else the calibration "
                f"section's (median {reference} panel counts per spot).")
    if depth.source == "measured per spot":
        return (f"For each spot's own measured sequencing depth ({section or 'this section'}: "
                f"median {depth.median:.0f} panel counts per spot; calibration section: {reference}).")
    whose = {"measured": f"{section or 'this section'}'s own measured sequencing depth",
             "given": "the sequencing depth you gave"}.get(
        depth.source, "the calibration section's sequencing depth (this section has no counts)")
    return (f"For {whose}: median {depth.median:.0f} panel counts per spot "
            f"(calibration section: {reference}).")


class UncertaintyLayer:
    """The chosen gene's interval width over the section's spots (NaN where not predicted)."""

    def __init__(self, viewer: Any, builder: Any) -> None:
        self.viewer = viewer
        self.builder = builder
        self.layer: SpotsLayer | None = None
        #: (N spots of the section, G, 2): each spot's lower and upper bound; NaN off-scope
        self.bounds: np.ndarray | None = None
        self.level = 0.9
        self._stale = False

    @property
    def widths(self) -> np.ndarray | None:
        """(N, G) interval widths (NaN where not predicted)."""
        return None if self.bounds is None else self.bounds[..., 1] - self.bounds[..., 0]

    def set_trust(self, spot_trust: SpotTrust | None, spot_index: np.ndarray | None) -> None:
        session = self.builder.session
        if spot_trust is None or spot_trust.lower is None or spot_index is None:
            self.bounds = None
            return
        full = np.full((session.n_spots, spot_trust.lower.shape[1], 2), np.nan, dtype=np.float32)
        full[spot_index, :, 0] = spot_trust.lower
        full[spot_index, :, 1] = spot_trust.upper
        self.bounds = full
        self.level = spot_trust.level
        self._stale = True
        if self.layer is not None and self.layer in self.viewer.layers:
            self._fill()

    def gene_interval(self, gene: str | None) -> np.ndarray | None:
        """The gene's (N, 2) lower and upper bounds per spot of the section."""
        session = self.builder.session
        if self.bounds is None or gene is None or session.model is None or gene not in session.model.panel:
            return None
        return self.bounds[:, session.model.panel.index(gene), :]

    def show(self, visible: bool) -> SpotsLayer | None:
        if not visible:
            if self.layer is not None and self.layer in self.viewer.layers:
                self.layer.visible = False
            return self.layer
        if self.bounds is None:
            return None
        if self.layer is None or self.layer not in self.viewer.layers:
            self._add()
        self.layer.visible = True
        self._fill()
        return self.layer

    def _add(self) -> None:
        session = self.builder.session
        spots = session.section.spots
        scale, translate, units = self.builder._pixel_frame()
        diameter = spots.diameter_px or spots.diameter_um / float(session.section.mpp)
        self.layer = SpotsLayer(
            np.column_stack([spots.y, spots.x]), features=self._features(), size=diameter,
            scale=scale, translate=translate, units=units, border_width=0, opacity=0.9,
            name=f"{session.section.name} · uncertainty ({round(100 * self.level)} % interval width)",
            metadata={META_KEY: {"role": UNCERTAINTY, "source": session.source.to_metadata(),
                                 "gene": session.gene}},
        )
        self._stale = False
        self.layer.text.visible = False  # no text labels: napari's "display text" box must say so
        self.viewer.add_layer(self.layer)
        from napari_dkan._widgets.layer_controls import hide_colour_controls

        hide_colour_controls(self.viewer, self.layer)  # coloured by interval width, not a face colour

    def _features(self) -> Any:
        session = self.builder.session
        features = spot_features(session.section.spots.spot_id, session.model.panel, self.widths)
        features[COLOUR_VALUE] = np.float32(np.nan)  # coloured through it (see SpotsLayer.colour_by)
        return features

    def _fill(self) -> None:
        layer, gene = self.layer, self.builder.session.gene
        if layer is None or gene is None:
            return
        if self._stale:
            layer.features = self._features()
            self._stale = False
        if gene not in layer.features:
            return
        values = layer.features[gene].to_numpy()
        layer.metadata[META_KEY]["gene"] = gene
        with layer.one_redraw():
            layer.colour_by(values, UNCERTAINTY_COLORMAP, uncertainty_limits(values),
                            np.isfinite(values))
        colorbar = getattr(layer, "face_colorbar", None)
        if colorbar is not None:
            colorbar.visible = True
        from napari_dkan._widgets.canvas_text import set_layer_text
        from napari_dkan._widgets.layers import TITLE

        # which of the two colorbars is this one: without it the orange bar had no name
        set_layer_text(layer, TITLE, uncertainty_title(gene, self.level), position="top_left")


def uncertainty_limits(widths: np.ndarray) -> tuple[float, float]:
    """Colour limits of the uncertainty layer: 0 to the 99th percentile of the widths shown.

    Turn 5 stretched them over the 1st–99th percentile, so that B4's ERBB2 widths (1.95–2.59)
    were not all the same orange; a new user then read the darkest spots as "sure", though every
    one of those intervals was wider than the whole predicted map — and on held-out sections the
    per-spot differences barely follow the errors (benchmarks/README.md, "Turn 6").  From 0, an
    all-wide map is all orange, as it should be; the dock's interval line says how the widths
    compare with the predicted map's range.
    """
    finite = np.asarray(widths, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0
    hi = float(np.percentile(finite, 99))
    return 0.0, hi if hi > 0 else 1.0


def interval_summary(gene: str, widths: np.ndarray | None, predicted: np.ndarray | None,
                     level: float) -> str:
    """The chosen gene's intervals in one line, against the spread of its predicted map: whether
    the map's spots can be told apart at all."""
    if widths is None or predicted is None:
        return ""
    w = np.asarray(widths, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64)
    ok = np.isfinite(w) & np.isfinite(p)
    if not ok.any():
        return ""
    width = float(np.median(w[ok]))
    lo, hi = (float(v) for v in np.percentile(p[ok], [1, 99]))
    head = f"{gene}: {round(100 * level)} % intervals {width:.2f} wide (median)"
    spread = f"the predictions' spread ({lo:.2f}–{hi:.2f})"  # 1st–99th percentile (the label's tooltip)
    if width >= hi - lo:
        return f"{head}, wider than {spread}: the map cannot tell its spots apart"
    return f"{head}, {round(100 * width / (hi - lo))} % of {spread}"


def uncertainty_title(gene: str, level: float) -> str:
    """The uncertainty layer's title on the canvas (it names the orange colorbar)."""
    return f"{gene} · {round(100 * level)} % interval width"
