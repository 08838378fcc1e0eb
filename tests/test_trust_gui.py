"""The trust layer in the prediction dock (real napari viewer under Xvfb, HER2ST C3, tiny DKAN).

The tiny test model trained on C3, so the dock must say that C3's scores are optimistic.  Its
reliability file is replaced by one with a known reliable and a known unreliable gene, so what
the dock shows for each can be checked word for word.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from plugin_support import prediction_dock

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
WAIT_MS = 120_000
TRUST_FILES = ("reliability.json", "calibration.safetensors", "domain.safetensors")


@pytest.fixture(scope="module")
def runs(tiny_run_dir: Path, tmp_path_factory) -> dict[str, Path]:
    from napari_dkan.engine.domain import DomainSummary
    from napari_dkan.engine.reliability import from_folds
    from napari_dkan.engine.runs import TrainedModel

    base = tmp_path_factory.mktemp("trust-runs")
    out = {name: base / name for name in ("known", "foreign", "old")}
    for path in out.values():
        shutil.copytree(tiny_run_dir, path)
    panel = TrainedModel.load(tiny_run_dir).panel
    r = np.full(len(panel), 0.2)
    r[0], r[1] = 0.55, 0.02
    for name in ("known", "foreign"):
        from_folds(panel, {"B4": r - 0.05, "C2": r + 0.05}, "test protocol").save(out[name] / "reliability.json")
    domain = DomainSummary.load(out["foreign"] / "domain.safetensors")
    domain.threshold = 0.5  # every slide scores above: the banner must appear
    domain.save(out["foreign"] / "domain.safetensors")
    for f in TRUST_FILES:
        (out["old"] / f).unlink()
    return out


@pytest.fixture(scope="module")
def dock(viewer, her2st):
    return prediction_dock(viewer, her2st / "ST-imgs" / "C" / "C3")


def _use(qtbot, dock, run: Path) -> None:
    dock.choose_model(str(run))
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    assert dock.predict() is not None
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    assert dock.session.predicted is not None


def test_dock_shows_reliability_training_notice_and_uncertainty(qtbot, viewer, dock, runs, tmp_path) -> None:
    from napari_dkan._widgets.spots_layer import hover_lines
    from napari_dkan._widgets.trust_view import (
        BY_RELIABILITY,
        RELIABLE_ONLY,
        UNCERTAINTY_COLORMAP,
        text_overlay,
        uncertainty_limits,
    )

    dock.choose_model(str(runs["known"]))
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)
    if dock.session.predicted is None:  # measured values only: no UNRELIABLE label over them
        dock.set_gene(dock.session.model.panel[1])
        assert not text_overlay(viewer).visible
    _use(qtbot, dock, runs["known"])
    panel = dock.session.model.panel
    good, bad = panel[0], panel[1]
    predicted = dock.builder.layer("predicted")

    dock.set_gene(good)
    assert dock.trust.gene_line.text() == f"{good} — expected r 0.55 ± 0.05 on unseen sections: reliable"
    assert predicted.opacity == pytest.approx(0.9) and not text_overlay(viewer).visible

    dock.set_gene(bad)
    assert f"{bad} — expected r 0.02 ± 0.05 on unseen sections: unreliable" in dock.trust.gene_line.text()
    assert text_overlay(viewer).visible
    assert text_overlay(viewer).text == f"{bad}: UNRELIABLE (expected r 0.02)"
    # off the layers' titles (top left, in every panel side by side) and the colorbars (top right)
    assert text_overlay(viewer).position == "bottom_left"
    dock.set_side_by_side(True)
    assert text_overlay(viewer).position == "bottom_left" and text_overlay(viewer).visible
    dock.set_side_by_side(False)
    assert text_overlay(viewer).position == "bottom_left" and text_overlay(viewer).visible
    assert predicted.opacity == pytest.approx(0.35) and predicted.name == "C3 · predicted"

    # C3 trained this model: the section notice and every score say so
    assert dock.trust.seen.isVisibleTo(dock) and "C3" in dock.trust.seen.text()
    assert "this section was used to train the model: the score is optimistic" in dock.scores.text()
    assert not dock.trust.missing.isVisibleTo(dock) and not dock.trust.banner.isVisibleTo(dock)

    # order and filter by expected r
    dock.trust.order.setCurrentText(BY_RELIABILITY)
    assert dock.genes._genes[0] == good and dock.genes._genes[-1] == bad
    dock.trust.order.setCurrentText(RELIABLE_ONLY)
    assert bad not in dock.genes._genes and good in dock.genes._genes
    dock.trust.order.setCurrentIndex(0)
    assert dock.genes._genes == list(panel)

    # the uncertainty layer: interval width of the chosen gene, its own colormap
    layer = dock.set_uncertainty_visible(True)
    assert layer is not None and layer in viewer.layers and layer.visible
    assert layer.face_colormap.name == UNCERTAINTY_COLORMAP
    from napari_dkan._widgets.canvas_text import layer_text
    from napari_dkan._widgets.layers import TITLE

    # the canvas names the orange colorbar: the gene's interval width, not its expression
    assert layer_text(layer, TITLE) == f"{dock.session.gene} · 90 % interval width"
    assert not layer.text.visible  # napari's "display text" box is unticked: no labels are drawn
    half = dock._spot_trust.halfwidth[:, panel.index(bad)]
    np.testing.assert_allclose(layer.features[bad].to_numpy(), 2 * half, rtol=1e-6)
    assert np.all(half > 0)
    dock.set_gene(good)
    assert not text_overlay(viewer).visible and predicted.opacity == pytest.approx(0.9)
    np.testing.assert_allclose(layer.features[good].to_numpy(), 2 * dock._spot_trust.halfwidth[:, 0], rtol=1e-6)
    assert layer.face_color.shape[0] == len(half)
    # the colours run from 0: a map of wide intervals is all orange, its darkest spots not "sure"
    widths = layer.features[good].to_numpy()
    lo, hi = uncertainty_limits(widths)
    assert lo == 0.0 and hi == pytest.approx(np.percentile(widths, 99))
    # … and the dock says how wide they are against the predicted map's range
    line = dock.trust.interval_line.text()
    assert dock.trust.interval_line.isVisibleTo(dock) and line.startswith(f"{good}: 90 % intervals ")
    assert f"{np.median(widths):.2f} wide (median)" in line
    shown = dock.session.gene_values(dock.session.predicted)
    p1, p99 = np.percentile(shown[np.isfinite(shown)], [1, 99])
    assert f"the predictions' spread ({p1:.2f}–{p99:.2f})" in line
    assert ("the map cannot tell its spots apart" in line) == (np.median(widths) >= p99 - p1)

    # hover: the value and its interval's bounds (a depth-aware interval need not be centred on it)
    lines = hover_lines(predicted.features, 5, predicted.metadata["napari_dkan"])
    value = predicted.features[good].iloc[5]
    lower, upper = dock._spot_trust.lower[5, 0], dock._spot_trust.upper[5, 0]
    assert lines[-1] == f"{good} (predicted): {value:.3f} (90 % interval {lower:.2f}–{upper:.2f})"
    dock.set_uncertainty_visible(False)
    assert not layer.visible

    # the dock's export carries the intervals and the notice
    import anndata

    written = dock.export(tmp_path / "c3.h5ad")
    adata = anndata.read_h5ad(written)
    np.testing.assert_allclose(adata.layers["upper"], dock._spot_trust.upper, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adata.layers["upper"] - adata.layers["lower"], 2 * dock._spot_trust.halfwidth,
                               rtol=1e-5, atol=1e-6)
    assert adata.uns["napari_dkan"]["interval_level"] == 0.9
    # C3 has counts: its intervals are for its own sequencing depth (the calibration is depth-aware)
    assert dock._spot_trust.depth.source == "measured"
    assert "sequencing depth" in dock.trust.uncertainty.toolTip()
    assert adata.uns["napari_dkan"]["interval_depth_source"] == "measured"
    assert adata.uns["napari_dkan"]["seen_by_model"] == "training"


def test_dock_warns_out_of_domain_and_says_when_trust_is_absent(qtbot, dock, runs) -> None:
    _use(qtbot, dock, runs["foreign"])
    assert dock.trust.banner.isVisibleTo(dock)
    assert "this tissue looks unlike the model's training data" in dock.trust.banner.text()
    assert "predictions may be meaningless" in dock.trust.banner.text()

    _use(qtbot, dock, runs["old"])  # a run written before the trust files: loads, says so
    assert not dock.trust.banner.isVisibleTo(dock)
    assert dock.trust.missing.isVisibleTo(dock)
    assert "carries no per-gene reliability, no calibrated uncertainty, no out-of-domain check" in \
        dock.trust.missing.text()
    assert "not recorded for this model" in dock.trust.gene_line.text()
    assert not dock.trust.uncertainty.isEnabled()
    assert dock.builder.layer("predicted").opacity == pytest.approx(0.9)
