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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dkan.features.cache import (
    CacheKey,
    cache_file,
    load_arrays,
    save_arrays,
    slide_identity,
    spots_digest,
)
from napari_dkan.features.geometry import MASKED, SLOTS, gather_regions, make_layout
from napari_dkan.features.pixels import effective_target_mpp, tile_reader, tile_step
from napari_dkan.features.registry import DEFAULT_ENCODER, EncoderSpec, resolve_encoder
from napari_dkan.features.stain import StainReference, normalised_reader, section_transform
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
    runtime: str = "auto",
    stain: StainReference | None = None,
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
    ``runtime`` runs an encoder given by name (``auto``: the fastest installed one on a CPU; see
    :mod:`~napari_dkan.features.runtimes`); a given encoder keeps its own.  Features do not
    depend on the runtime (mean cosine ≥ 0.9999 to torch), so the cache is shared by all.
    With ``stain``, every tile is first stain-normalised to that reference
    (:mod:`~napari_dkan.features.stain`); such features are cached apart.
    """
    t0 = time.perf_counter()
    region_mode = _region_mode(mode)
    spec: EncoderSpec = resolve_encoder(encoder) if isinstance(encoder, str) else encoder.spec
    spots = section.spots
    plan = _plan(section, spec, region_mode, tile_px, target_mpp, tokens, stain)
    if cache:
        feats = cached_features(plan, spots.spot_id, t0)
        if feats is not None:
            report(progress, 1, 1)
            return feats

    *_, (_, feats) = _encode_in_stages(section, [np.arange(len(spots))], plan, spec, encoder,
                                      tile_px, tokens, device, batch_size, num_workers, cache,
                                      progress, cancel, runtime, t0, stain)
    return feats


def extract_in_stages(
    section: Section,
    stages: Sequence[np.ndarray],
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
    runtime: str = "auto",
    stain: StainReference | None = None,
) -> Iterator[tuple[np.ndarray, SectionFeatures]]:
    """:func:`extract_section_features` in stages: the spots of ``stages[0]`` first, and so on.

    Yields ``(done, features)`` after each stage: the sorted indices of every spot whose patch
    and region tiles are encoded so far, and their features (in ``done`` order).  Spots that no
    stage names form a last stage.  The tiles are those of the whole section's layout, each
    encoded once (a shared grid tile in the stage of the first spot that needs it), so the
    features of a spot do not depend on the stages and the last yield — every spot — equals
    :func:`extract_section_features` and is cached like it.  From the cache, one yield.
    """
    t0 = time.perf_counter()
    region_mode = _region_mode(mode)
    spec: EncoderSpec = resolve_encoder(encoder) if isinstance(encoder, str) else encoder.spec
    spots = section.spots
    plan = _plan(section, spec, region_mode, tile_px, target_mpp, tokens, stain)
    if cache:
        feats = cached_features(plan, spots.spot_id, t0)
        if feats is not None:
            report(progress, 1, 1)
            yield np.arange(len(spots)), feats
            return
    yield from _encode_in_stages(section, stages, plan, spec, encoder, tile_px, tokens, device,
                                 batch_size, num_workers, cache, progress, cancel, runtime, t0, stain)


def _encode_in_stages(
    section: Section, stages: Sequence[np.ndarray], plan: _Plan, spec: EncoderSpec,
    encoder: str | Encoder | LazyEncoder, tile_px: int, tokens: bool, device: str,
    batch_size: int | None, num_workers: int, cache: bool, progress: ProgressCallback | None,
    cancel: CancelToken | None, runtime: str, t0: float, stain: StainReference | None = None,
) -> Iterator[tuple[np.ndarray, SectionFeatures]]:
    from napari_dkan.features.encoders import suggest_batch_size
    from napari_dkan.features.pipeline import encode_tiles

    spots = section.spots
    n = len(spots)
    mode, target = plan.key.mode, plan.target_mpp
    stages = _complete(stages, n)
    transform = None if stain is None else section_transform(section, stain)
    with section.open_slide() as slide:  # first, so bad data fails before a model loads
        layout = make_layout(mode, spots.x, spots.y, plan.step, *slide.dimensions)
        total = layout.n_tiles
        enc = _ready_encoder(encoder, spec, device, runtime)
        bs = int(batch_size) if batch_size else suggest_batch_size(spec, enc.device)
        # One table of encoded tiles, patches first, then region tiles (geometry.py).
        patch = np.zeros((n, enc.width), np.float32)
        grid = np.zeros((len(layout.tile_centres), enc.width), np.float16)
        patch_tokens = np.zeros((n, 49, enc.width), np.float16) if tokens else None
        tile_done = np.zeros(len(layout.tile_centres), bool)
        spot_done = np.zeros(n, bool)
        encoded, read_wait, encode_s = 0, 0.0, 0.0
        for stage in stages:
            new_tiles = layout.slots[stage]
            new_tiles = np.unique(new_tiles[new_tiles >= n] - n)
            new_tiles = new_tiles[~tile_done[new_tiles]]
            for centres, count, is_patch in ((layout.patch_centres[stage], len(stage), True),
                                             (layout.tile_centres[new_tiles], len(new_tiles), False)):
                if count == 0:
                    continue
                read = normalised_reader(tile_reader(slide, centres, tile_px, target), transform)
                out = encode_tiles(enc, read, count, tile_px,
                                   tokens=tokens and is_patch, batch_size=bs,
                                   num_workers=num_workers, progress=progress, cancel=cancel,
                                   progress_offset=encoded, progress_total=total)
                encoded += count
                read_wait, encode_s = read_wait + out.stats.read_wait_s, encode_s + out.stats.encode_s
                if is_patch:
                    patch[stage] = out.pooled
                    if patch_tokens is not None and out.tokens is not None:
                        patch_tokens[stage] = out.tokens
                else:
                    grid[new_tiles] = out.pooled.astype(np.float16)
                    tile_done[new_tiles] = True
            spot_done[stage] = True
            if spot_done.all():
                break
            done = np.flatnonzero(spot_done)
            yield done, _partial(spots.spot_id, done, patch, grid, layout.slots, patch_tokens)
    seconds = time.perf_counter() - t0
    meta: dict[str, Any] = {
        "section": section.name,
        "encoder": spec.name,
        "encoder_identity": spec.identity,
        "width": enc.width,
        "mode": mode,
        "tile_px": int(tile_px),
        "mpp": plan.mpp,
        "target_mpp": target,
        "step_px": plan.step,
        "tokens": bool(tokens),
        "n_spots": n,
        "region_tiles": len(layout.tile_centres),
        "masked_fraction": float(layout.mask.mean()),
        "passes": total,
        "tiles_encoded": total,
        "encoder_passes_per_spot": total / n,
        "seconds": seconds,
        "tiles_per_s": total / seconds,
        "spots_per_s": n / seconds,
        "read_wait_s": read_wait,
        "encode_s": encode_s,
        "device": str(enc.device),
        "runtime": enc.runtime,
        "batch_size": bs,
        "num_workers": int(num_workers),
        "stages": len(stages),
        "cache_hit": False,
        "cache_path": str(plan.path) if cache else None,
    }
    if transform is not None:
        meta["stain"] = transform.record()
    arrays = {"patch": patch, "tiles": grid, "slots": layout.slots.astype(np.int64)}
    if patch_tokens is not None:
        arrays["patch_tokens"] = patch_tokens
    if cache:
        save_arrays(plan.path, plan.key, arrays, meta)
    feats = _from_arrays(spots.spot_id, arrays, meta)
    assert feats is not None
    report(progress, total, total)
    yield np.arange(n), feats


def _complete(stages: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
    """The stages as disjoint index arrays in order (a spot in its first stage only), plus a
    last stage of the spots none names; empty stages dropped."""
    seen = np.zeros(n, bool)
    out = []
    for stage in [*stages, np.arange(n)]:
        idx = np.asarray(stage, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DataError(f"a stage names spots outside 0…{n - 1}")
        idx = idx[~seen[idx]]
        idx = idx[np.unique(idx, return_index=True)[1]] if idx.size else idx
        if idx.size:
            seen[idx] = True
            out.append(np.sort(idx))
    return out


def _partial(spot_id: np.ndarray, done: np.ndarray, patch: np.ndarray, grid: np.ndarray,
             slots: np.ndarray, patch_tokens: np.ndarray | None) -> SectionFeatures:
    """Features of the ``done`` spots while the others' tiles are still being encoded."""
    table = np.concatenate([patch.astype(np.float16), grid], axis=0)
    sub = slots[done]
    return SectionFeatures(
        spot_id=np.asarray(spot_id)[done], patch=patch[done], region=gather_regions(sub, table),
        region_mask=sub == MASKED,
        patch_tokens=None if patch_tokens is None else patch_tokens[done],
        meta={"partial": True, "n_spots_done": len(done)},
    )


