"""Where napari-dkan keeps its caches (features, embeddings, parsed counts, downloads)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "NAPARI_DKAN_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache folder (``$NAPARI_DKAN_CACHE`` or the user's cache dir), created on demand when it can be."""
    root = os.environ.get(ENV_CACHE)
    if root:
        base = Path(root).expanduser()
    else:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("napari-dkan"))
    path = base.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # a read-only or full cache disk: reads miss, writes warn (storage.atomic_write)
    return path
