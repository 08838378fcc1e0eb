"""Predictions cached by model, slide and spots, in memory and on disk.

Re-running a prediction on the same slide, spots and model (e.g. after switching scope back,
or in a later napari session) returns the stored values at once.  The key holds the model's
run directory and weight digest, the identity of the image encoder it reads features with
(a local weight file's path, size and mtime), the slide file's identity (path, size, mtime), the
section and its µm/px, and a digest of the spot ids and positions; device and progress settings do not change a
prediction beyond float noise, so they are not part of it.  Disk files reuse the feature
cache's safetensors format, which checks the full key on reading.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dkan.features.cache import load_arrays, save_arrays, slide_identity, spots_digest
from napari_dkan.paths import cache_dir

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io.dataset import Section

CACHE_VERSION = 2  # 2: µm/px and encoder identity in the key


@dataclass(frozen=True)
class PredictionKey:
    """Everything a prediction depends on."""

    model: str  # run directory | weight digest
    slide: str  # slide_identity()
    section: str
    spots: str  # spots_digest()
    mpp: float = 0.0  # the section's level-0 µm/px
    encoder: str = ""  # the image encoder's identity (weights included)
    version: int = CACHE_VERSION

    @classmethod
    def of(cls, model: TrainedModel, section: Section) -> PredictionKey:
        from napari_dkan.features.registry import resolve_encoder

        weights = model.weights_sha256
        stain = f"|{model.stain.identity}" if model.stain is not None else ""  # off: keys as before
        return cls(
            model=f"{Path(model.run_dir).resolve()}|{weights}{stain}",
            slide=slide_identity(section.require_image()),
            section=f"{section.dataset}/{section.name}",
            spots=spots_digest(section.spots),
            mpp=float(section.mpp),
            encoder=resolve_encoder(model.features.encoder).identity,
        )

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()


class PredictionCache:
    """A small in-memory LRU in front of an on-disk store (``disk=False`` keeps memory only)."""

    def __init__(self, max_items: int = 16, disk: bool = True) -> None:
        self.max_items = max_items
        self.disk = disk
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # jobs run off the GUI thread

    def _path(self, key: PredictionKey) -> Path:
        return cache_dir("predictions") / f"{key.digest()[:32]}.safetensors"

    def get(self, key: PredictionKey) -> np.ndarray | None:
        digest = key.digest()
        with self._lock:
            if digest in self._items:
                self._items.move_to_end(digest)
                return self._items[digest]
        if not self.disk:
            return None
        hit = load_arrays(self._path(key), key)  # type: ignore[arg-type] - same key protocol
        if hit is None or "values" not in hit[0]:
            return None
        values = hit[0]["values"]
        self._remember(digest, values)
        return values

    def put(self, key: PredictionKey, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        self._remember(key.digest(), values)
        if self.disk:
            save_arrays(self._path(key), key, {"values": values}, {"section": key.section})  # type: ignore[arg-type]

    def clear_memory(self) -> None:
        with self._lock:
            self._items.clear()

    def _remember(self, digest: str, values: np.ndarray) -> None:
        with self._lock:
            self._items[digest] = values
            self._items.move_to_end(digest)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)


#: one cache per napari process, shared by every dock
PREDICTIONS = PredictionCache()
