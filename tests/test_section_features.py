"""Per-section features on real slides: both region modes, border masks, µm/px, progress, cancel."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_dkan.features import extract_section_features, load_encoder, section_patches, with_spots
from napari_dkan.features.geometry import CENTRE_SLOT, OFFSETS
from napari_dkan.io.spots import SpotTable
from napari_dkan.progress import Cancelled

TILE = 224


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny", "cpu")


@pytest.fixture(scope="module")
def c2_few(c2):
    return with_spots(c2, np.arange(4))


def _encode(encoder, tiles: list[np.ndarray]) -> np.ndarray:
    pooled, _ = encoder.encode(torch.from_numpy(np.stack(tiles)))
    return pooled.numpy()


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float16 storage: within 1% in norm (different tiles differ by far more)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b))


def test_exact_mode_tiles_are_the_encodings_of_spot_centred_tiles(c2_few, tiny):
    f = extract_section_features(c2_few, tiny, mode="exact", cache=False)
    n, d = len(c2_few.spots), tiny.width
    assert f.patch.shape == (n, d) and f.patch.dtype == np.float32
    assert f.region.shape == (n, 25, d) and f.region_mask.shape == (n, 25)
    assert f.meta["encoder_passes_per_spot"] == 25 and not f.region_mask.any()
    assert (f.spot_id == c2_few.spots.spot_id).all()
    # the centre tile is the patch, reused
    assert _close(f.region[:, CENTRE_SLOT], f.patch)
    slide = c2_few.open_slide()
    x, y = c2_few.spots.x[1], c2_few.spots.y[1]
    assert _close(f.patch[1], _encode(tiny, [slide.read_patch(x, y, TILE)])[0])
    for slot in (0, 7, 24):
        dy, dx = OFFSETS[slot]
        want = _encode(tiny, [slide.read_patch(x + dx * TILE, y + dy * TILE, TILE)])[0]
        assert _close(f.region[1, slot], want)
        assert not _close(f.region[1, slot], f.patch[1])  # a real, different tile


def test_shared_mode_tiles_are_the_encodings_of_grid_cells(c2_few, tiny):
    f = extract_section_features(c2_few, tiny, mode="shared", cache=False)
    exact = extract_section_features(c2_few, tiny, mode="exact", cache=False)
    np.testing.assert_allclose(f.patch, exact.patch, atol=1e-5)  # the same spot-centred patches
    assert f.meta["encoder_passes_per_spot"] < 25
    slide = c2_few.open_slide()
    i = 2
    col, row = int(c2_few.spots.x[i] // TILE), int(c2_few.spots.y[i] // TILE)
    for slot in (0, CENTRE_SLOT, 18):
        dy, dx = OFFSETS[slot]
        cell = slide.read_region(0, (col + dx) * TILE, (row + dy) * TILE, TILE, TILE)
        assert _close(f.region[i, slot], _encode(tiny, [cell])[0])
    # the cell holding the spot is not the spot-centred patch
    assert not _close(f.region[i, CENTRE_SLOT], f.patch[i])


def test_tokens_are_a_7x7_grid_per_patch(c2_few, tiny):
    f = extract_section_features(c2_few, tiny, mode="shared", tokens=True, cache=False)
    assert f.patch_tokens.shape == (len(c2_few.spots), 49, tiny.width)
    assert np.isfinite(f.patch_tokens).all()
    slide = c2_few.open_slide()
    tile = slide.read_patch(c2_few.spots.x[0], c2_few.spots.y[0], TILE)
    _, want = tiny.encode(torch.from_numpy(tile[None]), tokens=True)
    assert _close(f.patch_tokens[0], want[0].numpy())


def _at(section, xs, ys):
    """``section`` with spots moved to the given positions on its real image."""
    n = len(xs)
    spots = SpotTable(
        spot_id=np.array([f"s{i}" for i in range(n)]), array_row=np.arange(n), array_col=np.zeros(n),
        x=np.asarray(xs, float), y=np.asarray(ys, float), in_tissue=np.ones(n, bool),
        diameter_px=None, layout="square", pitch_um=200.0, diameter_um=100.0,
    )
    return replace(section, load_spots=lambda: spots, mpp_override=section.mpp, load_counts=None)


def _expected_mask(spots, w: int, h: int, mode: str) -> np.ndarray:
    """The documented rule, computed independently: a tile is masked when its centre is off
    the image; in shared mode a grid cell holding a spot is always kept."""
    if mode == "exact":
        x = spots.x[:, None] + OFFSETS[:, 1] * TILE
        y = spots.y[:, None] + OFFSETS[:, 0] * TILE
        return (x < 0) | (y < 0) | (x >= w) | (y >= h)
    col = (spots.x // TILE).astype(int)[:, None] + OFFSETS[:, 1]
    row = (spots.y // TILE).astype(int)[:, None] + OFFSETS[:, 0]
    x, y = (col + 0.5) * TILE, (row + 0.5) * TILE
    held = set(zip((spots.y // TILE).astype(int), (spots.x // TILE).astype(int)))
    holds = np.array([[(r, c) in held for r, c in zip(rr, cc)] for rr, cc in zip(row, col)])
    return ((x < 0) | (y < 0) | (x >= w) | (y >= h)) & ~holds


@pytest.mark.parametrize("mode", ["exact", "shared"])
def test_masks_at_the_borders_of_a_real_image(c2, tiny, mode):
    w, h = c2.open_slide().dimensions
    section = _at(c2, [30.0, w - 30.0, w / 2, 30.0], [30.0, h - 30.0, h / 2, h - 30.0])
    f = extract_section_features(section, tiny, mode=mode, cache=False)
    assert (f.region_mask == _expected_mask(section.spots, w, h, mode)).all()
    # top-left corner: every tile left of or above the spot is off the image, the rest is on it
    up_left = np.array([dy < 0 or dx < 0 for dy, dx in OFFSETS])
    assert (f.region_mask[0] == up_left).all()
    assert f.region_mask[1].sum() >= 16 and f.region_mask[3].sum() >= 16
    assert not f.region_mask[2].any() and not f.region_mask[:, CENTRE_SLOT].any()
    assert (f.region[f.region_mask] == 0).all()  # masked tiles are zero vectors
    assert (np.abs(f.region[~f.region_mask].astype(np.float32)).sum(axis=1) > 0).all()
    # masked tiles are never encoded
    if mode == "exact":
        assert f.meta["region_tiles"] == (~f.region_mask).sum() - 4
    else:
        col = (section.spots.x // TILE).astype(int)[:, None] + OFFSETS[:, 1]
        row = (section.spots.y // TILE).astype(int)[:, None] + OFFSETS[:, 0]
        keep = ~f.region_mask
        assert f.meta["region_tiles"] == len(set(zip(row[keep], col[keep])))


def test_masks_on_a_real_slide_with_a_lattice(wsi_dir, tiny):
    """CMU-1-Small-Region with a Visium-like lattice: spots near the slide's edges."""
    from napari_dkan.io import open_dataset

    section = open_dataset(wsi_dir / "CMU-1-Small-Region.svs").sections[0]
    spots = section.spots
    w, h = section.open_slide().dimensions
    edge = np.minimum.reduce([spots.x, spots.y, w - spots.x, h - spots.y])
    few = with_spots(section, np.argsort(edge)[:3])
    f = extract_section_features(few, tiny, mode="exact", cache=False)
    x, y = few.spots.x[:, None] + OFFSETS[:, 1] * TILE, few.spots.y[:, None] + OFFSETS[:, 0] * TILE
    assert (f.region_mask == ((x < 0) | (y < 0) | (x >= w) | (y >= h))).all()
    assert f.region_mask.any()


