from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_dkan.io import slides as slides_mod
from napari_dkan.io.slides import SlideError, open_slide


def test_svs_levels_size_and_mpp(wsi_dir):
    s = open_slide(wsi_dir / "CMU-1-Small-Region.svs")
    assert s.level_count == 1
    assert s.dimensions == (2220, 2967)
    assert s.mpp == pytest.approx(0.499)
    assert s.mpp_source == "metadata"
    assert s.backend == "openslide"
    assert s.layer_scale == (pytest.approx(0.499), pytest.approx(0.499))


def test_patch_equals_openslide_pixels(wsi_dir):
    import openslide

    path = wsi_dir / "CMU-1-Small-Region.svs"
    s = open_slide(path)
    patch = s.read_patch(1000.7, 1500.2, size=224)
    ref = np.asarray(openslide.OpenSlide(str(path)).read_region((1000 - 112, 1500 - 112), 0, (224, 224)))
    assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
    np.testing.assert_array_equal(patch, ref[..., :3])


def test_patch_outside_image_is_white(wsi_dir):
    s = open_slide(wsi_dir / "CMU-1-Small-Region.svs")
    patch = s.read_patch(0, 0, size=100)
    assert (patch[:50, :50] == 255).all()  # the quarter off the image
    assert not (patch[50:, 50:] == 255).all()


def test_pyramidal_tiff_levels_and_dask_pyramid(wsi_dir):
    s = open_slide(wsi_dir / "openslide-fixtures" / "boxes.tiff")
    assert s.level_count == 4
    pyr = s.pyramid()
    assert [a.shape for a in pyr] == [(lv.height, lv.width, 3) for lv in s.levels]
    assert all(a.dtype == np.uint8 for a in pyr)
    # largest first, chunks from the native tile size
    assert pyr[0].shape[0] > pyr[1].shape[0] > pyr[3].shape[0]
    assert pyr[0].chunksize[:2] == (min(s.tile_size, 250), min(s.tile_size, 300))
    np.testing.assert_array_equal(np.asarray(pyr[1]), s.read_region(1, 0, 0, 150, 125))
    # level 2 has a non-integer downsample (4.016): OpenSlide renders chunks that start at a
    # fractional level-0 position with sub-pixel interpolation, so they may differ by a grey level
    whole = s.read_region(2, 0, 0, s.levels[2].width, s.levels[2].height).astype(int)
    assert np.abs(np.asarray(pyr[2]).astype(int) - whole).max() <= 3


def test_dask_read_decodes_only_needed_tiles(wsi_dir, monkeypatch):
    s = open_slide(wsi_dir / "CMU-1-Small-Region.svs")
    backend = s._backend
    calls: list[tuple[int, int]] = []
    original = backend.read

    def counting(level, x, y, w, h):
        calls.append((w, h))
        return original(level, x, y, w, h)

    monkeypatch.setattr(backend, "read", counting)
    level0 = s.pyramid()[0]
    window = np.asarray(level0[1000:1512, 700:1212])
    tile = s.tile_size  # 240 for this Aperio file
    assert window.shape == (512, 512, 3)
    # rows 1000-1511 touch tiles 4-6, cols 700-1211 tiles 2-5: exactly those 3×4 are decoded
    rows = range(1000 // tile, 1511 // tile + 1)
    cols = range(700 // tile, 1211 // tile + 1)
    assert len(calls) == len(rows) * len(cols) == 12
    assert sum(w * h for w, h in calls) <= 12 * tile * tile < 2220 * 2967 / 4
    np.testing.assert_array_equal(window, original(0, 700, 1000, 512, 512))


def test_her2st_jpeg_patch_equals_file_pixels(her2st):
    path = next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))
    s = open_slide(path)
    assert s.backend == "image"
    assert s.mpp is None and s.mpp_source == "unknown"
    w, h = s.dimensions
    assert 9000 < w < 9600 and 9000 < h < 10200
    with slides_mod._unbounded_pillow() as pil, pil.open(path) as im:
        ref = np.asarray(im.convert("RGB"))
    for cx, cy in [(3000.6, 4000.2), (6930.58, 3510.24), (w - 50, h - 50)]:
        patch = s.read_patch(cx, cy, 224)
        x0, y0 = int(np.floor(cx)) - 112, int(np.floor(cy)) - 112
        expect = np.full((224, 224, 3), 255, np.uint8)
        ys, xs = slice(max(y0, 0), min(y0 + 224, h)), slice(max(x0, 0), min(x0 + 224, w))
        expect[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = ref[ys, xs]
        np.testing.assert_array_equal(patch, expect)
    pyr = s.pyramid()
    assert pyr[0].shape == (h, w, 3) and len(pyr) >= 4
    assert pyr[-1].shape[0] <= 1024


def test_patch_at_requested_mpp_resamples_from_level0(wsi_dir):
    s = open_slide(wsi_dir / "CMU-1-Small-Region.svs")
    patch = s.read_patch(1100, 1500, size=112, mpp=0.998)  # twice coarser: 224 native px
    region = s.read_region(0, 1100 - 112, 1500 - 112, 224, 224)
    expect = np.asarray(Image.fromarray(region).resize((112, 112), Image.Resampling.BILINEAR))
    assert patch.shape == (112, 112, 3)
    np.testing.assert_array_equal(patch, expect)


def test_plain_png_needs_mpp_to_be_given(wsi_dir):
    s = open_slide(wsi_dir / "openslide-fixtures" / "boxes.png")
    assert s.mpp is None
    with pytest.raises(SlideError, match="no µm-per-pixel"):
        s.require_mpp()
    s2 = open_slide(wsi_dir / "openslide-fixtures" / "boxes.png", mpp=0.5)
    assert s2.mpp == 0.5 and s2.mpp_source == "user"
    with pytest.raises(SlideError, match="positive"):
        open_slide(wsi_dir / "openslide-fixtures" / "boxes.png", mpp=-1)


@pytest.mark.parametrize("name", ["unopenable.tiff", "unreadable.svs"])
def test_broken_slides_raise_clear_error(wsi_dir, name):
    with pytest.raises(SlideError, match=name.split(".")[0]):
        open_slide(wsi_dir / "openslide-fixtures" / name)


def test_unsupported_and_missing_files(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("not an image")
    with pytest.raises(SlideError, match="Unsupported file notes.txt"):
        open_slide(txt)
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"\xff\xd8 this is no jpeg")
    with pytest.raises(SlideError, match="fake.jpg"):
        open_slide(fake)


def test_oversize_plain_image_is_refused_with_advice(wsi_dir, monkeypatch):
    monkeypatch.setattr(slides_mod, "MAX_PLAIN_PIXELS", 1000)
    with pytest.raises(SlideError, match="pyramidal TIFF"):
        open_slide(wsi_dir / "openslide-fixtures" / "boxes.png")
