"""Prediction for a section or a spot lattice, written as AnnData.

``obs``: one row per spot (array row/col, full-resolution pixel x/y, in-tissue flag);
``obsm["spatial"]``: (x, y) pixel centres, the scanpy convention; ``var``: the model's gene
panel; ``X``: predictions in the training target space (log10(1 + 10⁴·x/Σ) over the panel,
grid-smoothed when the model was trained on smoothed targets); ``uns["napari_dkan"]``: the
model's config summary; ``uns["spatial"][section]``: spot diameter and image path, so scanpy /
squidpy and this plugin can draw the spots.  When the section has measured counts, their
targets are stored in ``layers["measured"]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.engine.runs import TrainedModel
from napari_dkan.engine.trust import SpotTrust, assess
from napari_dkan.io.dataset import Section
from napari_dkan.io.expression import TARGET_MAX
from napari_dkan.progress import CancelToken


def predict_section(
    model: TrainedModel,
    section: Section,
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    cancel: CancelToken | None = None,
    level: float = 0.9,
    runtime: str = "auto",
    depth: float | None = None,
) -> Any:
    """An AnnData of the model's predictions for every spot of ``section``, with intervals at
    the nominal ``level`` and the out-of-domain score when the model carries them.

    ``runtime`` runs the image encoder (see :mod:`napari_dkan.features.runtimes`); ``depth``:
    the median panel total per spot the intervals are for (default: the section's own when it
    has counts, else the calibration section's)."""
    feats_cb = (lambda d, t: progress("features", d, t)) if progress else None
    pred_cb = (lambda d, t: progress("predicting", d, t)) if progress else None
    absent = absent_genes(model.panel, section)
    data = model.section_data(section, with_targets=section.has_counts and not absent, progress=feats_cb,
                              cancel=cancel, device=device, runtime=runtime)
    pred = model.predict(data, device=device, progress=pred_cb, cancel=cancel)
    check_finite(pred, section.name)
    measured = data.y
    if section.has_counts and absent and len(absent) < len(model.panel):
        measured = measured_targets(model, section, absent)
    # log10(1 + x) of a count is never negative: a prediction below 0 means "not detected" and is
    # written as 0, as the dock shows and exports it; nor is it above log10(1 + 10⁴) (a gene
    # holding the whole panel total): such a value is written as that (the intervals are taken
    # from the raw values)
    below, above = int((pred < 0).sum()), int((pred > TARGET_MAX).sum())
    adata = to_anndata(model, section, np.clip(pred, 0.0, TARGET_MAX), measured=measured,
                       spot_trust=assess(model.trust, pred, data, level, model.smoothing, depth))
    adata.uns["napari_dkan"]["raised_to_0"] = below
    adata.uns["napari_dkan"]["lowered_to_max"] = above
    cal = model.trust.calibration
    if cal is not None and np.isinf(cal.quantile(level)).any():
        # beyond what the calibration spots resolve: the conformal quantile is infinite
        adata.uns["napari_dkan"]["interval_unbounded"] = True
        adata.uns["napari_dkan"]["calibration_spots"] = len(cal.scores)
    if section.has_counts and absent:
        adata.uns["napari_dkan"]["measured_absent_genes"] = list(absent)
    record_stain(adata, model, section)
    return adata


def record_stain(adata: Any, model: TrainedModel, section: Section) -> None:
    """``uns["napari_dkan"]["stain_normalised"]`` and, when it was, the source and target
    statistics as JSON in ``["stain_normalisation"]``."""
    record = model.stain_record(section)
    adata.uns["napari_dkan"]["stain_normalised"] = record is not None
    if record is not None:
        adata.uns["napari_dkan"]["stain_normalisation"] = json.dumps(record)


def absent_genes(panel: list[str], section: Section) -> list[str]:
    """Panel genes the section's counts do not measure (prediction needs no counts; only the
    comparison with measured values is limited to the genes that are there)."""
    if not section.has_counts:
        return []
    have = set(section.load_counts().genes)
    return [g for g in panel if g not in have]


def measured_targets(model: TrainedModel, section: Section, absent: list[str]) -> np.ndarray:
    """Measured targets of the genes present; the absent genes' columns are NaN (not measured).

    The normalisation is over the panel genes measured (absent genes count as zero)."""
    from napari_dkan.io.expression import section_targets

    y = section_targets(section, model.panel, smoothing=model.smoothing, missing="zero")
    y[:, [model.panel.index(g) for g in absent]] = np.nan
    return y


def check_finite(pred: np.ndarray, section: str) -> None:
    """A prediction with a NaN or infinity is never written: say where it went wrong."""
    bad = ~np.isfinite(pred)
    if bad.any():
        from napari_dkan.io.errors import DataError

        spots = int(bad.any(axis=1).sum())
        raise DataError(f"the prediction for {spots} of {len(pred)} spots of {section} is not a number "
                        "(non-finite image features or weights); nothing was written. Check the slide's "
                        "pixels and the model's weights")


def to_anndata(model: TrainedModel, section: Section, pred: np.ndarray,
               measured: np.ndarray | None = None, spot_index: np.ndarray | None = None,
               spot_trust: SpotTrust | None = None) -> Any:
    import anndata
    import pandas as pd

    spots = section.spots if spot_index is None else section.spots.subset(spot_index)
    obs = pd.DataFrame(
        {"array_row": spots.array_row, "array_col": spots.array_col, "x": spots.x, "y": spots.y,
         "in_tissue": spots.in_tissue.astype(np.int8)},
        index=pd.Index(spots.spot_id, name="spot_id"),
    )
    adata = anndata.AnnData(
        X=np.asarray(pred, dtype=np.float32), obs=obs,
        var=pd.DataFrame(index=pd.Index(model.panel, name="gene")),
        obsm={"spatial": spots.xy},
    )
    if measured is not None:
        adata.layers["measured"] = np.asarray(measured, dtype=np.float32)
    spatial: dict[str, Any] = {"scalefactors": {}, "metadata": {}}
    if spots.diameter_px is not None:
        spatial["scalefactors"]["spot_diameter_fullres"] = float(spots.diameter_px)
    if section.image_path is not None:
        # absolute: the file is read from other folders (napari, scanpy, this reader)
        spatial["metadata"]["source_image_path"] = str(Path(section.image_path).resolve())
    try:
        spatial["mpp"] = float(section.mpp)
    except Exception:  # noqa: BLE001 - an unknown scale only costs the µm display
        pass
    adata.uns["spatial"] = {section.name: spatial}
    adata.uns["napari_dkan"] = {
        "model": json.dumps(model.describe()),
        "target_space": model.config["target"]["normalisation"],
        "smoothing": model.smoothing,
        "protocol": model.protocol,
        "section": section.name,
    }
    if spot_trust is not None:
        add_trust(adata, spot_trust, model)
    return adata


def add_trust(adata: Any, spot_trust: SpotTrust, model: TrainedModel) -> None:
    """Intervals in ``layers["lower"]`` / ``["upper"]`` and the level, out-of-domain score and
    training-section status in ``uns["napari_dkan"]``."""
    uns = adata.uns["napari_dkan"]
    bounds = spot_trust.lower_upper()
    if bounds is not None:
        adata.layers["lower"], adata.layers["upper"] = (b.astype(np.float32) for b in bounds)
        uns["interval_level"] = float(spot_trust.level)
        if spot_trust.depth is None:
            uns["interval_method"] = "normalised split-conformal, per gene (see the run's calibration)"
        else:
            uns["interval_method"] = ("depth-aware normalised split-conformal, per gene (see the run's "
                                      "calibration): intervals for the measured values at interval_depth")
            uns["interval_depth"] = spot_trust.depth.median  # median panel total per spot
            uns["interval_depth_source"] = spot_trust.depth.source
        # the model error's factor for how unlike the calibration section the images look
        uns["interval_domain_factor"] = float(spot_trust.inflation)
    if spot_trust.domain is not None:
        adata.obs["ood_score"] = spot_trust.domain.spot_scores.astype(np.float32)
        uns["ood_score"] = float(spot_trust.domain.score)
        uns["ood_threshold"] = float(spot_trust.domain.threshold)
        uns["out_of_domain"] = bool(spot_trust.domain.out_of_domain)
    seen = model.seen_sections.get(uns.get("section", ""))
    if seen is not None:
        uns["seen_by_model"] = seen
