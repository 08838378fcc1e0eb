"""Low-resolution images that come with spot data: Space Ranger's hires / lowres PNGs, or the
images an AnnData file keeps in ``uns["spatial"][library]["images"]``.

They are not the full-resolution slide (features, prediction and training need that), but they
show the tissue under the spots when the slide is absent.  A :class:`Preview` is an RGB image and
its scale factor from full-resolution pixels (``tissue_hires_scalef`` / ``tissue_lowres_scalef``).
A candidate without content (all one colour: scanpy's test copy of Visium data has a black
hires PNG) is passed over for the next one, with a note saying so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: below this spread of RGB values (0–255) an image is taken to be blank (a placeholder)
_BLANK_STD = 1.0


@dataclass(frozen=True, eq=False)
class Preview:
    """An RGB ``uint8`` image whose pixel (r, c) lies at full-resolution (r, c) / ``scale``."""

    image: np.ndarray
    scale: float
    #: which image it is, in the data's words: "hires", "lowres"
    kind: str
    #: what was passed over to pick this one, for the user
    note: str = ""


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """H×W×3 ``uint8`` from gray, RGB or RGBA in 0–1 floats or 0–255 integers.

    Alpha is composited on white, the way slide readers treat transparent pixels.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"not an image: shape {a.shape}")
    a = a.astype(np.float32)
    if np.issubdtype(np.asarray(image).dtype, np.floating) and float(np.nanmax(a, initial=0.0)) <= 1.0:
        a = a * 255.0
    if a.shape[2] == 4:
        alpha = a[..., 3:4] / 255.0
        a = a[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)


def has_content(image: np.ndarray) -> bool:
    """False for an image of one colour (black or white placeholders, empty arrays)."""
    rgb = as_rgb8(image)
    return rgb.size > 0 and float(rgb.reshape(-1, 3).std(axis=0).max()) > _BLANK_STD


def pick_preview(candidates: Iterable[tuple[str, np.ndarray | None, float | None]]) -> Preview | None:
    """The first candidate ``(kind, image, scale)`` that has content and a scale factor."""
    passed: list[str] = []
    for kind, image, scale in candidates:
        if image is None:
            continue
        if not scale:
            passed.append(f"the {kind} image has no scale factor")
            continue
        if not has_content(image):
            passed.append(f"the {kind} image is blank")
            continue
        note = f"{'; '.join(passed)}: showing the {kind} image" if passed else ""
        return Preview(as_rgb8(image), float(scale), kind, note)
    return None
