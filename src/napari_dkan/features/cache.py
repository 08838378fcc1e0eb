"""On-disk cache of computed arrays, keyed by everything that determines them.

A cache file is a safetensors file (tensors and a string table, no pickled code) whose metadata
holds the full key as canonical JSON.  The file name carries a digest of the key, so a different
configuration lands in a different file; on reading, the stored key must equal the expected key
exactly, so a renamed, stale or hand-edited file is never trusted.  Unreadable (corrupt,
truncated) files count as a miss and are rebuilt.  Files are written to a temporary name and
moved into place with ``os.replace``, so a crash or a concurrent reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.spots import SpotTable
from napari_dkan.paths import cache_dir

log = logging.getLogger(__name__)

#: bump when the meaning of cached arrays changes, so old files are ignored
CACHE_VERSION = 1
_META_KEY, _META_INFO = "napari_dkan.key", "napari_dkan.meta"


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

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        return hashlib.sha256(self.as_json().encode()).hexdigest()


def slide_identity(path: Path) -> str:
    """The slide file's resolved path, size and modification time (cheap, no pixel read)."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


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


def save_arrays(path: Path, key: CacheKey, arrays: dict[str, np.ndarray], info: dict[str, Any]) -> None:
    """Write ``arrays`` with the key and ``info`` (JSON-able) atomically."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {k: np.ascontiguousarray(v) for k, v in arrays.items()},
            tmp,
            metadata={_META_KEY: key.as_json(), _META_INFO: json.dumps(info, default=_jsonable)},
        )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as shareable as its inputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_arrays(path: Path, key: CacheKey) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The cached arrays and info, or None when absent, unreadable or written for another key."""
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
    return arrays, info


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
