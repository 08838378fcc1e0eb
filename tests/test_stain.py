"""Test-time Reinhard stain normalisation: the transform, the reference, the cache key, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dkan.features.cache import CacheKey
from napari_dkan.features.stain import (
    STAIN_FILE,
    ReinhardTransform,
    StainError,
    StainReference,
    TissueStats,
    slide_tissue_stats,
    tissue_stats,
)
from napari_dkan.io.slides import Level


def _tissue_tile(seed: int = 0, shape: tuple[int, ...] = (224, 224)) -> np.ndarray:
    """An H&E-like tile: every pixel stained (L 35-75, clearly pink or purple)."""
    from skimage.color import lab2rgb

    rng = np.random.default_rng(seed)
    lab = np.stack([rng.uniform(40, 70, shape), rng.normal(25, 5, shape), rng.normal(-12, 4, shape)], -1)
    return np.clip(lab2rgb(lab) * 255 + 0.5, 0, 255).astype(np.uint8)


def _reference(mean: tuple[float, float, float], std: tuple[float, float, float]) -> StainReference:
    return StainReference(TissueStats(mean, std, 1000), ("C2", "C3"))


def test_transform_maps_tissue_stats_to_the_reference():
    tile = _tissue_tile()
    source = tissue_stats(tile)
    ref = _reference((60.0, 18.0, -18.0), (6.0, 3.0, 4.0))
    out = ReinhardTransform(source, ref)(tile)
    assert out.dtype == np.uint8 and out.shape == tile.shape
    got = tissue_stats(out)
    assert got.pixels == tile.shape[0] * tile.shape[1]  # still all tissue
    np.testing.assert_allclose(got.mean, ref.stats.mean, atol=0.5)
    np.testing.assert_allclose(got.std, ref.stats.std, rtol=0.05)
    assert np.abs(np.subtract(got.mean, source.mean)).max() > 3  # it did move the colours


def test_transform_is_the_identity_when_source_equals_target():
    tile = _tissue_tile(1)
    source = tissue_stats(tile)
    out = ReinhardTransform(source, StainReference(source, ("B4",)))(tile)
    assert np.abs(out.astype(int) - tile).max() <= 1  # LAB round trip and rounding only


def test_transform_is_vectorised_over_a_batch():
    batch = np.stack([_tissue_tile(2, (32, 32)), _tissue_tile(3, (32, 32))])
    t = ReinhardTransform(tissue_stats(batch[0]), _reference((55.0, 20.0, -15.0), (8.0, 4.0, 5.0)))
    np.testing.assert_array_equal(t(batch), np.stack([t(batch[0]), t(batch[1])]))


def test_cache_key_keeps_old_keys_and_differs_with_stain():
    base = CacheKey("features", "slide", "spots", 0.5, 224, None, "enc", "shared")
    assert "stain" not in json.loads(base.as_json())  # caches written before stay valid
    ref = _reference((60.0, 18.0, -18.0), (6.0, 3.0, 4.0))
    on = CacheKey("features", "slide", "spots", 0.5, 224, None, "enc", "shared", stain=ref.identity)
    assert json.loads(on.as_json())["stain"].startswith("reinhard-lab")
    assert on.digest() != base.digest()
    other = _reference((61.0, 18.0, -18.0), (6.0, 3.0, 4.0))
    assert other.identity != ref.identity


def test_reference_written_and_read(tmp_path):
    ref = _reference((60.0, 18.0, -18.0), (6.0, 3.0, 4.0))
    path = ref.save(tmp_path)
    assert path.name == STAIN_FILE and json.loads(path.read_text())["sections"] == ["C2", "C3"]
    assert StainReference.load(tmp_path) == ref


def test_missing_or_broken_reference_is_a_clear_error(tmp_path):
    with pytest.raises(StainError, match="no stain reference"):
        StainReference.load(tmp_path)
    (tmp_path / STAIN_FILE).write_text("{not json")
    with pytest.raises(StainError, match="not a readable stain reference"):
        StainReference.load(tmp_path)


class _BigPyramid:
    """A 40,000 × 40,000 px pyramid that records its reads (no file: only the reading plan)."""

    backend = "openslide"
    dimensions = (40_000, 40_000)
    levels = [Level(40_000, 40_000, 1.0), Level(10_000, 10_000, 4.0), Level(2_500, 2_500, 16.0)]

    class path:  # noqa: N801 - stands in for a Path's .name
        name = "big.svs"

    def __init__(self) -> None:
        self.reads: list[tuple[int, int, int]] = []
        self.tile = _tissue_tile(4, (64, 64))

    def best_level_for(self, downsample: float) -> int:
        return max(i for i, lv in enumerate(self.levels) if lv.downsample <= downsample)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        self.reads.append((level, w, h))
        return np.resize(self.tile, (h, w, 3))


def test_slide_stats_never_read_level_0_of_a_large_pyramid():
    slide = _BigPyramid()
    stats = slide_tissue_stats(slide)  # type: ignore[arg-type]
    assert slide.reads and all(level == 2 for level, _, _ in slide.reads)
    assert max(w * h for _, w, h in slide.reads) <= 2_500 * 2_048
    np.testing.assert_allclose(stats.mean, tissue_stats(slide.tile).mean, atol=1.0)
