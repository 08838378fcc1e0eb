"""Loading weight files safely: safetensors, or PyTorch files restricted to tensors."""

from __future__ import annotations

from pathlib import Path

from napari_dkan.io.errors import DataError


def load_state_dict_file(path: str | Path) -> dict:
    """A state dict from ``.safetensors`` or a PyTorch file (``weights_only``: no pickled code).

    Checkpoints that nest the weights under ``state_dict`` / ``model`` are unwrapped, and a
    ``module.`` prefix left by DataParallel is dropped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"weight file not found: {p}")
    import torch

    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
            raise DataError(f"cannot read weights from {p.name}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise DataError(f"{p.name} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
