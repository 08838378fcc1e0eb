"""Progress reporting and cancellation shared by long computations (features, training).

Compute functions know nothing about Qt or terminals: they take a ``progress(done, total)``
callback and a ``cancel`` token with an ``is_set()`` method (a :class:`threading.Event` works,
as does napari's worker abort flag wrapped in one) and check it between units of work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: ``progress(done, total)``: called as work advances; ``total`` may change once it is known.
ProgressCallback = Callable[[int, int], None]


class CancelToken(Protocol):
    """Anything with ``is_set()``, e.g. :class:`threading.Event`."""

    def is_set(self) -> bool: ...


class Cancelled(Exception):
    """The user asked a running computation to stop; nothing partial was kept."""


def check_cancel(cancel: CancelToken | None, what: str = "the computation") -> None:
    """Raise :class:`Cancelled` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} was cancelled")


def report(progress: ProgressCallback | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)
