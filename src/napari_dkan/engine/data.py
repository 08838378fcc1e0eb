"""From sections to the arrays the models consume.

:func:`load_section_data` gathers, for one section, the frozen image features (patch feature,
5×5 region tiles with their mask, optional 49 patch tokens or raw patches), the spots' array
positions, their nearest neighbours (NH2ST) and, when the section has counts, the training
targets of a gene panel (method.md §4).  Features come from the on-disk feature cache, so a
section is encoded once per encoder configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_dkan.io.dataset import Section
from napari_dkan.io.expression import section_panel_counts, targets_from_counts

DEFAULT_ENCODER = "efficientnet-lite0-imagenet"


@dataclass(frozen=True)
class FeatureSpec:
    """Which frozen features a model reads (part of every checkpoint's config)."""

    encoder: str = DEFAULT_ENCODER
    mode: str = "shared"
    tile_px: int = 224
    target_mpp: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(**data)


@dataclass(frozen=True)
class Needs:
    """What a model family needs beyond patch features and region tiles."""

    patch_tokens: bool = False
    patches: bool = False
    neighbours: int = 0


@dataclass
class SectionData:
    """Everything a model sees of one section, in the section's spot order."""

    name: str
    patient: str
    spot_id: np.ndarray  # (N,)
    positions: np.ndarray  # (N, 2) int64 array (row, col)
    xy: np.ndarray  # (N, 2) level-0 pixel centres (x, y)
    patch_feat: np.ndarray  # (N, D) float32, also the slide context
    region: np.ndarray  # (N, 25, D) float16
    region_mask: np.ndarray  # (N, 25) bool, True = off the image
    patch_tokens: np.ndarray | None = None  # (N, 49, Dp) float16
    patches: np.ndarray | None = None  # (N, H, W, 3) uint8
    neighbours: np.ndarray | None = None  # (N, k) int64, nearest spots, self first
    y: np.ndarray | None = None  # (N, G) float32 targets
    panel_counts: np.ndarray | None = None  # (N, G) raw counts behind y (their depth)

    def __len__(self) -> int:
        return len(self.spot_id)

    def subset(self, index: np.ndarray) -> SectionData:
        """The spots at ``index`` (a new section-like record; neighbours are recomputed)."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        out = SectionData(
            self.name, self.patient, self.spot_id[index], self.positions[index], self.xy[index],
            self.patch_feat[index], self.region[index], self.region_mask[index],
            pick(self.patch_tokens), pick(self.patches), None, pick(self.y), pick(self.panel_counts),
        )
        if self.neighbours is not None:
            out.neighbours = nearest_spots(out.xy, self.neighbours.shape[1])
        return out


def nearest_spots(xy: np.ndarray, k: int) -> np.ndarray:
    """Indices of each spot's k nearest spots by pixel distance, itself first."""
    from scipy.spatial import cKDTree

    k_eff = min(k, len(xy))
    _, idx = cKDTree(xy).query(xy, k=k_eff)
    idx = np.asarray(idx).reshape(len(xy), k_eff)
    if k_eff < k:  # tiny sections: repeat the farthest available spot
        idx = np.concatenate([idx, np.repeat(idx[:, -1:], k - k_eff, axis=1)], axis=1)
    return idx.astype(np.int64)


def load_section_data(
    section: Section,
    features: FeatureSpec,
    panel: Sequence[str] | None,
    needs: Needs = Needs(),
    smoothing: bool = True,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    runtime: str = "auto",
    stain: Any = None,
) -> SectionData:
    """Features (from cache when present) and, with a panel and counts, targets of a section;
    with ``stain`` (a :class:`~napari_dkan.features.stain.StainReference`), of its tiles
    stain-normalised to that reference."""
    from napari_dkan.features import extract_section_features

    counts = None
    if panel is not None and section.has_counts:
        # first: bad counts (negative, missing genes) fail in a second, not after the features
        counts = section_panel_counts(section, list(panel))
    feats = extract_section_features(
        section, encoder=features.encoder, mode=features.mode, tile_px=features.tile_px,
        target_mpp=features.target_mpp, tokens=needs.patch_tokens, device=device,
        progress=progress, cancel=cancel, runtime=runtime, stain=stain,
    )
    return section_data_from_features(section, feats, features, panel, needs, smoothing, counts=counts,
                                      stain=stain)


def section_data_from_features(section: Section, feats: Any, features: FeatureSpec,
                               panel: Sequence[str] | None, needs: Needs = Needs(),
                               smoothing: bool = True, counts: np.ndarray | None = None,
                               stain: Any = None) -> SectionData:
    """A section's data from its extracted features (``SectionFeatures`` in spot order);
    ``counts``: its raw panel counts when already read (else read here with a panel and counts)."""
    from napari_dkan.features import section_patches

    spots = section.spots
    if not np.array_equal(feats.spot_id, spots.spot_id):
        raise RuntimeError(f"features of {section.name} are not in the section's spot order")
    if counts is None and panel is not None and section.has_counts:
        counts = section_panel_counts(section, list(panel))
    y = None if counts is None else targets_from_counts(counts, section.spots, smoothing)
    patches = None
    if needs.patches:
        patches = section_patches(section, size=features.tile_px, target_mpp=features.target_mpp,
                                  stain=stain)
    tokens = feats.patch_tokens
    return SectionData(
        name=section.name,
        patient=section.patient,
        spot_id=spots.spot_id,
        positions=np.column_stack([spots.array_row, spots.array_col]).astype(np.int64),
        xy=spots.xy,
        patch_feat=np.asarray(feats.patch, dtype=np.float32),
        region=np.asarray(feats.region, dtype=np.float16),
        region_mask=np.asarray(feats.region_mask, dtype=bool),
        patch_tokens=None if tokens is None else np.asarray(tokens, dtype=np.float16),
        patches=patches,
        neighbours=nearest_spots(spots.xy, needs.neighbours) if needs.neighbours else None,
        y=y,
        panel_counts=None if counts is None else np.asarray(counts, dtype=np.float32),
    )
