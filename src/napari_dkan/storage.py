"""Files on disk: one atomic write, one file identity, one clear error for a full or read-only disk.

Every file napari-dkan writes (checkpoints, run configs, caches, predictions, cohort outputs)
goes through :func:`atomic_write`: the content is written to a temporary file beside the target,
flushed to disk (``fsync``), and renamed over the target, so a reader — or a run resumed after a
crash — sees the old file or the new one, never half of one.  The temporary file is removed on
any error, including Ctrl-C.  A full disk, a read-only file system or a folder without write
permission becomes one :class:`StorageError` naming the folder and what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from napari_dkan.io.errors import DataError

#: errno values that mean "this folder cannot take the file", whatever the file is
_FAULTS = {
    errno.ENOSPC: "there is no space left on the disk holding {folder}: free some space or choose "
                  "another folder",
    errno.EDQUOT: "the disk quota for {folder} is exhausted: free some space or choose another folder",
    errno.EROFS: "{folder} is on a read-only file system: choose a writable folder",
    errno.EACCES: "no permission to write in {folder}: choose a folder you can write to",
    errno.EPERM: "no permission to write in {folder}: choose a folder you can write to",
}


class StorageError(DataError):
    """A file could not be written: full disk, read-only file system or no permission."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def is_storage_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk, read-only file system or missing permission."""
    return isinstance(exc, OSError) and exc.errno in _FAULTS


def storage_error(exc: OSError, folder: Path) -> StorageError:
    """One clear line for an ``OSError`` met writing in ``folder``."""
    template = _FAULTS.get(exc.errno or 0)
    if template is not None:
        return StorageError(template.format(folder=folder), exc.errno)
    return StorageError(f"could not write in {folder}: {exc.strerror or exc}", exc.errno)


def atomic_write(path: Path, content: bytes | Callable[[Path], None], size_hint: int | None = None) -> None:
    """Write ``content`` (bytes, or a function writing to the path it is given) to ``path``.

    The folder is created when missing.  Raises :class:`StorageError` when the disk is full,
    read-only or not writable; leaves no temporary file behind in any case.  ``size_hint``
    (bytes; known for ``bytes`` content) is checked against the free space first: some writers
    (HDF5) do not fail cleanly when the disk fills under them.
    """
    path = Path(path)
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    if isinstance(content, (bytes, bytearray, memoryview)):
        size_hint = len(content)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if size_hint is not None and shutil.disk_usage(folder).free < size_hint:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
        if isinstance(content, (bytes, bytearray, memoryview)):
            with open(tmp, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            content(tmp)
            with open(tmp, "rb+") as fh:  # on disk before the rename makes it visible
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error(exc, folder) from exc
    except RuntimeError as exc:  # h5py reports a failed write as RuntimeError, errno in the text
        if "errno = 28" in str(exc):
            raise storage_error(OSError(errno.ENOSPC, "No space left on device"), folder) from exc
        raise
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the folder itself went away or turned read-only: nothing more to clean


def anndata_size_hint(adata: object) -> int:
    """A generous estimate of an AnnData's ``.h5ad`` size: its arrays plus a fixed overhead."""
    total = 256 << 10  # HDF5 metadata, uns, var: tens of kB in practice
    for array in (getattr(adata, "X", None), *getattr(adata, "layers", {}).values(),
                  *getattr(adata, "obsm", {}).values()):
        total += int(getattr(array, "nbytes", 0) or getattr(getattr(array, "data", None), "nbytes", 0))
    obs = getattr(adata, "obs", None)
    if obs is not None:
        total += int(obs.memory_usage(deep=True).sum())
    return total


def check_writable(folder: Path) -> None:
    """Fail now, before any work, when files cannot be created in ``folder`` (created if missing)."""
    folder = Path(folder)
    probe = folder / f".napari-dkan-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"\0")
    except OSError as exc:
        raise storage_error(exc, folder) from exc
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def file_identity(path: Path) -> str:
    """A file's resolved path, size and modification time: cheap, and changes when it is rewritten."""
    path = Path(path)
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
