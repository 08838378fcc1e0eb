"""Models trained in this napari session, offered wherever a model is chosen (no Qt).

The training dock adds each run it ends (finished or cancelled with a checkpoint); every
prediction dock lists what is already here when it opens and listens to :attr:`added` for the
rest, so a new model is selectable at once without either dock knowing the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal


@dataclass(frozen=True)
class RecentModel:
    path: str
    label: str


class RecentModels:
    """An ordered set of run directories, by resolved path."""

    added = Signal(object)  # RecentModel

    def __init__(self) -> None:
        self._entries: dict[str, RecentModel] = {}

    def add(self, path: str | Path, label: str | None = None) -> RecentModel:
        """Record a run; announced again when it is added again (retrained in the same folder)."""
        key = str(Path(path).expanduser().resolve())
        entry = RecentModel(key, label or f"trained: {Path(key).name}")
        self._entries.pop(key, None)
        self._entries[key] = entry
        self.added.emit(entry)
        return entry

    @property
    def entries(self) -> tuple[RecentModel, ...]:
        return tuple(self._entries.values())


#: the one registry of this process (one napari session)
RECENT_MODELS = RecentModels()
