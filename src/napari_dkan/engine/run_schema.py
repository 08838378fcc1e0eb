"""The schema of a run's ``config.json``, checked on load so a wrong field is named, not met
later as a torch error deep inside model building."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

from napari_dkan.engine.checkpoint import CheckpointError


def check_run_config(config: dict[str, Any], path: Path) -> None:
    """Raise :class:`CheckpointError` naming the first field of ``config`` that is wrong."""
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.families import ALL_FAMILIES, Dims
    from napari_dkan.engine.trainer import TrainSettings
    from napari_dkan.model import DKANConfig, NH2STConfig

    def fail(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: field {field!r} {why}; the run's config.json was edited or "
                               "damaged: restore it, or retrain")

    model = config.get("model")
    if model not in ALL_FAMILIES:
        raise fail("model", f"is {model!r}, not one of {', '.join(ALL_FAMILIES)}")
    panel = config.get("panel")
    if not isinstance(panel, list) or not panel or not all(isinstance(g, str) for g in panel):
        raise fail("panel", "must be a non-empty list of gene names")
    _check_record(config.get("dims"), Dims, "dims", fail)
    if config["dims"]["n_genes"] != len(panel):
        raise fail("dims.n_genes", f"is {config['dims']['n_genes']}, but the panel has {len(panel)} genes")
    _check_record(config.get("features"), FeatureSpec, "features", fail)
    target = config.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("smoothing"), bool):
        raise fail("target.smoothing", "must be true or false")
    if model in ("dkan", "dkan-improved", "triplex"):
        _check_record(config.get("network"), DKANConfig, "network", fail)
    elif model == "nh2st":
        _check_record(config.get("network"), NH2STConfig, "network", fail)
    training = config.get("training")
    if not isinstance(training, dict):
        raise fail("training", "must be an object")
    known = {f.name: f for f in dataclasses.fields(TrainSettings)}
    hints = typing.get_type_hints(TrainSettings)
    for key, value in training.items():
        if key in known and not _fits(value, hints[key]):
            raise fail(f"training.{key}", f"is {value!r}, not {_name(hints[key])}")
    text = config.get("text")
    if text is not None and not (isinstance(text, dict) and isinstance(text.get("sha256"), str)):
        raise fail("text", "must be null or an object with the gene-text file's sha256")
    files = config.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, (str, type(None))) for v in files.values()):
        raise fail("files", "must map file names to their sha256")


def _check_record(value: Any, cls: type, field: str, fail: Any) -> None:
    """``value`` is a JSON object that builds dataclass ``cls``: every key known, every type right."""
    if not isinstance(value, dict):
        raise fail(field, f"must be an object, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, item in value.items():
        if key not in fields:
            raise fail(f"{field}.{key}", "is not a known field")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _check_record(item, tp, f"{field}.{key}", fail)
        elif not _fits(item, tp):
            raise fail(f"{field}.{key}", f"is {item!r}, not {_name(tp)}")
    for key, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and key not in value:
            raise fail(f"{field}.{key}", "is missing")


def _fits(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, t) for t in typing.get_args(tp))
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin is not None:
        return isinstance(value, origin)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {e.value for e in tp}
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_name(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(e.value) for e in tp)
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))
