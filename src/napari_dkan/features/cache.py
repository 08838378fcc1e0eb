"""On-disk cache of computed arrays, keyed by everything that determines them.

A cache file is a safetensors file (tensors and a string table, no pickled code) whose metadata
holds the full key as canonical JSON.  The file name carries a digest of the key, so a different
configuration lands in a different file; on reading, the stored key must equal the expected key
exactly, so a renamed, stale or hand-edited file is never trusted.  Unreadable (corrupt,
truncated) files count as a miss and are rebuilt.  The metadata also holds a SHA-256 of the
array bytes, so a file altered in place (a disk error, a stray write) is detected and rebuilt
too, and non-finite values are never served.  Files are written through
:func:`napari_dkan.storage.atomic_write`; the cache is optional: when it cannot be written (full
or read-only disk) the arrays are still returned, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.spots import SpotTable
from napari_dkan.paths import cache_dir
from napari_dkan.storage import StorageError, atomic_write, file_identity

log = logging.getLogger(__name__)

#: bump when the meaning of cached arrays changes, so old files are ignored
CACHE_VERSION = 1
_META_KEY, _META_INFO, _META_SHA = "napari_dkan.key", "napari_dkan.meta", "napari_dkan.sha256"


@dataclass(frozen=True)
class CacheKey:
    """Everything a cached array depends on."""

    kind: str  # "features" or "patches"
    slide: str  # slide_identity()
    spots: str  # spots_digest()
    mpp: float  # the slide's level-0 µm/px as resolved for the section
    tile_px: int
    target_mpp: float | None
    encoder: str = ""  # EncoderSpec.identity ("" for raw patches)
    mode: str = ""
    tokens: bool = False
    version: int = CACHE_VERSION
    stain: str = ""  # StainReference.identity when tiles are stain-normalised, else ""

    def as_json(self) -> str:
        data = asdict(self)
        if not self.stain:  # keys from before stain normalisation stay as they were
            del data["stain"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()


def slide_identity(path: Path) -> str:
    """The slide file's resolved path, size and modification time (cheap, no pixel read)."""
    return file_identity(Path(path))


def spots_digest(spots: SpotTable) -> str:
    """A hash of the spot ids and positions, in order."""
    h = hashlib.sha256()
    h.update("\0".join(spots.spot_id.tolist()).encode())
    h.update(np.ascontiguousarray(spots.x, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(spots.y, dtype=np.float64).tobytes())
    return h.hexdigest()


def cache_file(key: CacheKey, label: str) -> Path:
    """Where the arrays for ``key`` live; ``label`` (e.g. section and encoder) helps people."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:80] or "section"
    return cache_dir(key.kind) / f"{safe}-{key.digest()[:24]}.safetensors"


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    return h.hexdigest()


def save_arrays(path: Path, key: CacheKey, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> bool:
    """Write ``arrays`` with the key, a checksum and ``info`` (JSON-able) atomically.

    Returns False, with a warning, when the cache folder cannot be written: a cache only saves
    time, so its failure never stops the work it would have saved.
    """
    from safetensors.numpy import save

    clean = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    data = save(clean, metadata={_META_KEY: key.as_json(), _META_SHA: arrays_digest(clean),
                                 _META_INFO: json.dumps(info, default=_jsonable)})
    try:
        atomic_write(path, data)
    except StorageError as exc:
        log.warning("the cache was not written (%s); continuing without it", exc)
        return False
    return True


def load_arrays(path: Path, key: CacheKey) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The cached arrays and info, or None when absent, unreadable, corrupt or for another key."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            if meta.get(_META_KEY) != key.as_json():
                log.warning("cache file %s was written for another configuration; rebuilding", path)
                return None
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(meta.get(_META_INFO, "{}"))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a miss, never a crash
        log.warning("cache file %s is unreadable (%s); rebuilding", path, exc)
        return None
    problem = _integrity_problem(arrays, meta.get(_META_SHA))
    if problem:
        log.warning("cache file %s is corrupt (%s); rebuilding", path, problem)
        return None
    return arrays, info


def _integrity_problem(arrays: dict[str, np.ndarray], expected_sha: str | None) -> str | None:
    """Why cached arrays cannot be trusted, or None.  Files from before checksums are checked
    for non-finite values only."""
    if expected_sha is not None and arrays_digest(arrays) != expected_sha:
        return "its content does not match the checksum written with it"
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return f"{name} holds non-finite values"
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
