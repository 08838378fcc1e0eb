"""Pixels for the encoders and the trainable patch CNN: tile reads and cached raw patches."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from napari_dkan.features.cache import (
    CacheKey,
    cache_file,
    load_arrays,
    save_arrays,
    slide_identity,
    spots_digest,
)
from napari_dkan.features.pipeline import TileReader, read_batches
from napari_dkan.features.stain import normalised_reader, section_transform
from napari_dkan.io.errors import DataError
from napari_dkan.progress import CancelToken, ProgressCallback, check_cancel, report

if TYPE_CHECKING:
    from napari_dkan.features.stain import StainReference
    from napari_dkan.io.dataset import Section
    from napari_dkan.io.slides import Slide


def effective_target_mpp(native_mpp: float, target_mpp: float | None) -> float | None:
    """None when tiles are read at the slide's own resolution (no target, or the same one)."""
    if target_mpp is None:
        return None
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise DataError(f"target µm per pixel must be a positive number, got {target_mpp!r}")
    if math.isclose(target_mpp, native_mpp, rel_tol=1e-3):
        return None
    return float(target_mpp)


def tile_step(tile_px: int, native_mpp: float, target_mpp: float | None) -> float:
    """Tile side in level-0 pixels."""
    if tile_px < 16:
        raise DataError(f"tile size must be at least 16 px, got {tile_px}")
    return float(tile_px) if target_mpp is None else tile_px * target_mpp / native_mpp


def tile_reader(slide: Slide, centres: np.ndarray, tile_px: int, target_mpp: float | None) -> TileReader:
    """Read tile ``i`` centred on ``centres[i]`` (level-0 x, y), resampled to ``target_mpp``.

    At the slide's own resolution the tile starts at ``floor(x) - tile_px // 2`` (the paper's
    patch protocol); with a target µm/px it comes from the finest pyramid level that is at
    least as fine, resampled (``Slide.read_patch``).
    """

    def read(i: int) -> np.ndarray:
        x, y = centres[i]
        return slide.read_patch(float(x), float(y), size=tile_px, mpp=target_mpp)

    return read


def section_patches(
    section: Section,
    size: int = 224,
    target_mpp: float | None = None,
    cache: bool = True,
    num_workers: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    stain: StainReference | None = None,
) -> np.ndarray:
    """(N, size, size, 3) uint8 patches centred on the section's spots, in spot order.

    These feed a trainable patch CNN.  They are cached on disk, keyed like the features (slide,
    spots, size, µm/px), so training epochs and later runs skip slide reading.  With ``stain``,
    each patch is stain-normalised to that reference (cached apart).
    """
    spots = section.spots
    if len(spots) == 0:
        raise DataError(f"section {section.name} has no spots")
    native = section.mpp
    target = effective_target_mpp(native, target_mpp)
    key = CacheKey(
        kind="patches",
        slide=slide_identity(section.require_image()),
        spots=spots_digest(spots),
        mpp=float(native),
        tile_px=int(size),
        target_mpp=target,
        stain="" if stain is None else stain.identity,
    )
    path = cache_file(key, f"{section.dataset}-{section.name}-{size}px" + ("-stain" if stain else ""))
    if cache:
        hit = load_arrays(path, key)
        if hit is not None and hit[0].get("patches") is not None:
            report(progress, len(spots), len(spots))
            return hit[0]["patches"]
    tile_step(size, native, target)  # validates the size
    t0 = time.perf_counter()
    out = np.empty((len(spots), size, size, 3), np.uint8)
    with section.open_slide() as slide:
        transform = None if stain is None else section_transform(section, stain)
        read = normalised_reader(tile_reader(slide, spots.xy, size, target), transform)
        stream = read_batches(read, len(spots), size, batch_size=64, num_workers=num_workers,
                              cancel=cancel)
        batches = iter(stream)
        try:
            for i0, buf, count in batches:
                check_cancel(cancel, "patch reading")
                out[i0 : i0 + count] = buf.numpy()[:count]
                stream.release(buf)
                report(progress, i0 + count, len(spots))
        finally:
            batches.close()
    if cache:
        save_arrays(path, key, {"patches": out},
                    {"section": section.name, "seconds": time.perf_counter() - t0})
    return out


def with_spots(section: Section, index: np.ndarray | slice) -> Section:
    """A copy of ``section`` restricted to some of its spots (for quick runs and benchmarks)."""
    spots = section.spots.subset(index)
    # Pin µm/px: estimated from the spot pitch, it would change with the spots kept.
    return replace(section, load_spots=lambda: spots, mpp_override=section.mpp)
