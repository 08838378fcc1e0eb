"""What an ensemble run folder's ``config.json`` says, read without torch (the GUI thread may
ask it); the ensemble itself is :mod:`napari_dkan.engine.ensemble`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_dkan.engine import checkpoint as ckpt

KIND = "ensemble"
MEMBERS_DIR = "members"
CONFIG_FILE = ckpt.CONFIG_FILE


def check_ensemble_config(config: dict[str, Any], path: Path) -> None:
    """Raise :class:`~napari_dkan.engine.checkpoint.CheckpointError` naming the first wrong field."""
    def fail(field: str, why: str) -> ckpt.CheckpointError:
        return ckpt.CheckpointError(f"{path}: field {field!r} {why}; the ensemble's config.json was edited "
                                    "or damaged: restore it, or build the ensemble again")

    members = config.get("members")
    if not isinstance(members, list) or len(members) < 2:
        raise fail("members", "must list at least two member runs")
    for i, m in enumerate(members):
        if not isinstance(m, dict) or not isinstance(m.get("dir"), str):
            raise fail(f"members[{i}].dir", "must name the member's folder")
        rel = Path(m["dir"])
        if rel.is_absolute() or ".." in rel.parts:
            raise fail(f"members[{i}].dir", "must be a folder inside the ensemble")
        weight = m.get("weight")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise fail(f"members[{i}].weight", "must be a positive number")
    panel = config.get("panel")
    if not isinstance(panel, list) or not panel or not all(isinstance(g, str) for g in panel):
        raise fail("panel", "must be a non-empty list of gene names")
    for key in ("features", "target", "training"):
        if not isinstance(config.get(key), dict):
            raise fail(key, "must be an object")


def fine_tune_member(run_dir: str | Path) -> Path | None:
    """For an ensemble folder, the member a fine-tuning starts from: its first DKAN member
    (the network with gene knowledge), else its first member; None for any other folder.
    Reads ``config.json`` only (no torch)."""
    path = Path(run_dir).expanduser()
    path = path if path.is_dir() else path.parent
    try:
        config = ckpt.read_json(path / CONFIG_FILE)
    except ckpt.CheckpointError:
        return None
    if config.get("model") != KIND or not isinstance(config.get("members"), list) or not config["members"]:
        return None
    members = [m for m in config["members"] if isinstance(m, dict) and isinstance(m.get("dir"), str)]
    if not members:
        return None
    chosen = next((m for m in members if m.get("model") in ("dkan", "dkan-improved")), members[0])
    return path / chosen["dir"]
