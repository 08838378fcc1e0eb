"""Frozen features of one section: what the DKAN engine calls.

For every spot: the patch feature (the 224-px patch centred on it; the rows of all spots form
the slide context), the 25 region-tile features with their off-image mask, and optionally the
patch's 7×7 token grid.  See :mod:`napari_dkan.features.geometry` for the two region modes.

Results are cached on disk (:mod:`napari_dkan.features.cache`); a second call with the same
slide, spots, encoder, tile size, µm/px, mode and tokens flag reads the file and runs no encoder.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dkan.features.cache import CacheKey, cache_file, load_arrays, save_arrays, slide_identity, spots_digest
from napari_dkan.features.geometry import MASKED, SLOTS, gather_regions, make_layout
from napari_dkan.features.pixels import effective_target_mpp, tile_reader, tile_step
from napari_dkan.features.registry import DEFAULT_ENCODER, EncoderSpec, resolve_encoder
from napari_dkan.io.errors import DataError
from napari_dkan.progress import CancelToken, ProgressCallback, report

if TYPE_CHECKING:
    from napari_dkan.features.encoders import Encoder, LazyEncoder
    from napari_dkan.io.dataset import Section


class RegionMode(str, enum.Enum):
    EXACT = "exact"
    SHARED = "shared"

    def __str__(self) -> str:
        return self.value


@dataclass
class SectionFeatures:
    """Frozen-encoder features of one section, in the section's spot order."""

    spot_id: np.ndarray  # (N,) str
    patch: np.ndarray  # (N, D) float32: the spot-centred patch; also the slide context
    region: np.ndarray  # (N, 25, D) float16: 5×5 tiles row-major (dy, dx) from (-2,-2); 0 where masked
    region_mask: np.ndarray  # (N, 25) bool: True where the tile is off the image
    patch_tokens: np.ndarray | None = None  # (N, 49, D) float16: the patch's 7×7 token grid
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        return len(self.spot_id)

    @property
    def width(self) -> int:
        return int(self.patch.shape[1])


