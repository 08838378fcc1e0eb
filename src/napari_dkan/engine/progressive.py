"""Whole-slide prediction in an order that serves the user: what is in view, then coarse to fine.

On a CPU a large slide takes minutes to encode, so the spots are predicted in stages and each
stage's values are handed out as soon as it is done:

1. the spots in view (when a view is given);
2. a whole-slide coarse map: one spot per cell of a ``k × pitch`` grid (every k-th lattice spot
   across the tissue), for k in :data:`LEVELS` (8, 4, 2): 1/64, then 1/16, then 1/4 of the spots;
3. the gaps: every other spot, in row-major chunks of at most :data:`CHUNK` spots.

Features are extracted once for the whole slide's layout (:func:`~napari_dkan.features.section.
extract_in_stages`): each tile is encoded once, in the stage of the first spot that needs it, so
the staged extraction costs the same encoder passes as a one-shot one.  (With 5×5 region tiles
of 224 px around spots 100 µm apart, the first coarse level already needs about half of the grid
tiles; that, not the spot count, sets the time to the first whole-slide map.)

**Partial slide context.**  The slide-context branch attends over all spots of the slide.  A stage
is predicted with the context of the spots encoded so far (its own and all earlier stages'), the
only context there is at that point — as a field-of-view prediction sees only the spots in view.
When the last stage is done, every spot that was predicted with partial context is predicted
again with the whole slide's context, so the finished map equals a one-shot prediction exactly;
the earlier values are previews.  How far the previews are from the final values is measured by
``benchmarks/progressive_map.py`` (mean |Δ| and per-gene r; see benchmarks/README.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_dkan.progress import CancelToken

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io.dataset import Section

#: coarse levels: one spot per (k × pitch)² cell, coarsest first
LEVELS = (8, 4, 2)
#: largest stage of the final fill, in spots (more stages: more frequent updates)
CHUNK = 2000


@dataclass(frozen=True)
class Stage:
    """Spots to predict together; ``name`` says what they are (``view``, ``coarse 1/64``, …)."""

    name: str
    index: np.ndarray  # spot indices into the section's spot table


@dataclass(frozen=True)
class StagePrediction:
    """Values of some spots, available now.

    ``final`` is True for values made with the whole slide's context (a stage is final when no
    spot is left to encode after it, and the refinement at the end is final).  ``context`` is
    the number of spots whose features the slide-context branch saw.
    """

    stage: str
    spot_index: np.ndarray  # (n,) indices into the section's spot table
    values: np.ndarray  # (n, G) float32
    context: int
    final: bool


def lattice_pitch(xy: np.ndarray) -> float:
    """The spot spacing: the median distance from a spot to its nearest neighbour."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(max(np.median(dist[:, 1]), 1e-6))


def every_kth(xy: np.ndarray, k: int, pitch: float) -> np.ndarray:
    """One spot per (k·pitch)-sided cell: the spot nearest the cell's centre (sorted indices)."""
    if len(xy) == 0:
        return np.zeros(0, np.int64)
    side = k * pitch
    origin = xy.min(axis=0)
    cell = np.floor((xy - origin) / side).astype(np.int64)
    centre = origin + (cell + 0.5) * side
    dist = np.hypot(*(xy - centre).T)
    cell_id = cell[:, 0] * (int(cell[:, 1].max()) + 1) + cell[:, 1]
    order = np.lexsort((dist, cell_id))
    _, first = np.unique(cell_id[order], return_index=True)
    return np.sort(order[first])


def plan_stages(xy: np.ndarray, in_view: np.ndarray | None = None, levels: tuple[int, ...] = LEVELS,
                chunk: int | None = None) -> list[Stage]:
    """The stages for spots at ``xy`` (N×2 pixels), the spots ``in_view`` first; the fill in
    chunks of at most ``chunk`` spots (default :data:`CHUNK`)."""
    chunk = CHUNK if chunk is None else chunk
    n = len(xy)
    taken = np.zeros(n, bool)
    stages: list[Stage] = []

    def add(name: str, index: np.ndarray) -> None:
        index = np.asarray(index, np.int64)
        index = index[~taken[index]]
        if index.size:
            taken[index] = True
            stages.append(Stage(name, np.sort(index)))

    if in_view is not None:
        add("view", in_view)
    pitch = lattice_pitch(xy)
    for k in levels:
        add(f"coarse 1/{k * k}", every_kth(xy, k, pitch))
    rest = np.flatnonzero(~taken)
    if rest.size:
        # row-major (y, then x), so each chunk fills a band of the slide
        rest = rest[np.lexsort((xy[rest, 0], xy[rest, 1]))]
        parts = int(np.ceil(rest.size / max(chunk, 1)))
        for i, part in enumerate(np.array_split(rest, parts)):
            add(f"fill {i + 1}/{parts}", part)
    return stages


def predict_in_stages(
    model: TrainedModel,
    section: Section,
    stages: list[Stage],
    device: str = "auto",
    runtime: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    cancel: CancelToken | None = None,
    refine: bool = True,
) -> Iterator[StagePrediction]:
    """Predict ``section`` stage by stage (see the module notes); yields each stage's values.

    With ``refine`` (the default) the spots predicted with partial context are predicted again
    at the end with the whole slide's context, so that the values last yielded for each spot
    equal a one-shot prediction.  From the feature cache, everything comes in one final stage.
    """
    from napari_dkan.engine.data import section_data_from_features
    from napari_dkan.features import with_spots
    from napari_dkan.features.section import extract_in_stages

    spec = model.features
    n = len(section.spots)
    feats_cb = (lambda d, t: progress("features", d, t)) if progress else None
    pred_cb = (lambda d, t: progress("predicting", d, t)) if progress else None
    predicted = np.zeros(n, bool)
    partial = np.zeros(n, bool)  # predicted with less than the whole slide as context
    names = {}
    for stage in stages:
        for i in stage.index:
            names.setdefault(int(i), stage.name)
    full_data = None
    for done, feats in extract_in_stages(
        section, [s.index for s in stages], encoder=spec.encoder, mode=spec.mode,
        tile_px=spec.tile_px, target_mpp=spec.target_mpp, tokens=model.needs.patch_tokens,
        device=device, progress=feats_cb, cancel=cancel, runtime=runtime, stain=model.stain,
    ):
        everything = len(done) == n
        subset = section if everything else with_spots(section, done)
        data = section_data_from_features(subset, feats, spec, None, model.needs, model.smoothing,
                                          stain=model.stain)
        rows = np.flatnonzero(~predicted[done])
        if rows.size == 0:
            continue
        values = model.predict(data, device=device, cancel=cancel, progress=pred_cb, rows=rows)
        new = done[rows]
        predicted[new] = True
        partial[new] = not everything
        stage = "all" if everything and len(rows) == n else names.get(int(new[0]), "rest")
        yield StagePrediction(stage, new, values.astype(np.float32, copy=False), len(done), everything)
        if everything:
            full_data = data
    if refine and partial.any() and full_data is not None:
        rows = np.flatnonzero(partial)
        values = model.predict(full_data, device=device, cancel=cancel, progress=pred_cb, rows=rows)
        yield StagePrediction("refined", rows, values.astype(np.float32, copy=False), n, True)
