"""What every command shares: JSON output, error reporting and progress bars."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from napari_dkan.io.errors import DataError


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object (last line)"
    )


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN/inf become null, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str | None = None) -> None:
    """Print ``text`` for people, or with ``--json`` the payload as the last line."""
    if getattr(args, "json", False):
        print(json.dumps(_clean(payload)), flush=True)
    elif text is not None:
        print(text, flush=True)


def run_command(args: argparse.Namespace) -> int:
    """Run the chosen command; user-facing errors become one clear line and exit status 2."""
    try:
        return int(args.func(args) or 0)
    except (DataError, FileNotFoundError) as exc:
        print(f"napari-dkan {args.command}: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"napari-dkan {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a write that did not go through the storage helper
        from napari_dkan.storage import is_storage_fault, storage_error

        if not is_storage_fault(exc):
            raise
        folder = Path(exc.filename).parent if exc.filename else Path.cwd()
        print(f"napari-dkan {args.command}: error: {storage_error(exc, folder)}", file=sys.stderr)
        return 2


@contextmanager
def progress_bar(desc: str, unit: str = "it", enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a bar on stderr."""
    if not enabled:
        yield lambda done, total: None
        return
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
