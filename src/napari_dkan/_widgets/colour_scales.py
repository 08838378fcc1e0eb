"""What a spot's colour means: the quantity, the colour scale in use, and the words for both.

No Qt, no napari: the session computes limits and shown values with these functions, and the
layer builder and the dock show the words.  Values are in the model's target space,
``log10(1 + 10⁴·x/Σ)`` (x: the gene's counts in the spot, Σ: the spot's counts over the panel),
whose floor is 0 (a gene not detected in the spot).

Three scales are offered:

- **per-gene stretch** — the colour range spans chosen percentiles of this gene's values
  (measured and predicted together): every gene uses the whole colormap, so patterns show, but
  a colour means a different level for each gene;
- **fixed scale** — one range for every gene of the panel (0 to a high percentile of all
  values): a colour means the same expression whatever the gene, so genes compare;
- **z-score** — each source (measured, predicted) standardised over the section's spots:
  spots above (below) the section's mean for that gene, in standard deviations; where the
  pattern matters more than the level (a model that predicts the right places at the wrong
  level still reads right).
"""

from __future__ import annotations

import enum

import numpy as np

#: the quantity shown, as a formula and in words
QUANTITY = "log10(1 + 10⁴·x/Σ)"
QUANTITY_WORDS = ("expression on a log scale: log10(1 + 10⁴·x/Σ), where x is the gene's counts "
                  "in the spot and Σ the spot's counts over the model's genes; 0 means not "
                  "detected, 1 about 9 and 2 about 99 counts per 10,000")
#: the lowest value of the quantity: a gene with no counts in the spot
FLOOR = 0.0
#: z-scores shown from −Z_RANGE to +Z_RANGE standard deviations
Z_RANGE = 2.5


class ColourScale(str, enum.Enum):
    PER_GENE = "per-gene stretch"
    FIXED = "fixed scale (all genes)"
    Z_SCORE = "z-score in this section"

    def __str__(self) -> str:
        return self.value

    @property
    def tooltip(self) -> str:
        return {
            ColourScale.PER_GENE: "the colours span the chosen percentiles of this gene's values "
                                  "(measured and predicted together): patterns show for every "
                                  "gene, but a colour means a different level for each gene",
            ColourScale.FIXED: "one colour range for every gene of the panel (0 to the high "
                               "percentile of all values): a colour means the same expression "
                               "whatever the gene",
            ColourScale.Z_SCORE: "measured and predicted each standardised over this section's "
                                 "spots: standard deviations above or below the section's mean "
                                 f"for the gene, shown from −{Z_RANGE:g} to +{Z_RANGE:g}",
        }[self]


def z_scores(values: np.ndarray) -> np.ndarray:
    """(v − mean) / SD over the finite values (NaN stays NaN; a constant source gives 0)."""
    values = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return values.copy()
    mean = float(values[finite].mean())
    sd = float(values[finite].std())
    out = values - mean
    return out / sd if sd > 0 else np.where(finite, 0.0, np.nan).astype(np.float32)


def percentile_limits(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low``–``high`` percentiles of the finite values (a widened range when constant)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if not hi > lo:  # a constant gene: widen so the colormap stays defined
        lo, hi = lo - 0.5, hi + 0.5
    return (lo, hi)


def fixed_limits(all_values: np.ndarray, high: float) -> tuple[float, float]:
    """From the floor to the ``high`` percentile of every value of every gene."""
    finite = all_values[np.isfinite(all_values)]
    if finite.size == 0:
        return (FLOOR, 1.0)
    hi = float(np.percentile(finite, high))
    return (FLOOR, hi if hi > FLOOR else FLOOR + 1.0)


def describe_scale(scale: ColourScale, low: float, high: float) -> str:
    """One line for the dock and the colorbar: which scale is in use."""
    if scale is ColourScale.PER_GENE:
        return f"per-gene stretch, {low:g}–{high:g} percentile"
    if scale is ColourScale.FIXED:
        return f"fixed scale for all genes, 0 to {high:g} percentile"
    return f"z-score in this section, ±{Z_RANGE:g} SD"


def colorbar_heading(gene: str, section: str) -> str:
    """The colorbar title's first line(s): "ERBB2 (C2)", or the section on a line of its own when
    that would be the widest line: napari places the colorbar beside this text from a width
    measured in Qt's font, which the canvas's font exceeds on long lines, so a long slide name
    ("ERBB2 (CMU-1-Small-Region)") ran over the colorbar."""
    one = f"{gene} ({section})"
    return one if len(one) <= len(QUANTITY) else f"{gene}\n({section})"


def colorbar_title(gene: str, scale: ColourScale, low: float, high: float) -> str:
    """The text above the colorbar: the gene, the quantity, the scale (short lines: it sits in
    a corner of a panel)."""
    if scale is ColourScale.Z_SCORE:
        return f"{gene}\nz-score: SD from\nthe section mean"
    how = f"{low:g}–{high:g} % stretch" if scale is ColourScale.PER_GENE else "fixed for all genes"
    return f"{gene}\n{QUANTITY}\n{how}"


def residual_title(gene: str) -> str:
    return f"{gene} predicted − measured\n{QUANTITY}"


def panel_title(gene: str, role: str) -> str:
    """A side-by-side panel's title, e.g. "ERBB2 · measured"."""
    return f"{gene} · {role}"
