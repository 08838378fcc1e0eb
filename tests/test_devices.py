"""Device choice: only working devices are listed, auto picks the best, bad requests say why."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from napari_dkan import devices
from napari_dkan.devices import DeviceError, autocast, available_devices, resolve_device


def test_available_devices_lists_auto_and_cpu_first_and_only_working_ones():
    names = available_devices()
    assert names[:2] == ["auto", "cpu"]
    assert ("cuda" in names) == torch.cuda.is_available()


def test_cpu_and_auto_resolve_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if "mps" in available_devices() else "cpu")
    assert resolve_device("auto").type == expected


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(devices, "_cuda_usable", lambda: True)
    monkeypatch.setattr(devices, "_mps_usable", lambda: True)
    assert resolve_device("auto").type == "cuda"
    monkeypatch.setattr(devices, "_cuda_usable", lambda: False)
    assert resolve_device("auto").type == "mps"
    assert available_devices() == ["auto", "cpu", "mps"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_is_a_clear_error_listing_what_exists():
    with pytest.raises(DeviceError, match=r"'cuda' is not available.*available: auto, cpu"):
        resolve_device("cuda")


def test_unknown_device_names_the_choices():
    with pytest.raises(DeviceError, match="unknown device 'tpu'.*auto, cpu"):
        resolve_device("tpu")


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_is_bf16_on_cuda_and_a_no_op_on_cpu():
    assert isinstance(autocast(torch.device("cpu")), nullcontext)
    ctx = autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
