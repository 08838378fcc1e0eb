"""What the online routes share: JSON over HTTP with failures named, and an on-disk store.

Only the standard library is used (``urllib``), so the online routes add no dependency.  A
failure is never raised to the user: the caller turns :class:`FetchError` into a per-gene
status and falls back to the offline text.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

from napari_dkan.paths import cache_dir
from napari_dkan.storage import StorageError, atomic_write

log = logging.getLogger(__name__)

FailureKind = Literal["timeout", "http_error", "network_error", "malformed"]
USER_AGENT = "napari-dkan (https://github.com/napari-dkan/napari-dkan)"


class FetchError(Exception):
    """One failed request: ``kind`` says which way it failed, the message says the details."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind


def request_json(url: str, payload: Any = None, headers: dict[str, str] | None = None,
                 timeout: float = 20.0) -> Any:
    """GET ``url`` (or POST ``payload`` as JSON) and return the decoded JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    req.add_header("User-Agent", USER_AGENT)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        # only http(s) URLs get here: callers check them with check_url
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise FetchError("http_error", f"HTTP {exc.code} {exc.reason} from {_host(url)}") from exc
    except TimeoutError as exc:
        raise FetchError("timeout", f"no answer from {_host(url)} within {timeout:g} s") from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):  # a connect timeout arrives wrapped
            raise FetchError("timeout", f"no answer from {_host(url)} within {timeout:g} s") \
                from exc
        raise FetchError("network_error", f"cannot reach {_host(url)}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # reset, closed early, bad status line
        raise FetchError("network_error", f"cannot reach {_host(url)}: {exc}") from exc
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError("malformed", f"{_host(url)} answered with something other than JSON") \
            from exc


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or url


def check_url(url: str, what: str) -> str:
    """Refuse anything but http(s) early, with a message naming the setting."""
    from urllib.parse import urlsplit

    from napari_dkan.io.errors import DataError

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DataError(f"{what} must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


def digest(*parts: Any) -> str:
    """A stable sha256 over JSON-encodable parts (the identity of a stored answer)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultStore:
    """Answers kept on disk, one small JSON file each, so nothing is ever fetched twice."""

    def __init__(self, *parts: str) -> None:
        self.root: Path = cache_dir("gene-knowledge", *parts)

    def _path(self, key: str) -> Path:
        return self.root / f"{digest(key)[:32]}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # absent, or a half-written file from an interrupted run: fetch again
        return entry.get("value") if isinstance(entry, dict) and entry.get("key") == key else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        data = json.dumps({"key": key, "stored": time.time(), "value": value}, ensure_ascii=False)
        try:
            atomic_write(self._path(key), data.encode("utf-8"))  # a reader never sees half a file
        except StorageError as exc:
            log.warning("a fetched answer was not stored (%s); it will be fetched again next time", exc)
