"""The dock's state without Qt: one section, its model, predicted and measured values, the gene.

:class:`SpotSession` is the model of the model/view split: the dock's controls change it, and
the layer builder listens to its signals and updates napari layers in place.  It knows nothing
about napari or Qt, so tests can drive it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_dkan._widgets.colour_scales import (
    Z_RANGE,
    ColourScale,
    fixed_limits,
    percentile_limits,
    z_scores,
)
from napari_dkan._widgets.expression import Expression
from napari_dkan._widgets.sources import SectionSource
from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io.dataset import Section

#: offered in the dock; any napari colormap name works
COLORMAPS = ("viridis", "magma", "inferno", "plasma", "turbo", "gray")
RESIDUAL_COLORMAP = "PiYG"  # diverging: the sign of the error reads at a glance


@dataclass(frozen=True)
class Display:
    """How values become colours: a colormap, a colour scale and its percentiles."""

    colormap: str = "viridis"
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    scale: ColourScale = ColourScale.PER_GENE

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise DataError(f"percentiles must satisfy 0 ≤ low < high ≤ 100, got "
                            f"{self.low_percentile}, {self.high_percentile}")


@dataclass(frozen=True)
class GeneScores:
    """Agreement of predicted and measured values of one gene over the spots in scope."""

    gene: str
    pearson: float
    mae: float
    n_spots: int


class SpotSession:
    """One section shown in napari, with whatever is known about its expression."""

    model_changed = Signal()
    #: measured or predicted values changed (one signal, so a new model redraws once)
    values_changed = Signal()
    gene_changed = Signal(str)
    display_changed = Signal()

    def __init__(self, source: SectionSource, section: Section) -> None:
        self.source = source
        self.section = section
        self.model: TrainedModel | None = None
        self.measured: Expression | None = None
        self.predicted: Expression | None = None
        #: intervals and out-of-domain check of ``predicted`` (engine.trust.SpotTrust), if any
        self.trust: Any = None
        self.gene: str | None = None
        self.display = Display()

    # -- what is known ---------------------------------------------------------------------
    @property
    def genes(self) -> tuple[str, ...]:
        """The panel the gene picker offers: the model's, else the measured one."""
        if self.model is not None:
            return tuple(self.model.panel)
        if self.measured is not None:
            return self.measured.genes
        return ()

    @property
    def n_spots(self) -> int:
        return len(self.section.spots)

    def set_model(self, model: TrainedModel, measured: Expression | None) -> None:
        """A new model: its panel replaces the gene list; old predictions no longer apply."""
        if measured is not None and measured.genes != tuple(model.panel):
            raise ValueError("measured values must be in the model's panel")
        self.model = model
        self.predicted = None
        self.trust = None
        self.measured = measured
        self._keep_gene()
        self.model_changed.emit()
        self.values_changed.emit()
        self.gene_changed.emit(self.gene or "")

    def set_measured(self, measured: Expression | None) -> None:
        self.measured = measured
        changed = self._keep_gene()
        self.values_changed.emit()
        if changed:
            self.gene_changed.emit(self.gene or "")

    def set_prediction(self, predicted: Expression) -> None:
        if self.model is None or predicted.genes != tuple(self.model.panel):
            raise ValueError("a prediction must come from the session's model")
        self.predicted = predicted
        self.values_changed.emit()

    def set_gene(self, gene: str) -> None:
        gene = self.resolve_gene(gene)
        if gene != self.gene:
            self.gene = gene
            self.gene_changed.emit(gene)

    def resolve_gene(self, text: str) -> str:
        """A panel gene from what the user typed (case-insensitive); raises when unknown."""
        text = text.strip()
        if text in self.genes:
            return text
        folded = {g.casefold(): g for g in self.genes}
        if text.casefold() in folded:
            return folded[text.casefold()]
        raise DataError(f"{text!r} is not in the panel of {len(self.genes)} genes")

    def set_display(self, **changes: object) -> None:
        new = replace(self.display, **changes)  # validated in Display.__post_init__
        if new != self.display:
            self.display = new
            self.display_changed.emit()

    def _keep_gene(self) -> bool:
        """Keep the current gene if the panel has it, else take the panel's first one that the
        model's reliability does not call unreliable (→ changed): a first look should not open on
        a gene whose map is noise."""
        genes = self.genes
        if self.gene in genes:
            return False
        self.gene = genes[0] if genes else None
        rel = None if self.model is None else self.model.trust.reliability
        if rel is not None:
            from napari_dkan.engine.reliability import verdict

            self.gene = next((g for g in genes if g in rel.genes and verdict(rel.of(g)) != "unreliable"),
                             self.gene)
        return True

    # -- values for the current gene -------------------------------------------------------
    def gene_values(self, which: Expression | None, gene: str | None = None) -> np.ndarray:
        """Values over every spot of the section (NaN where ``which`` has none)."""
        out = np.full(self.n_spots, np.nan, dtype=np.float32)
        gene = gene or self.gene
        if which is not None and gene is not None:
            out[which.spot_index] = which.column(gene)
        return out

    def residual(self, gene: str | None = None) -> np.ndarray:
        """Predicted − measured over every spot (NaN where either is missing)."""
        return self.gene_values(self.predicted, gene) - self.gene_values(self.measured, gene)

    def shown_values(self, which: Expression | None, gene: str | None = None) -> np.ndarray:
        """What the colours show over every spot: the values, or their z-scores (see the scale)."""
        values = self.gene_values(which, gene)
        return z_scores(values) if self.display.scale is ColourScale.Z_SCORE else values

    def contrast_limits(self) -> tuple[float, float]:
        """Shared limits of predicted and measured, by the display's colour scale."""
        d = self.display
        if d.scale is ColourScale.Z_SCORE:
            return (-Z_RANGE, Z_RANGE)
        if d.scale is ColourScale.FIXED:
            return fixed_limits(self._all_values(), d.high_percentile)
        both = np.concatenate([self.gene_values(self.predicted), self.gene_values(self.measured)])
        return percentile_limits(both, d.low_percentile, d.high_percentile)

    def _all_values(self) -> np.ndarray:
        """Every value of every gene of both sources (cached until either changes)."""
        key = getattr(self, "_all_key", (None, None, None))
        if key[0] is not self.measured or key[1] is not self.predicted:
            parts = [e.values.ravel() for e in (self.measured, self.predicted) if e is not None]
            key = (self.measured, self.predicted,
                   np.concatenate(parts) if parts else np.empty(0, np.float32))
            self._all_key = key
        return key[2]

    def residual_limits(self) -> tuple[float, float]:
        """Symmetric limits (±m) so zero error sits at the colormap's centre."""
        res = np.abs(self.residual())
        res = res[np.isfinite(res)]
        m = float(np.percentile(res, self.display.high_percentile)) if res.size else 1.0
        m = m if m > 0 else 1.0
        return (-m, m)

    def scores(self) -> GeneScores | None:
        """Pearson r and MAE of the current gene over spots with both values, or None."""
        if self.gene is None or self.predicted is None or self.measured is None:
            return None
        from napari_dkan.engine.metrics import pearson_per_gene

        pred = self.gene_values(self.predicted)
        meas = self.gene_values(self.measured)
        both = np.isfinite(pred) & np.isfinite(meas)
        if not both.any():
            return None
        p, m = pred[both, None], meas[both, None]
        r = float(pearson_per_gene(p, m)[0])
        return GeneScores(self.gene, r, float(np.abs(p - m).mean()), int(both.sum()))

    # -- export ----------------------------------------------------------------------------
    def to_anndata(self):
        """The prediction as the engine writes it, with measured values in ``layers``."""
        from napari_dkan.engine.predict import record_stain, to_anndata

        if self.model is None or self.predicted is None:
            raise DataError("nothing to export yet: run a prediction first")
        measured = None
        if self.measured is not None:
            measured = self.measured.full(self.n_spots)[self.predicted.spot_index]
        adata = to_anndata(self.model, self.section, self.predicted.values, measured=measured,
                           spot_index=self.predicted.spot_index, spot_trust=self.trust)
        source = self.source.to_metadata()
        for key in ("path", "image"):  # absolute, so the file opens from anywhere
            if key in source:
                source[key] = str(Path(source[key]).resolve())
        adata.uns["napari_dkan"]["source"] = source
        record_stain(adata, self.model, self.section)
        return adata