def extract_section_features(
    section: Section,
    encoder: str | Encoder | LazyEncoder = DEFAULT_ENCODER,
    mode: str = "shared",
    tile_px: int = 224,
    target_mpp: float | None = None,
    tokens: bool = False,
    device: str = "auto",
    batch_size: int | None = None,
    num_workers: int = 2,
    cache: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> SectionFeatures:
    """Patch, region and (optionally) token features of every spot of ``section``.

    ``encoder`` is a registered name (see :func:`~napari_dkan.features.list_encoders`), a loaded
    :class:`~napari_dkan.features.encoders.Encoder`, or a
    :class:`~napari_dkan.features.encoders.LazyEncoder` (built at the first cache miss): pass
    one of the latter two to reuse a model across sections.
    ``mode`` is ``shared`` (each grid tile encoded once; the default) or ``exact`` (the paper's
    25 tiles per spot).  ``target_mpp`` resamples tiles to that µm/px.  ``progress(done, total)``
    counts encoded tiles; ``cancel.is_set()`` is checked between batches and raises
    :class:`~napari_dkan.progress.Cancelled`.  A given encoder is moved to ``device``.
    """
    t0 = time.perf_counter()
    try:
        region_mode = RegionMode(mode)
    except ValueError:
        raise DataError(f"unknown region mode {mode!r}; choose 'shared' or 'exact'") from None
    spec: EncoderSpec = resolve_encoder(encoder) if isinstance(encoder, str) else encoder.spec
    spots = section.spots
    if len(spots) == 0:
        raise DataError(f"section {section.name} has no spots")
    native = float(section.mpp)
    target = effective_target_mpp(native, target_mpp)
    step = tile_step(tile_px, native, target)
    key = CacheKey(
        kind="features",
        slide=slide_identity(section.require_image()),
        spots=spots_digest(spots),
        mpp=native,
        tile_px=int(tile_px),
        target_mpp=target,
        encoder=spec.identity,
        mode=region_mode.value,
        tokens=bool(tokens),
    )
    label = f"{section.dataset}-{section.name}-{spec.family}-{region_mode}"
    path = cache_file(key, label)
    if cache:
        hit, hit_path = load_arrays(path, key), path
        if hit is None and not tokens:
            # features cached with tokens hold everything a token-less request needs
            with_tokens = replace(key, tokens=True)
            hit_path = cache_file(with_tokens, label)
            hit = load_arrays(hit_path, with_tokens)
        if hit is not None:
            feats = _from_arrays(spots.spot_id, *hit)
            if feats is not None:
                seconds = time.perf_counter() - t0
                built = {f"built_{k}": feats.meta.get(k) for k in ("seconds", "encoder_passes_per_spot")}
                feats.meta.update(**built, cache_hit=True, cache_path=str(hit_path), seconds=seconds,
                                  tiles_encoded=0, passes=0, encoder_passes_per_spot=0.0,
                                  tiles_per_s=0.0, spots_per_s=len(spots) / max(seconds, 1e-9))
                report(progress, 1, 1)
                return feats

    from napari_dkan.features.encoders import suggest_batch_size
    from napari_dkan.features.pipeline import encode_tiles

    n = len(spots)
    with section.open_slide() as slide:  # first, so bad data fails before a model loads
        layout = make_layout(region_mode.value, spots.x, spots.y, step, *slide.dimensions)
        total = layout.n_tiles
        enc = _ready_encoder(encoder, spec, device)
        bs = int(batch_size) if batch_size else suggest_batch_size(spec, enc.device)
        # Patches first, then region tiles: their features form one table (geometry.py).
        patches = encode_tiles(enc, tile_reader(slide, layout.patch_centres, tile_px, target), n,
                               tile_px, tokens=tokens, batch_size=bs, num_workers=num_workers,
                               progress=progress, cancel=cancel, progress_total=total)
        tiles = encode_tiles(enc, tile_reader(slide, layout.tile_centres, tile_px, target),
                             len(layout.tile_centres), tile_px, batch_size=bs,
                             num_workers=num_workers, progress=progress, cancel=cancel,
                             progress_offset=n, progress_total=total)
    seconds = time.perf_counter() - t0
    passes = layout.n_tiles
    meta: dict[str, Any] = {
        "section": section.name,
        "encoder": spec.name,
        "encoder_identity": spec.identity,
        "width": enc.width,
        "mode": region_mode.value,
        "tile_px": int(tile_px),
        "mpp": native,
        "target_mpp": target,
        "step_px": step,
        "tokens": bool(tokens),
        "n_spots": n,
        "region_tiles": len(layout.tile_centres),
        "masked_fraction": float(layout.mask.mean()),
        "passes": passes,
        "tiles_encoded": passes,
        "encoder_passes_per_spot": passes / n,
        "seconds": seconds,
        "tiles_per_s": passes / seconds,
        "spots_per_s": n / seconds,
        "read_wait_s": patches.stats.read_wait_s + tiles.stats.read_wait_s,
        "encode_s": patches.stats.encode_s + tiles.stats.encode_s,
        "device": str(enc.device),
        "batch_size": bs,
        "num_workers": int(num_workers),
        "cache_hit": False,
        "cache_path": str(path) if cache else None,
    }
    arrays = {
        "patch": patches.pooled,
        "tiles": tiles.pooled.astype(np.float16),
        "slots": layout.slots.astype(np.int64),
    }
    if tokens and patches.tokens is not None:
        arrays["patch_tokens"] = patches.tokens
    if cache:
        save_arrays(path, key, arrays, meta)
    feats = _from_arrays(spots.spot_id, arrays, meta)
    assert feats is not None
    report(progress, total, total)
    return feats


def _ready_encoder(encoder: str | Encoder | LazyEncoder, spec: EncoderSpec, device: str) -> Encoder:
    from napari_dkan.devices import resolve_device
    from napari_dkan.features.encoders import load_encoder

    dev = resolve_device(device)
    if isinstance(encoder, str):
        return load_encoder(spec, dev)
    return encoder.to(dev)


def _from_arrays(spot_id: np.ndarray, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> SectionFeatures | None:
    """Features from stored arrays (None when they are inconsistent with the spots)."""
    patch, tiles, slots = arrays.get("patch"), arrays.get("tiles"), arrays.get("slots")
    if patch is None or tiles is None or slots is None:
        return None
    n = len(spot_id)
    if patch.shape[0] != n or slots.shape != (n, SLOTS) or (tiles.size and tiles.shape[1] != patch.shape[1]):
        return None
    if slots.max(initial=MASKED) >= n + len(tiles):
        return None
    # one table of encoded tiles: the patches, then the region tiles (see geometry.RegionLayout)
    table = np.concatenate([patch.astype(np.float16), tiles.reshape(-1, patch.shape[1])], axis=0)
    region = gather_regions(slots, table)
    return SectionFeatures(
        spot_id=np.asarray(spot_id),
        patch=patch.astype(np.float32, copy=False),
        region=region,
        region_mask=slots == MASKED,
        patch_tokens=arrays.get("patch_tokens"),
        meta=dict(meta),
    )


def region_cosine_similarity(a: SectionFeatures, b: SectionFeatures) -> float:
    """Mean cosine similarity of two extractions' region features, over tiles both keep."""
    if a.region.shape != b.region.shape:
        raise DataError(f"region features differ in shape: {a.region.shape} vs {b.region.shape}")
    keep = ~a.region_mask & ~b.region_mask
    x = a.region[keep].astype(np.float32)
    y = b.region[keep].astype(np.float32)
    num = (x * y).sum(axis=1)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12))) if len(x) else float("nan")