def _region_mode(mode: str) -> RegionMode:
    try:
        return RegionMode(mode)
    except ValueError:
        raise DataError(f"unknown region mode {mode!r}; choose 'shared' or 'exact'") from None


@dataclass(frozen=True)
class _Plan:
    """Where a section's features are cached and the geometry they are extracted with."""

    key: CacheKey
    path: Path
    label: str
    mpp: float
    target_mpp: float | None
    step: float


def _plan(section: Section, spec: EncoderSpec, mode: RegionMode, tile_px: int,
          target_mpp: float | None, tokens: bool, stain: StainReference | None = None) -> _Plan:
    spots = section.spots
    if len(spots) == 0:
        raise DataError(f"section {section.name} has no spots")
    native = float(section.mpp)
    target = effective_target_mpp(native, target_mpp)
    key = CacheKey(
        kind="features",
        slide=slide_identity(section.require_image()),
        spots=spots_digest(spots),
        mpp=native,
        tile_px=int(tile_px),
        target_mpp=target,
        encoder=spec.identity,
        mode=mode.value,
        tokens=bool(tokens),
        stain="" if stain is None else stain.identity,
    )
    label = f"{section.dataset}-{section.name}-{spec.family}-{mode}" + ("-stain" if stain else "")
    return _Plan(key, cache_file(key, label), label, native, target, tile_step(tile_px, native, target))


