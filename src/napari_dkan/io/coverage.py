"""How much of a model's gene panel a section measures, and whether the data fit the model.

A model predicts its own panel; measured values (and every score against them) exist only for
the panel genes the section's counts hold.  When few do — a matrix named by Ensembl ids that
could not be mapped, another tissue's panel, mouse data for a human model — the user must be
told rather than shown an empty or half-empty comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from napari_dkan.io.dataset import Section
from napari_dkan.io.gene_names import looks_mouse

#: below this share of the panel measured, the dock says so
FEW = 0.5


@dataclass(frozen=True)
class PanelCoverage:
    measured: int
    total: int
    missing: tuple[str, ...]
    #: the section's gene names are mouse-style (Actb, ENSMUSG…) while the panel is human
    mouse: bool

    @property
    def few(self) -> bool:
        return self.total > 0 and self.measured < FEW * self.total

    def message(self, trained_on: str = "") -> str:
        """One or two sentences for the user; empty when nothing needs saying."""
        parts = []
        if self.mouse:
            parts.append("this section's gene names are mouse genes, and the model predicts human "
                         "genes" + (f" (trained on {trained_on})" if trained_on else "")
                         + ": its predictions do not apply to this tissue")
        if self.few:
            shown = ", ".join(self.missing[:5]) + ("…" if len(self.missing) > 5 else "")
            parts.append(f"only {self.measured} of the model's {self.total} genes are measured in "
                         f"this section (missing e.g. {shown}): measured values and scores cover "
                         f"those {self.measured}")
        return "; ".join(parts)


def panel_coverage(section: Section, panel: Sequence[str]) -> PanelCoverage:
    """Coverage of ``panel`` by the section's counts (nothing measured without counts)."""
    panel = list(panel)
    if not section.has_counts:
        return PanelCoverage(0, len(panel), tuple(panel), False)
    genes = [str(g) for g in section.counts.genes]
    present = set(genes)
    missing = tuple(g for g in panel if g not in present)
    mouse = looks_mouse(genes) and not looks_mouse(panel)
    return PanelCoverage(len(panel) - len(missing), len(panel), missing, mouse)
