"""Expression values per spot and gene, as the plugin shows them (no Qt, no torch).

An :class:`Expression` is one source of values (measured or predicted) over some spots of a
section, in the model's target space: ``log10(1 + 10⁴·x/Σ_panel)``, grid-smoothed when the
model was trained on smoothed targets.  Measured values are computed with the data layer's
:func:`~napari_dkan.io.expression.section_targets`, so they are exactly what the model was
trained and evaluated against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_dkan._widgets.colour_scales import FLOOR
from napari_dkan.io.dataset import Section
from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

SPOT_ID = "spot_id"
#: the feature column the spots are coloured by: the shown gene's values on the colour scale in
#: use (its z-scores, for the z-score scale); not a gene, never exported
COLOUR_VALUE = "_colour"
#: genes shown when a section is opened without a model: its top genes by mean count
READER_PANEL_SIZE = 250


@dataclass(frozen=True, eq=False)
class Expression:
    """Values (spots × genes) of some spots of a section, in ``spot_index`` order.

    ``spot_index`` indexes the section's spot table.  NaN marks a gene the source lacks (a
    model gene absent from the measured counts).
    """

    genes: tuple[str, ...]
    values: np.ndarray  # (n, G) float32
    spot_index: np.ndarray  # (n,) int64
    #: how the values were made, for labels and exported metadata
    space: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        index = np.asarray(self.spot_index, dtype=np.int64)
        if values.shape != (len(index), len(self.genes)):
            raise ValueError(f"values {values.shape} do not match {len(index)} spots × "
                             f"{len(self.genes)} genes")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "spot_index", index)
        object.__setattr__(self, "genes", tuple(str(g) for g in self.genes))

    def __len__(self) -> int:
        return len(self.spot_index)

    def column(self, gene: str) -> np.ndarray:
        try:
            return self.values[:, self.genes.index(gene)]
        except ValueError:
            raise DataError(f"gene {gene!r} is not in this panel") from None

    def full(self, n_spots: int) -> np.ndarray:
        """(n_spots, G) values over every spot of the section, NaN where this source has none."""
        out = np.full((n_spots, len(self.genes)), np.nan, dtype=np.float32)
        out[self.spot_index] = self.values
        return out


def target_space(smoothing: bool) -> str:
    return "log10(1 + 10^4 x / panel total)" + (", grid-smoothed" if smoothing else "")


def clip_to_floor(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Predictions below the target space's floor (0: not detected) raised to it; and how many.

    ``log10(1 + x)`` of a count is never negative, but a regression head can predict below 0
    (S100A8 −0.27 on HER2ST C2): such a value means "not expressed", and is shown as that.
    """
    values = np.asarray(values, dtype=np.float32)
    below = values < FLOOR
    n = int(below.sum())
    return (np.where(below, np.float32(FLOOR), values) if n else values), n


def measured_expression(section: Section, panel: Sequence[str], smoothing: bool) -> Expression:
    """Measured targets of every spot of ``section`` for ``panel`` (NaN for absent genes)."""
    from napari_dkan.io.expression import section_targets

    if not section.has_counts:
        raise DataError(f"section {section.name} has no measured expression")
    panel = list(panel)
    present = set(section.counts.genes)
    values = section_targets(section, panel, smoothing=smoothing, missing="zero")
    absent = [k for k, g in enumerate(panel) if g not in present]
    if absent:
        values[:, absent] = np.nan  # zero would read as "measured, not expressed"
    return Expression(tuple(panel), values, np.arange(len(section.spots)), target_space(smoothing))


def reader_panel(section: Section, n: int = READER_PANEL_SIZE) -> list[str]:
    """The section's own top-``n`` genes by mean count (the paper's panel rule, one section)."""
    from napari_dkan.io.expression import select_panel

    return select_panel([section], n=n)


def gene_columns(features: pd.DataFrame) -> list[str]:
    """The gene columns of a spots layer's features (not the spot id nor the colour column)."""
    return [c for c in features.columns if c not in (SPOT_ID, COLOUR_VALUE)]


def spot_features(spot_id: np.ndarray, genes: Sequence[str], values: np.ndarray) -> pd.DataFrame:
    """One row per spot: its id, then one column per gene (napari Points ``features``)."""
    import pandas as pd

    frame = pd.DataFrame(np.asarray(values, dtype=np.float32), columns=list(genes))
    frame.insert(0, SPOT_ID, np.asarray(spot_id).astype(str))
    return frame