def cached_features(plan: _Plan, spot_id: np.ndarray, t0: float) -> SectionFeatures | None:
    """The plan's features from the cache (or those cached with tokens), None on a miss."""
    hit, hit_path = load_arrays(plan.path, plan.key), plan.path
    if hit is None and not plan.key.tokens:
        # features cached with tokens hold everything a token-less request needs
        with_tokens = replace(plan.key, tokens=True)
        hit_path = cache_file(with_tokens, plan.label)
        hit = load_arrays(hit_path, with_tokens)
    if hit is None:
        return None
    feats = _from_arrays(spot_id, *hit)
    if feats is None:
        return None
    seconds = time.perf_counter() - t0
    built = {f"built_{k}": feats.meta.get(k) for k in ("seconds", "encoder_passes_per_spot")}
    feats.meta.update(**built, cache_hit=True, cache_path=str(hit_path), seconds=seconds,
                      tiles_encoded=0, passes=0, encoder_passes_per_spot=0.0,
                      tiles_per_s=0.0, spots_per_s=len(spot_id) / max(seconds, 1e-9))
    return feats


def _ready_encoder(encoder: str | Encoder | LazyEncoder, spec: EncoderSpec, device: str,
                   runtime: str) -> Encoder:
    from napari_dkan.devices import resolve_device
    from napari_dkan.features.encoders import load_encoder

    dev = resolve_device(device)
    if isinstance(encoder, str):
        return load_encoder(spec, dev, runtime)
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
