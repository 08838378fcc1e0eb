"""What hovering a spot says: where it is (in µm), and the gene's measured, predicted and
residual values together, whichever layer the pointer is over.

No Qt, no napari.  :func:`spot_hover` builds the lines from the session; the layer builder hands
each spots layer a closure over it.  Other features add lines without touching this module's
callers: append a :data:`HoverField` to :data:`EXTRA_FIELDS` (e.g. a prediction interval), or
pass ``extra=`` for one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari_dkan._widgets.session import SpotSession

#: a field: the session and a spot's index in the section → one more line (None: nothing to say)
HoverField = Callable[["SpotSession", int], "str | None"]
#: fields every hover shows after the values, in order
EXTRA_FIELDS: list[HoverField] = []


def spot_position_um(session: SpotSession, index: int) -> tuple[float, float]:
    """The spot's centre (x, y) in µm from the slide's top-left corner."""
    spots, mpp = session.section.spots, float(session.section.mpp)
    return float(spots.x[index]) * mpp, float(spots.y[index]) * mpp


def value_text(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "n/a"


def interval_text(lower: float, upper: float, level: float | None) -> str:
    """A prediction interval in words: "90 % interval 0.40–2.10"."""
    return (f"{round(100 * level)} % " if level else "") + f"interval {lower:.2f}–{upper:.2f}"


def spot_interval(interval: np.ndarray | None, index: int) -> tuple[float, float] | None:
    """Spot ``index``'s (lower, upper) from an (N, 2) array, when known there."""
    if interval is None or index >= len(interval) or not np.all(np.isfinite(interval[index])):
        return None
    return float(interval[index, 0]), float(interval[index, 1])


def gene_readings(session: SpotSession, index: int, interval: np.ndarray | None = None,
                  level: float | None = None) -> list[tuple[str, str]]:
    """(what, value text) of the current gene at the spot: measured, predicted (with its
    prediction interval when ``interval``, (N, 2) lower and upper per spot, is given), residual —
    as known.  The interval is shown as its bounds, not ± a half-width: a depth-aware interval is
    for the section's reading and need not be centred on the prediction."""
    readings = []
    measured = predicted = np.nan
    if session.measured is not None:
        measured = float(session.gene_values(session.measured)[index])
        readings.append(("measured", value_text(measured)))
    if session.predicted is not None:
        predicted = float(session.gene_values(session.predicted)[index])
        text = value_text(predicted)
        bounds = spot_interval(interval, index)
        if bounds is not None and np.isfinite(predicted):
            text += f" ({interval_text(*bounds, level)})"
        readings.append(("predicted", text))
    if np.isfinite(measured) and np.isfinite(predicted):
        readings.append(("residual", value_text(predicted - measured)))
    return readings


def spot_hover(session: SpotSession, index: int, extra: Sequence[HoverField] = (),
               interval: np.ndarray | None = None, level: float | None = None) -> list[str]:
    """The hover lines of spot ``index`` of the session's section (``interval``: the current
    gene's prediction interval per spot, (N, 2), shown as "predicted 1.10 (90 % interval
    0.40–2.10)" with ``level``)."""
    spots = session.section.spots
    x, y = spot_position_um(session, index)
    lines = [f"spot {spots.spot_id[index]} at x {x:,.0f} µm, y {y:,.0f} µm"]
    if session.gene is not None:
        readings = gene_readings(session, index, interval, level)
        if readings:
            lines.append(f"{session.gene}: " + " · ".join(f"{what} {v}" for what, v in readings))
    for field in (*EXTRA_FIELDS, *extra):
        line = field(session, index)
        if line:
            lines.append(line)
    return lines
