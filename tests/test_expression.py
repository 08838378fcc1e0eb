"""Panels, normalisation and smoothing against hand-computed values and the published panel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dkan.io.expression import normalize, section_targets, select_panel, smooth
from napari_dkan.io.spots import GridLayout, SpotTable


def _grid(rows, cols, layout=GridLayout.SQUARE):
    n = len(rows)
    return SpotTable(spot_id=[f"s{i}" for i in range(n)], array_row=rows, array_col=cols,
                     x=np.arange(n) * 10.0, y=np.zeros(n), in_tissue=np.ones(n, bool),
                     diameter_px=5.0, layout=layout, pitch_um=200, diameter_um=100)


def test_normalize_by_hand():
    out = normalize(np.array([[1, 3], [0, 0], [5, 0]]))
    np.testing.assert_allclose(out[0], [np.log10(2501), np.log10(7501)], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0, 0])  # an empty spot stays zero
    np.testing.assert_allclose(out[2], [np.log10(10001), 0], rtol=1e-6)


def test_smooth_square_grid_by_hand():
    # a 2×2 block plus a far-away spot: inside the block every spot sees the other three
    spots = _grid([0, 0, 1, 1, 5], [0, 1, 0, 1, 5])
    v = np.array([[1.0], [2.0], [3.0], [6.0], [10.0]])
    out = smooth(v, spots)
    np.testing.assert_allclose(out[:4, 0], [3.0] * 4)
    assert out[4, 0] == 10.0  # no neighbours: itself only


def test_smooth_square_grid_edges_use_existing_neighbours_only():
    spots = _grid([0, 0, 0], [0, 1, 2])  # one row of three
    out = smooth(np.array([[0.0], [3.0], [9.0]]), spots)
    np.testing.assert_allclose(out[:, 0], [1.5, 4.0, 6.0])


def test_smooth_hex_grid_uses_six_neighbours():
    # centre (2,2) and its six hex neighbours, plus (2,3)/(3,2) style cells that are NOT neighbours
    rows = [2, 2, 2, 1, 1, 3, 3]
    cols = [2, 0, 4, 1, 3, 1, 3]
    spots = _grid(rows, cols, GridLayout.HEX)
    v = np.arange(7, dtype=float)[:, None]
    out = smooth(v, spots)
    assert out[0, 0] == pytest.approx(v.mean())
    # (2,0) neighbours: (2,2), (1,1), (3,1) and itself
    assert out[1, 0] == pytest.approx((1 + 0 + 3 + 5) / 4)


def test_panel_of_her2st_images_is_deterministic_and_in_every_section(her2st_dataset):
    secs = her2st_dataset.trainable().sections
    panel = select_panel(secs, n=50)
    assert len(panel) == 50 == len(set(panel))
    assert "ERBB2" in panel
    # descending mean raw count, checked independently
    totals = np.zeros(50)
    n = 0
    for s in secs:
        totals += s.counts.take_genes(panel).sum(axis=0)
        n += s.counts.n_spots
    means = totals / n
    assert (np.diff(means) <= 1e-6).all()


def test_hvg_panel_ranks_by_variance_of_log_normalised_counts(her2st_dataset):
    secs = [her2st_dataset["C2"], her2st_dataset["C3"]]
    panel = select_panel(secs, n=20, method="hvg")
    assert len(panel) == 20
    mats = []
    for s in secs:
        c = s.counts
        lib = np.asarray(c.matrix.sum(axis=1)).ravel()
        mats.append(np.log1p(c.take_genes(panel) / lib[:, None] * 1e4))
    var = np.concatenate(mats).var(axis=0)
    assert (np.diff(var) <= 1e-4).all()


def test_section_targets_shape_and_range(c2, panels_dir):
    panel = (panels_dir / "her2st.txt").read_text().split()
    y = section_targets(c2, panel)
    raw = section_targets(c2, panel, smoothing=False)
    assert y.shape == raw.shape == (187, 250) and y.dtype == np.float32
    assert 0 <= y.min() and y.max() < 4
    assert not np.allclose(y, raw)
    # smoothing preserves the section mean of a gene only approximately; values stay within range
    assert y.std() < raw.std()
