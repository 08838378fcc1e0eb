"""Text embeddings kept on disk, keyed by (texts, encoder identity, pooling, max length).

One safetensors file per key under ``cache_dir("text-embeddings")`` (never pickle).  The key is
a sha256 over the texts in order, the encoder's identity (name, or folder + config + weight
file stamps), the pooling and the token limit; the file's metadata repeats them and is checked
on reuse, so a stale or foreign file is recomputed rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_dkan.paths import cache_dir
from napari_dkan.storage import atomic_write

_TENSOR = "embeddings"


def cache_key(texts: Sequence[str], identity: str, pooling: str, max_length: int) -> str:
    """sha256 over everything that changes the numbers (texts in order, model, pooling)."""
    blob = json.dumps(["text-embeddings/1", list(texts), identity, pooling, max_length],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _path(key: str) -> Path:
    return cache_dir("text-embeddings") / f"{key[:40]}.safetensors"


def load(key: str, n_texts: int) -> np.ndarray | None:
    """The cached matrix for ``key``, or None when absent or not what the key promises."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = _path(key)
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
        matrix = load_file(str(path))[_TENSOR]
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    if meta.get("key") != key or matrix.ndim != 2 or matrix.shape[0] != n_texts:
        return None
    return matrix.astype(np.float32, copy=False)


def store(key: str, matrix: np.ndarray, meta: dict[str, str]) -> Path:
    from safetensors.numpy import save_file

    path = _path(key)
    atomic_write(path, lambda tmp: save_file(  # concurrent runs never read half a file
        {_TENSOR: np.ascontiguousarray(matrix, dtype=np.float32)}, str(tmp),
        metadata={"key": key, **{k: str(v) for k, v in meta.items()}, "written_by": "napari-dkan"}))
    return path
