"""Which compute device to use: ``auto``, ``cpu``, ``cuda`` or ``mps``, listing only what works.

Shared by feature extraction, training and the napari docks, so a device choice means the same
everywhere.  ``auto`` prefers CUDA, then Apple's MPS, then the CPU.  Mixed precision is bf16 on
CUDA (no loss scaling needed, unlike fp16) and off elsewhere: CPU bf16 is slow on most CPUs and
MPS autocast support varies between torch releases.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(DataError):
    """A requested compute device does not exist or does not work on this machine."""


def _cuda_usable() -> bool:
    import torch

    try:
        return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # noqa: BLE001 - a broken driver must mean "not available", not a crash
        return False


def _mps_usable() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available() and backend.is_built())
    except Exception:  # noqa: BLE001
        return False


def available_devices() -> list[str]:
    """Device names that work here, ``auto`` and ``cpu`` first (for menus and ``--device``)."""
    names = ["auto", "cpu"]
    if _cuda_usable():
        names.append("cuda")
    if _mps_usable():
        names.append("mps")
    return names


def resolve_device(name: str = "auto") -> torch.device:
    """The :class:`torch.device` for ``name``; ``cuda:1`` style indices are accepted.

    Raises :class:`DeviceError` naming the devices that are available when ``name`` is unknown
    or not usable here.
    """
    import torch

    raw = (name or "auto").strip().lower()
    kind, _, index = raw.partition(":")
    if kind == "auto":
        if _cuda_usable():
            return torch.device("cuda")
        if _mps_usable():
            return torch.device("mps")
        return torch.device("cpu")
    avail = available_devices()
    if kind not in DEVICE_CHOICES:
        raise DeviceError(
            f"unknown device {name!r}; choose one of: {', '.join(avail)}"
        )
    if kind not in avail:
        raise DeviceError(
            f"device {name!r} is not available on this machine; available: {', '.join(avail)}"
            + (" (is a CUDA build of torch installed, and a GPU visible?)" if kind == "cuda" else "")
        )
    if index:
        if kind != "cuda" or not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} does not exist; this machine has "
                f"{torch.cuda.device_count() if kind == 'cuda' else 1} {kind} device(s)"
            )
        return torch.device(kind, int(index))
    return torch.device(kind)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA, a no-op context elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def describe(device: torch.device) -> str:
    """A short human name, e.g. ``cuda (NVIDIA H100 80GB HBM3)`` or ``cpu (2 threads)``."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
