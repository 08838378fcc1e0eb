"""Checkpoints without pickle: tensors in safetensors, everything else in JSON; atomic writes.

A run directory holds::

    config.json          what the model is: kind, network config, gene panel, encoders,
                         normalisation, training settings, versions, protocol, metrics
    model.safetensors    the best weights (by validation PCC)
    gene_text.safetensors  the gene-text embeddings the model was trained with
    last-eNNNN.safetensors  weights + optimizer tensors of the last finished epoch (to resume)
    best-eNNNN.safetensors  the best weights while training (published as model.safetensors)
    state.json           epoch, optimizer scalars, scheduler, history, best score, and the names
                         and SHA-256 of the two files above (written after them)

Every safetensors file's SHA-256 is recorded in the JSON that refers to it, so a truncated or
altered file is detected on load rather than silently used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.errors import DataError
from napari_dkan.storage import atomic_write


class CheckpointError(DataError):
    """A checkpoint is missing, corrupt, or does not fit what it is loaded into."""


#: a run folder's configuration file (shared by runs.py and the torch-free ensemble_folder.py)
CONFIG_FILE = "config.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is not valid JSON (corrupt checkpoint?): {exc}") from exc


def encode_tensors(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """Tensors (torch or numpy) as the bytes of a safetensors file."""
    import torch
    from safetensors.torch import save

    clean = {}
    for k, v in tensors.items():
        t = torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v
        clean[k] = t.detach().to("cpu").contiguous()
    return save(clean, metadata=metadata)


def save_tensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> str:
    """Write tensors (torch or numpy) atomically; returns the file's SHA-256."""
    data = encode_tensors(tensors, metadata)
    atomic_write(path, data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, Any]:
    """Read a safetensors file, checking its SHA-256 when one is expected."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise CheckpointError(
            f"{path.name} does not match the checksum recorded when it was written: the file is "
            "corrupt or was replaced. Retrain, or restore it from a backup."
        )
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"{path.name} is not a readable safetensors file (corrupt?): {exc}") from exc


# -- optimizer / scheduler state without pickle ---------------------------------------------


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An optimizer ``state_dict`` as (tensors, JSON-able rest)."""
    import torch

    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("opt."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for name, value in rest.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}
