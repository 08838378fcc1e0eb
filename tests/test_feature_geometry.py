"""Tile layouts of the two region modes, checked against hand-computed positions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dkan.features.geometry import CENTRE_SLOT, MASKED, OFFSETS, exact_layout, shared_layout


def test_slots_are_row_major_from_minus2_minus2():
    assert OFFSETS[0].tolist() == [-2, -2] and OFFSETS[1].tolist() == [-2, -1]
    assert OFFSETS[CENTRE_SLOT].tolist() == [0, 0] and OFFSETS[-1].tolist() == [2, 2]


def test_exact_tiles_are_centred_on_the_spot_plus_offsets_and_the_centre_is_the_patch():
    x, y = np.array([1000.0, 3000.5]), np.array([2000.0, 1500.0])
    lay = exact_layout(x, y, 224, 10_000, 10_000)
    assert lay.n_tiles == 2 * 25 and not lay.mask.any()
    assert lay.slots[:, CENTRE_SLOT].tolist() == [0, 1]  # the patches themselves
    centres = np.concatenate([lay.patch_centres, lay.tile_centres])
    for i in range(2):
        for s, (dy, dx) in enumerate(OFFSETS):
            assert centres[lay.slots[i, s]].tolist() == [x[i] + dx * 224, y[i] + dy * 224]


def test_shared_region_is_the_5x5_cells_around_the_cell_holding_the_spot():
    # two spots in neighbouring cells share 20 of their 25 cells
    x, y = np.array([1000.0, 1250.0]), np.array([2000.0, 2000.0])
    lay = shared_layout(x, y, 224, 10_000, 10_000)
    assert len(lay.tile_centres) == 5 * 6
    assert len(np.intersect1d(lay.slots[0], lay.slots[1])) == 20
    centres = np.concatenate([lay.patch_centres, lay.tile_centres])
    col, row = 1000 // 224, 2000 // 224
    for s, (dy, dx) in enumerate(OFFSETS):
        cx, cy = centres[lay.slots[0, s]]
        assert (cx, cy) == ((col + dx + 0.5) * 224, (row + dy + 0.5) * 224)


@pytest.mark.parametrize("layout", [exact_layout, shared_layout])
def test_masks_at_image_borders(layout):
    """A slot is masked exactly when its tile's centre falls outside the image."""
    w, h = 2000, 1500
    x = np.array([10.0, w - 5.0, 1000.0, 10.0])
    y = np.array([10.0, h - 5.0, 700.0, h - 5.0])
    lay = layout(x, y, 224, w, h)
    centres = np.concatenate([lay.patch_centres, lay.tile_centres])
    if layout is exact_layout:
        tile_x = x[:, None] + OFFSETS[:, 1] * 224
        tile_y = y[:, None] + OFFSETS[:, 0] * 224
    else:
        tile_x = ((x // 224)[:, None] + OFFSETS[:, 1] + 0.5) * 224
        tile_y = ((y // 224)[:, None] + OFFSETS[:, 0] + 0.5) * 224
    outside = (tile_x < 0) | (tile_y < 0) | (tile_x >= w) | (tile_y >= h)
    assert (lay.mask == outside).all()
    assert lay.mask[0].sum() == 16 and lay.mask[1].sum() == 16 and not lay.mask[2].any()
    kept = lay.slots[~lay.mask]
    assert ((centres[kept] >= 0).all() and (centres[kept][:, 0] < w).all()
            and (centres[kept][:, 1] < h).all())
    assert (lay.slots[lay.mask] == MASKED).all()


def test_shared_needs_far_fewer_passes_on_a_dense_lattice():
    rows, cols = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    x, y = 1000 + cols.ravel() * 291.0, 1000 + rows.ravel() * 291.0  # HER2ST-like pitch
    exact = exact_layout(x, y, 224, 10_000, 10_000)
    shared = shared_layout(x, y, 224, 10_000, 10_000)
    assert exact.n_tiles / exact.n_spots == 25
    assert shared.n_tiles / shared.n_spots < 25 / 5


def test_a_shared_cell_holding_a_spot_is_kept_even_if_its_centre_is_off_the_image():
    # the image ends at x=1900, inside grid cell 8 ([1792, 2016), centre 1904)
    x, y = np.array([1895.0, 1600.0]), np.array([700.0, 700.0])
    lay = shared_layout(x, y, 224, 1900, 1500)
    assert not lay.mask[0, CENTRE_SLOT]
    # spot 1 (cell 7) sees cell 8 as its (0, +1) neighbour: the same cell, also kept
    assert not lay.mask[1, CENTRE_SLOT + 1]
    assert lay.slots[1, CENTRE_SLOT + 1] == lay.slots[0, CENTRE_SLOT]
    # cells 9 and beyond hold no spot and lie past the border
    assert lay.mask[0, CENTRE_SLOT + 1] and lay.mask[1, CENTRE_SLOT + 2]


def test_shared_cells_are_numbered_in_row_then_column_order():
    """The shared tiles are numbered as np.unique over (row, col) pairs numbers them (the feature
    cache and the staged extraction rely on that order); computed from one int64 key per cell."""
    rng = np.random.default_rng(3)
    step, width, height = 50.0, 4000, 3000
    x, y = rng.uniform(-300, width + 300, 2000), rng.uniform(-300, height + 300, 2000)
    layout = shared_layout(x, y, step, width, height)
    n = len(x)
    rows = np.floor(y / step).astype(np.int64)[:, None] + OFFSETS[None, :, 0]
    cols = np.floor(x / step).astype(np.int64)[:, None] + OFFSETS[None, :, 1]
    used = layout.slots != MASKED
    cells = np.column_stack([rows[used], cols[used]])
    unique, inverse = np.unique(cells, axis=0, return_inverse=True)
    np.testing.assert_array_equal(layout.slots[used], n + inverse.reshape(-1))
    np.testing.assert_array_equal(layout.tile_centres, (unique[:, ::-1] + 0.5) * step)