def test_target_mpp_resamples_tiles_from_the_slide(wsi_dir, tiny):
    from napari_dkan.io import open_dataset

    section = with_spots(open_dataset(wsi_dir / "CMU-1-Small-Region.svs").sections[0], np.arange(2))
    f = extract_section_features(section, tiny, mode="exact", target_mpp=1.0, cache=False)
    assert f.meta["step_px"] == pytest.approx(TILE * 1.0 / section.mpp)
    slide = section.open_slide()
    x, y = section.spots.x[0], section.spots.y[0]
    assert _close(f.patch[0], _encode(tiny, [slide.read_patch(x, y, TILE, mpp=1.0)])[0])
    slot = next(s for s in range(25) if s != CENTRE_SLOT and not f.region_mask[0, s])
    dy, dx = OFFSETS[slot]
    step = f.meta["step_px"]
    tile = slide.read_patch(x + dx * step, y + dy * step, TILE, mpp=1.0)
    assert _close(f.region[0, slot], _encode(tiny, [tile])[0])


def test_progress_reaches_the_total(c2_few, tiny):
    calls: list[tuple[int, int]] = []
    extract_section_features(c2_few, tiny, mode="exact", batch_size=16, cache=False,
                             progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] == 100
    assert len(calls) > 3


def test_cancel_stops_between_batches_and_caches_nothing(c2_few, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path))
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        cancel.set()  # the user presses "cancel" after the first batch

    with pytest.raises(Cancelled, match="cancelled"):
        extract_section_features(c2_few, tiny, mode="exact", batch_size=8, progress=progress,
                                 cancel=cancel)
    assert len(seen) == 1  # stopped after the first batch
    assert not list(tmp_path.rglob("*.safetensors"))
    ready = threading.Event()
    ready.set()
    with pytest.raises(Cancelled):
        extract_section_features(c2_few, tiny, cancel=ready)


def test_device_choice_is_applied_and_checked(c2_few):
    f = extract_section_features(c2_few, "tiny", mode="shared", device="cpu", cache=False)
    assert f.meta["device"] == "cpu"
    if not torch.cuda.is_available():
        from napari_dkan.devices import DeviceError

        with pytest.raises(DeviceError, match="not available"):
            extract_section_features(c2_few, "tiny", device="cuda", cache=False)


def test_unknown_mode_is_a_clear_error(c2_few):
    from napari_dkan.io.errors import DataError

    with pytest.raises(DataError, match="unknown region mode 'dense'"):
        extract_section_features(c2_few, "tiny", mode="dense")


def test_section_patches_are_the_spot_centred_crops_and_cached(c2_few, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path))
    patches = section_patches(c2_few, size=TILE)
    assert patches.shape == (4, TILE, TILE, 3) and patches.dtype == np.uint8
    slide = c2_few.open_slide()
    np.testing.assert_array_equal(patches[3], slide.read_patch(c2_few.spots.x[3], c2_few.spots.y[3], TILE))
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    np.testing.assert_array_equal(section_patches(c2_few, size=TILE), patches)
