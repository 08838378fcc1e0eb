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
    assert max(w * h for _, w, h in slide.reads) * 3 <= 1 << 26  # ≤ 64 MB a read
    np.testing.assert_allclose(stats.mean, tissue_stats(slide.tile).mean, atol=1.0)


# -- end to end: training writes the reference, evaluate / predict use it -----------------------
TINY = ["--preset", "tiny", "--encoder", "tiny", "--device", "cpu", "--epochs", "2"]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_training_writes_the_reference_and_evaluate_normalises_a_real_section(
        her2st, her2st_dataset, panels_dir, tmp_path, capsys):
    import anndata

    from napari_dkan.cli import main
    from napari_dkan.features.stain import section_tissue_stats

    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join((panels_dir / "her2st.txt").read_text().split()[:12]) + "\n")
    run = tmp_path / "run"
    assert main(["train", str(her2st), "--model", "ridge", *TINY, "--panel", str(panel),
                 "--sections", "C3", "-o", str(run)]) == 0
    ref = StainReference.load(run)  # trained and selected on C3 (a spatial hold-out of it)
    assert ref.sections == ("C3",)
    np.testing.assert_allclose(ref.stats.mean, section_tissue_stats(her2st_dataset["C3"]).mean)

    evaluate = ["evaluate", str(her2st), "--model", str(run), "--sections", "C2", "--device", "cpu", "--json"]
    capsys.readouterr()
    assert main(evaluate) == 0
    off = _json(capsys)
    assert main([*evaluate, "--stain-normalise"]) == 0
    on = _json(capsys)
    assert off["stain_normalised"] is False and on["stain_normalised"] is True
    record = on["stain_normalisation"]["C2"]
    np.testing.assert_allclose(record["source"]["mean"], section_tissue_stats(her2st_dataset["C2"]).mean)
    np.testing.assert_allclose(record["target"]["mean"], ref.stats.mean)
    assert on["mean"]["MSE"] != off["mean"]["MSE"]  # other features, so other predictions

    out = tmp_path / "c2.h5ad"
    assert main(["predict", str(her2st), "--sections", "C2", "--model", str(run), "--device", "cpu",
                 "-o", str(out), "--stain-normalise", "--json"]) == 0
    assert _json(capsys)["stain_normalised"] is True
    uns = anndata.read_h5ad(out).uns["napari_dkan"]
    assert uns["stain_normalised"] and json.loads(uns["stain_normalisation"])["reference_sections"] == ["C3"]

    (run / STAIN_FILE).unlink()  # a run from before stain normalisation
    assert main([*evaluate, "--stain-normalise"]) == 2
    assert "has no stain reference" in capsys.readouterr().err
    assert main(["trust", str(her2st), "--model", str(run), "--only-stain", "--json"]) == 0
    assert _json(capsys)["stain"]["sections"] == ["C3"] and StainReference.load(run) == ref


def test_raw_patches_for_a_patch_cnn_are_normalised_and_cached_apart(c2):
    from napari_dkan.features import section_patches, with_spots
    from napari_dkan.features.stain import section_transform

    few = with_spots(c2, np.arange(6))
    ref = _reference((60.0, 18.0, -18.0), (10.0, 4.0, 5.0))
    plain = section_patches(few, size=64, num_workers=0)
    normalised = section_patches(few, size=64, num_workers=0, stain=ref)
    np.testing.assert_array_equal(normalised, section_transform(c2, ref)(plain))
    np.testing.assert_array_equal(section_patches(few, size=64, num_workers=0), plain)  # cache: off stays off


def test_prediction_cache_key_of_the_dock_follows_the_option(c2, tmp_path):
    from napari_dkan._widgets.cache import PredictionKey

    class _Model:  # what PredictionKey reads of a TrainedModel
        run_dir, weights_sha256, stain = tmp_path, "abc", None

        class features:  # noqa: N801
            encoder = "tiny"

    off = PredictionKey.of(_Model, c2)
    assert off.model == f"{tmp_path.resolve()}|abc"  # unchanged: earlier predictions stay valid
    _Model.stain = _reference((60.0, 18.0, -18.0), (6.0, 3.0, 4.0))
    assert PredictionKey.of(_Model, c2).digest() != off.digest()


def test_bundled_model_carries_the_stain_reference_of_its_five_sections():
    from napari_dkan.bundled import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("no bundled model in this installation")
    ref = StainReference.load(path)
    assert sorted(ref.sections) == ["B4", "C2", "C3", "C4", "C5"]
    assert 60 < ref.stats.mean[0] < 88 and ref.stats.pixels > 1_000_000


def test_cv_normalises_each_fold_test_section_to_that_fold_reference(her2st, panels_dir, tmp_path, capsys):
    from napari_dkan.cli import main

    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join((panels_dir / "her2st.txt").read_text().split()[:12]) + "\n")
    cv = ["cv", str(her2st), "--model", "ridge", *TINY, "--panel", str(panel), "--sections", "C2", "C3",
          "-o", str(tmp_path / "cv"), "--json"]
    assert main(cv) == 0
    off = _json(capsys)
    for fold, trained_on in (("C2", ("C3",)), ("C3", ("C2",))):
        stain = tmp_path / "cv" / f"fold-{fold}" / STAIN_FILE
        assert StainReference.load(stain.parent).sections == trained_on
        stain.unlink()  # as in a cv folder kept from before stain normalisation
    assert main([*cv, "--stain-normalise"]) == 0  # the folds resume; their references are written
    on = _json(capsys)
    assert off["stain_normalised"] is False and on["stain_normalised"] is True
    assert all((tmp_path / "cv" / f"fold-{f}" / STAIN_FILE).is_file() for f in ("C2", "C3"))
    for a, b in zip(off["folds"], on["folds"]):
        assert a["fold"] == b["fold"] and a["MSE"] != b["MSE"]


def test_slide_stats_of_a_real_scanner_file(wsi_dir):
    from napari_dkan.io.slides import open_slide

    with open_slide(wsi_dir / "CMU-1-Small-Region.svs") as slide:
        stats = slide_tissue_stats(slide)
        whole = tissue_stats(slide.read_region(0, 0, 0, *slide.dimensions))
    assert stats.pixels > 10_000
    np.testing.assert_allclose(stats.mean, whole.mean, atol=1.0)  # a sample, the same staining
