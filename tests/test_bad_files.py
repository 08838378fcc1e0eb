"""Damaged and unusual input files: each is refused with its name and what is wrong, when it is
opened, not minutes later; RGBA images are read as OpenSlide reads them (on white glass)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dkan.io import DataError, SlideError, open_dataset, open_slide


def _tissue_like(h: int = 600, w: int = 800, seed: int = 0) -> np.ndarray:
    """Pink-purple noise: saturated like H&E, never like glass."""
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 180], float)
    return (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)


# -- empty, grey and transparent images ------------------------------------------------------
@pytest.mark.parametrize("name", ["scan.jpg", "scan.svs", "scan.tif"])
def test_a_zero_byte_slide_is_called_empty(tmp_path, name):
    empty = tmp_path / name
    empty.touch()
    with pytest.raises(DataError, match=rf"{name} is empty \(0 bytes\)"):
        open_dataset(empty)
    with pytest.raises(SlideError, match=rf"{name} is empty \(0 bytes\)"):
        open_slide(empty)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_grayscale_slide_is_refused_as_grayscale_not_as_tissue_less(tmp_path, suffix):
    grey = tmp_path / f"grey{suffix}"
    Image.fromarray(_tissue_like()).convert("L").save(grey)
    slide = open_slide(grey)  # it can still be looked at
    assert slide.grayscale and slide.read_region(0, 0, 0, 4, 4).shape == (4, 4, 3)
    with pytest.raises(DataError, match=rf"grey{suffix} is a grayscale image.*colour \(RGB\)"):
        open_dataset(grey, mpp=1.0)
    colour = tmp_path / f"colour{suffix}"
    Image.fromarray(_tissue_like()).save(colour)
    assert not open_slide(colour).grayscale
    assert len(open_dataset(colour, mpp=1.0).sections[0].spots) > 0


def test_a_grayscale_section_image_is_refused_before_features(her2st, tmp_path):
    from test_bad_input import _mini_root

    root = _mini_root(her2st, tmp_path, image=False)
    folder = root / "ST-imgs" / "C" / "C2"
    folder.mkdir(parents=True)
    Image.fromarray(_tissue_like()).convert("L").save(folder / "C2.jpg")
    with pytest.raises(DataError, match="is a grayscale image"):
        open_dataset(root)["C2"].open_slide()


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_transparent_pixels_are_white_glass_and_get_no_spots(tmp_path, suffix):
    """An RGBA image whose right half is fully transparent over tissue-coloured pixels."""
    rgba = np.dstack([_tissue_like(), np.full((600, 800), 255, np.uint8)])
    rgba[:, 400:, 3] = 0
    path = tmp_path / f"rgba{suffix}"
    if suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    else:
        Image.fromarray(rgba, "RGBA").save(path)
    slide = open_slide(path, mpp=1.0)
    assert (slide.read_region(0, 500, 100, 50, 50) == 255).all()  # composited on white
    assert (slide.read_region(0, 100, 100, 50, 50) == rgba[100:150, 100:150, :3]).all()
    spots = open_dataset(path, mpp=1.0).sections[0].spots
    assert len(spots) > 5
    assert spots.x.max() < 400 + 100  # none on the transparent half (one pitch of slack)


# -- counts ------------------------------------------------------------------------------------
def _negative_st_root(her2st: Path, tmp_path: Path) -> Path:
    from test_bad_input import _mini_root

    root = _mini_root(her2st, tmp_path)
    f = root / "ST-cnts" / "C2.tsv.gz"
    with gzip.open(f, "rt") as fh:
        lines = fh.read().splitlines()
    cells = lines[2].split("\t")
    cells[5] = "-3"
    lines[2] = "\t".join(cells)
    with gzip.open(f, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return root


def test_negative_counts_in_an_h5ad_are_refused_when_it_is_opened(her2st_dataset, tmp_path):
    import anndata
    import pandas as pd

    c2 = her2st_dataset["C2"]
    x = c2.counts.matrix[:, :50].toarray()
    x[3, 7] = -1.5
    adata = anndata.AnnData(x, obs=pd.DataFrame(index=c2.spots.spot_id),
                            var=pd.DataFrame(index=c2.counts.genes[:50]))
    adata.obsm["spatial"] = np.column_stack([c2.spots.x, c2.spots.y])
    adata.uns["spatial"] = {"C2": {"scalefactors": {}, "metadata": {}}}
    path = tmp_path / "scaled.h5ad"
    adata.write_h5ad(path)
    gene = c2.counts.genes[7]
    with pytest.raises(DataError, match=rf"negative counts in scaled.h5ad.*gene '{gene}' = -1.5"):
        open_dataset(path)


def test_negative_counts_are_refused_before_any_feature_is_computed(her2st, tmp_path, monkeypatch):
    import napari_dkan.features as features
    from napari_dkan.engine.data import FeatureSpec, load_section_data

    section = open_dataset(_negative_st_root(her2st, tmp_path))["C2"]
    calls = []
    monkeypatch.setattr(features, "extract_section_features", lambda *a, **k: calls.append(a))
    with pytest.raises(DataError, match="negative counts in C2.tsv.gz.*= -3"):
        load_section_data(section, FeatureSpec(), ["ERBB2", "GAPDH"])
    assert calls == []  # the counts were read first


# -- what the reader claims --------------------------------------------------------------------
def test_the_reader_claims_images_by_their_header_not_their_name(tmp_path):
    from napari_dkan._reader import napari_get_reader

    text = tmp_path / "notes.tif"
    text.write_text("a text file renamed .tif\n")
    assert napari_get_reader(str(text)) is None
    with pytest.raises(DataError, match=r"notes.tif: it is named like an image \(.tif\) but"):
        open_dataset(text)
    png_named_jpg = tmp_path / "really_a_png.jpg"
    Image.fromarray(_tissue_like(60, 80)).save(png_named_jpg, format="PNG")
    assert napari_get_reader(str(png_named_jpg)) is not None  # an image is an image


def _truncated_jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "cut.jpg"
    Image.fromarray(_tissue_like()).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_truncated_jpeg_fails_when_napari_opens_it_not_when_it_draws(tmp_path):
    from napari_dkan._reader import napari_get_reader

    path = _truncated_jpeg(tmp_path)
    reader = napari_get_reader(str(path))
    assert reader is not None  # its header is a JPEG's
    with pytest.raises(SlideError, match="cut.jpg could not be decoded.*truncated"):
        reader(str(path))


def test_a_truncated_section_image_fails_when_the_section_is_opened(her2st, tmp_path):
    from napari_dkan._reader import napari_get_reader
    from test_bad_input import _mini_root

    root = _mini_root(her2st, tmp_path, image=False)
    folder = root / "ST-imgs" / "C" / "C2"
    folder.mkdir(parents=True)
    src = next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))  # the real image, cut short
    data = src.read_bytes()
    (folder / src.name).write_bytes(data[: len(data) * 3 // 4])
    reader = napari_get_reader(str(folder))
    assert reader is not None
    with pytest.raises(SlideError, match=f"{src.name} could not be decoded.*truncated"):
        reader(str(folder))
