"""The feature cache: reused when the key matches, rebuilt when corrupt or written for another
configuration, never a pickle, written atomically."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dkan.features import encoders as encoders_module
from napari_dkan.features import extract_section_features, lazy_encoder, load_encoder, with_spots
from napari_dkan.features.cache import CacheKey, load_arrays, save_arrays


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny", "cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def c2_few(c2):
    return with_spots(c2, np.arange(3))


def _files(cache):
    return sorted(cache.rglob("*.safetensors"))


def _no_encoder(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the encoder was loaded although the cache should have served")

    monkeypatch.setattr(encoders_module, "load_encoder", fail)


def _count_encoding(monkeypatch) -> list:
    """Every call of the tile-encoding pipeline from now on (a cache hit makes none)."""
    from napari_dkan.features import pipeline

    calls, encode = [], pipeline.encode_tiles

    def counted(*a, **k):
        calls.append(a)
        return encode(*a, **k)

    monkeypatch.setattr(pipeline, "encode_tiles", counted)
    return calls


def test_second_run_reads_the_cache_without_encoding(c2_few, cache, monkeypatch):
    first = extract_section_features(c2_few, "tiny", mode="shared", tokens=True)
    assert not first.meta["cache_hit"] and first.meta["passes"] > 0
    [path] = _files(cache)
    assert path.name.startswith("her2st-C2-tiny-shared-")
    _no_encoder(monkeypatch)
    encoded = _count_encoding(monkeypatch)
    second = extract_section_features(c2_few, "tiny", mode="shared", tokens=True)
    assert second.meta["cache_hit"] and second.meta["encoder_passes_per_spot"] == 0
    assert encoded == []  # the hit is proved by the work not done, not by a clock
    np.testing.assert_array_equal(second.patch, first.patch)
    np.testing.assert_array_equal(second.region, first.region)
    np.testing.assert_array_equal(second.region_mask, first.region_mask)
    np.testing.assert_array_equal(second.patch_tokens, first.patch_tokens)
    assert (second.spot_id == c2_few.spots.spot_id).all()
    assert not list(cache.rglob("*.tmp"))  # atomic write left nothing behind


def test_features_cached_with_tokens_serve_a_request_without(c2_few, cache, monkeypatch):
    full = extract_section_features(c2_few, "tiny", mode="shared", tokens=True)
    _no_encoder(monkeypatch)
    lean = extract_section_features(c2_few, "tiny", mode="shared", tokens=False)
    assert lean.meta["cache_hit"] and len(_files(cache)) == 1
    np.testing.assert_array_equal(lean.patch, full.patch)
    np.testing.assert_array_equal(lean.region, full.region)


def test_a_loaded_encoder_and_its_name_share_the_cache(c2_few, cache, tiny):
    extract_section_features(c2_few, tiny, mode="exact")
    assert extract_section_features(c2_few, "tiny", mode="exact").meta["cache_hit"]


def test_a_lazy_encoder_is_built_only_at_a_cache_miss(c2_few, cache):
    extract_section_features(c2_few, "tiny")
    lazy = lazy_encoder("tiny")
    assert extract_section_features(c2_few, lazy).meta["cache_hit"] and not lazy.loaded
    assert not extract_section_features(c2_few, lazy, mode="exact").meta["cache_hit"]
    assert lazy.loaded


def test_a_corrupt_cache_file_is_rebuilt(c2_few, cache):
    first = extract_section_features(c2_few, "tiny")
    [path] = _files(cache)
    path.write_bytes(b"\x07garbage, not a safetensors file" * 10)
    rebuilt = extract_section_features(c2_few, "tiny")
    assert not rebuilt.meta["cache_hit"]
    np.testing.assert_array_equal(rebuilt.region, first.region)
    assert extract_section_features(c2_few, "tiny").meta["cache_hit"]


def test_a_truncated_cache_file_is_rebuilt(c2_few, cache):
    extract_section_features(c2_few, "tiny")
    [path] = _files(cache)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert not extract_section_features(c2_few, "tiny").meta["cache_hit"]


def test_a_file_written_for_another_configuration_is_not_trusted(c2_few, cache):
    """Same file name, but the stored key says another tile size: rebuild."""
    from safetensors import safe_open

    extract_section_features(c2_few, "tiny", mode="shared")
    [path] = _files(cache)
    with safe_open(str(path), framework="np") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}
        stored = json.loads(f.metadata()["napari_dkan.key"])
    stored["tile_px"] = 256
    save_arrays(path, CacheKey(**stored), arrays, {})
    again = extract_section_features(c2_few, "tiny", mode="shared")
    assert not again.meta["cache_hit"]
    assert extract_section_features(c2_few, "tiny", mode="shared").meta["cache_hit"]


@pytest.mark.parametrize(
    "change",
    [{"mode": "exact"}, {"tile_px": 256}, {"tokens": True}, {"target_mpp": 1.0}],
)
def test_any_change_of_configuration_misses(c2_few, cache, change):
    base = {"mode": "shared", "tile_px": 224, "tokens": False, "target_mpp": None}
    extract_section_features(c2_few, "tiny", **base)
    other = extract_section_features(c2_few, "tiny", **{**base, **change})
    assert not other.meta["cache_hit"]
    assert len(_files(cache)) == 2


def test_other_spots_or_another_slide_miss(c2, c2_few, cache, her2st_dataset):
    extract_section_features(c2_few, "tiny")
    assert not extract_section_features(with_spots(c2, np.arange(1, 4)), "tiny").meta["cache_hit"]
    c3 = with_spots(her2st_dataset["C3"], np.arange(3))
    assert not extract_section_features(c3, "tiny").meta["cache_hit"]


def test_cache_false_neither_reads_nor_writes(c2_few, cache):
    extract_section_features(c2_few, "tiny", cache=False)
    assert _files(cache) == []


def test_load_arrays_rejects_a_missing_file_and_a_wrong_key(tmp_path):
    key = CacheKey(kind="features", slide="s", spots="p", mpp=0.5, tile_px=224, target_mpp=None)
    path = tmp_path / "x.safetensors"
    assert load_arrays(path, key) is None
    save_arrays(path, key, {"a": np.arange(3, dtype=np.float32)}, {"note": "hi"})
    arrays, info = load_arrays(path, key)
    assert arrays["a"].tolist() == [0, 1, 2] and info == {"note": "hi"}
    assert load_arrays(path, CacheKey(**{**key.__dict__, "spots": "q"})) is None
