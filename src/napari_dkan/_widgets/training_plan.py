"""What the training dock asks for, and every check made before training starts (no Qt).

A :class:`TrainingRequest` holds what the user filled in.  :func:`check_request` opens the
dataset and the base model, resolves the gene panel and the engine's
:class:`~napari_dkan.engine.runs.RunSpec`, and returns a :class:`TrainingPlan` — or the list
of problems, each a sentence saying what is wrong and what to do.  Every problem is collected,
not only the first, so one round of fixes is enough.  The checks read count matrices, image
headers and the base checkpoint: call :func:`check_request` off the GUI thread.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_dkan.features.registry import DEFAULT_ENCODER
from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    from napari_dkan.engine.runs import RunSpec, TrainedModel
    from napari_dkan.io.dataset import Dataset, Section

#: the model family trained from scratch (the dock is about DKAN; the CLI trains the others)
SCRATCH_MODEL = "dkan"
#: fine-tuning defaults: a pretrained network wants smaller and fewer steps than training from
#: scratch, and one section overfits quickly
FINE_TUNE_MAX_EPOCHS = 30
FINE_TUNE_LR_FACTOR = 0.2


class BaseChoice(str, enum.Enum):
    BUNDLED = "bundled model"
    RUN = "a trained run"
    SCRATCH = "from scratch"

    def __str__(self) -> str:
        return self.value


class PanelChoice(str, enum.Enum):
    BASE = "the base model's panel"
    TOP = "top genes of the sample"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TrainingRequest:
    """The dock's inputs.  ``None`` settings take the defaults of :func:`default_settings`."""

    dataset: str
    output: str
    #: the training section (None: the dataset's only section)
    section: str | None = None
    #: full-resolution image of a Visium folder or an .h5ad
    image: str | None = None
    mpp: float | None = None
    #: a section selecting the checkpoint; None holds out a spatial block of the training section
    validation: str | None = None
    base: BaseChoice = BaseChoice.SCRATCH
    base_run: str | None = None
    preset: str = "compact"
    encoder: str = DEFAULT_ENCODER  # from scratch only: a base model brings its own
    panel: PanelChoice = PanelChoice.TOP
    panel_size: int = 250
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    device: str = "auto"


@dataclass
class TrainingPlan:
    """A checked request, resolved into what the engine needs."""

    request: TrainingRequest
    dataset: Dataset
    section: Section
    validation: Section | None
    base: TrainedModel | None
    panel: list[str]
    spec: RunSpec
    run_dir: Path
    #: what training will do to the output folder (new, resumed, already finished), said up front
    output_note: str = ""


@dataclass(frozen=True)
class CheckResult:
    plan: TrainingPlan | None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.plan is not None and not self.problems


@dataclass(frozen=True)
class SettingDefaults:
    epochs: int
    lr: float
    batch_size: int


def default_settings(preset_training: Mapping[str, Any], base_training: Mapping[str, Any] | None = None
                     ) -> SettingDefaults:
    """From scratch: the preset's training defaults.  Fine-tuning: the base run's batch size,
    a fifth of its learning rate and at most :data:`FINE_TUNE_MAX_EPOCHS` epochs."""
    from_preset = SettingDefaults(int(preset_training["epochs"]), float(preset_training["lr"]),
                                  int(preset_training["batch_size"]))
    if not base_training:
        return from_preset
    return SettingDefaults(min(int(base_training.get("epochs", from_preset.epochs)), FINE_TUNE_MAX_EPOCHS),
                           float(base_training.get("lr", from_preset.lr)) * FINE_TUNE_LR_FACTOR,
                           int(base_training.get("batch_size", from_preset.batch_size)))


def run_training_settings(run_dir: str | Path | None) -> dict[str, Any] | None:
    """A run's training settings from its ``config.json`` (None when it has none): cheap, no torch."""
    if not run_dir:
        return None
    from napari_dkan.engine.ensemble_folder import fine_tune_member

    path = Path(run_dir).expanduser()
    path = fine_tune_member(path) or (path if path.is_dir() else path.parent)
    try:
        return dict(json.loads((path / "config.json").read_text())["training"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- the checks --------------------------------------------------------------------------------
def check_request(request: TrainingRequest) -> CheckResult:
    """Check everything that can be checked before features are computed; see the module doc."""
    problems: list[str] = []
    dataset = _open_dataset(request, problems)
    section = _choose_section(dataset, request.section, problems)
    validation = None
    if dataset is not None and request.validation:
        validation = _validation_section(dataset, request, section, problems)
    for sec, role in ((section, "training"), (validation, "validation")):
        if sec is not None:
            _check_section(sec, role, problems)
    if section is not None and validation is None and not request.validation:
        _check_spatial_holdout(section, problems)
    base = _load_base(request, problems)
    panel = _choose_panel(request, section, base, problems)
    if panel and section is not None:
        _check_panel_in_sample(panel, [s for s in (section, validation) if s is not None], request, problems)
    if panel and base is not None and list(panel) != list(base.panel):
        problems.append(_panel_mismatch(base, panel))
    _check_settings(request, problems)
    run_dir = _check_output(request, base, problems)
    spec = None
    if not problems:
        try:
            spec = run_spec(request, base)
        except DataError as exc:
            problems.append(str(exc))
    note = ""
    if not problems and spec is not None and run_dir is not None and dataset is not None:
        note = _check_existing_run(run_dir, spec, dataset, base, problems)
    if problems:
        return CheckResult(None, tuple(problems))
    assert dataset is not None and section is not None and panel and spec is not None and run_dir
    return CheckResult(TrainingPlan(request, dataset, section, validation, base, list(panel), spec, run_dir,
                                    note))


def _open_dataset(request: TrainingRequest, problems: list[str]) -> Dataset | None:
    from napari_dkan.io.formats import open_dataset

    if not request.dataset.strip():
        problems.append("choose the data to train on: a Visium folder (with its full-resolution "
                        "image), a HER2ST-style root or an .h5ad file")
        return None
    try:
        return open_dataset(request.dataset, image=request.image or None, mpp=request.mpp)
    except DataError as exc:
        problems.append(str(exc))
        return None


def _choose_section(dataset: Dataset | None, name: str | None, problems: list[str]) -> Section | None:
    if dataset is None:
        return None
    if not name:
        if len(dataset.sections) == 1:
            return dataset.sections[0]
        problems.append(f"choose the section to train on: {dataset.name} has {len(dataset.sections)}")
        return None
    try:
        return dataset[name]
    except DataError as exc:
        problems.append(str(exc))
        return None


def _validation_section(dataset: Dataset, request: TrainingRequest, section: Section | None,
                        problems: list[str]) -> Section | None:
    if section is not None and request.validation == section.name:
        problems.append(f"the validation section must differ from the training section "
                        f"({section.name}); to validate within it, choose the spatial block")
        return None
    try:
        return dataset[request.validation or ""]
    except DataError as exc:
        problems.append(str(exc))
        return None


def _check_section(section: Section, role: str, problems: list[str]) -> None:
    """Counts, spots, and an image that matches the spot coordinates."""
    if not section.has_counts:
        problems.append(f"{role} section {section.name} has no measured expression (no count "
                        "matrix): training needs measured counts")
        return
    try:
        with section.open_slide():  # raises when the image is missing or the spots fall outside it
            pass
    except DataError as exc:
        problems.append(str(exc) if role == "training" else f"{role}: {exc}")
        return
    if role == "validation":
        from napari_dkan.engine.splits import MIN_VAL_SPOTS

        n = len(section.spots)
        if n < MIN_VAL_SPOTS:
            problems.append(f"validation section {section.name} has only {n} spots: too few to "
                            f"select a checkpoint on (need at least {MIN_VAL_SPOTS}); choose a "
                            "larger section")


def _check_spatial_holdout(section: Section, problems: list[str]) -> None:
    """The engine's own rule for holding out a spatial block of a single section."""
    import numpy as np

    from napari_dkan.engine.splits import spatial_holdout_index

    try:
        spots = section.spots
    except DataError:
        return  # already reported by the image check
    try:
        spatial_holdout_index(section.name, np.column_stack([spots.array_row, spots.array_col]))
    except DataError as exc:
        problems.append(str(exc).replace("add a second section for validation",
                                         "choose another section for validation under Advanced"))


def _load_base(request: TrainingRequest, problems: list[str]) -> TrainedModel | None:
    if request.base is BaseChoice.SCRATCH:
        return None
    from napari_dkan.engine.runs import TrainedModel

    if request.base is BaseChoice.BUNDLED:
        from napari_dkan.bundled import default_model_path

        path = default_model_path()
        if path is None:
            problems.append("this installation ships no bundled model: choose a trained run as "
                            "the base model, or train from scratch")
            return None
    else:
        if not (request.base_run or "").strip():
            problems.append("choose the base model: a trained run's folder (or its config.json)")
            return None
        path = Path(request.base_run or "")
    from napari_dkan.engine.ensemble_folder import fine_tune_member

    # an ensemble (the bundled model is one) is fine-tuned through its DKAN member
    path = fine_tune_member(path) or path
    try:
        base = TrainedModel.load(path)
    except DataError as exc:
        problems.append(f"base model: {exc}")
        return None
    if base.kind == "ridge":
        problems.append(f"the base model {base.run_dir.name} is a ridge regression, which has no "
                        "network to fine-tune: choose a DKAN run, or train from scratch")
        return None
    return base


def _choose_panel(request: TrainingRequest, section: Section | None, base: TrainedModel | None,
                  problems: list[str]) -> list[str] | None:
    if request.panel is PanelChoice.BASE:
        if base is None:
            if request.base is BaseChoice.SCRATCH:
                problems.append("a model trained from scratch has no base panel: choose the top "
                                "genes of the sample")
            return None
        return list(base.panel)
    if section is None or not section.has_counts:
        return None
    from napari_dkan.io.expression import select_panel

    try:
        return select_panel([section], n=request.panel_size)
    except DataError as exc:
        problems.append(str(exc))
        return None


def _check_panel_in_sample(panel: Sequence[str], sections: list[Section], request: TrainingRequest,
                           problems: list[str]) -> None:
    from napari_dkan.io.expression import check_panel

    try:
        check_panel(panel, [s for s in sections if s.has_counts])
    except DataError as exc:
        hint = ""
        if request.panel is PanelChoice.BASE:
            hint = (" The base model predicts exactly these genes, so the sample must measure "
                    "all of them; otherwise train from scratch on the sample's top genes.")
        problems.append(f"{exc}{hint}")


def _panel_mismatch(base: TrainedModel, panel: Sequence[str]) -> str:
    known = set(base.panel)
    foreign = [g for g in panel if g not in known]
    detail = (f"{len(foreign)} of them not in the base model's panel (e.g. {', '.join(foreign[:3])})"
              if foreign else "the same genes in another order" if len(panel) == len(base.panel)
              else "a subset of its genes")
    return (f"the base model {base.run_dir.name} predicts {len(base.panel)} genes but the chosen "
            f"panel has {len(panel)}, {detail}. Fine-tuning keeps the base model's genes: choose "
            f"“{PanelChoice.BASE}”, or train from scratch for a new panel.")


def _check_settings(request: TrainingRequest, problems: list[str]) -> None:
    if request.epochs is not None and request.epochs < 1:
        problems.append(f"epochs must be at least 1, got {request.epochs}")
    if request.lr is not None and not request.lr > 0:
        problems.append(f"the learning rate must be positive, got {request.lr}")
    if request.batch_size is not None and request.batch_size < 1:
        problems.append(f"the batch size must be at least 1, got {request.batch_size}")
    if request.panel is PanelChoice.TOP and request.panel_size < 1:
        problems.append(f"the panel needs at least one gene, got {request.panel_size}")
    from napari_dkan.devices import resolve_device

    try:
        resolve_device(request.device)
    except DataError as exc:
        problems.append(str(exc))


def _check_output(request: TrainingRequest, base: TrainedModel | None, problems: list[str]) -> Path | None:
    if not request.output.strip():
        problems.append("choose an output folder for the new model")
        return None
    out = Path(request.output).expanduser()
    if out.exists() and not out.is_dir():
        problems.append(f"the output {out} is a file: choose a folder")
        return None
    if base is not None and out.resolve() == base.run_dir.resolve():
        problems.append(f"the output folder is the base model's own run ({out}): choose a new "
                        "folder, so the base model stays as it is")
        return None
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        problems.append(f"the output folder {out} already holds other files: choose an empty or "
                        "new folder (an earlier napari-dkan run's folder resumes that run)")
        return None
    return out


def _check_existing_run(run_dir: Path, spec: RunSpec, dataset: Dataset, base: TrainedModel | None,
                        problems: list[str]) -> str:
    """Refuse an output folder holding another run now, before features are computed; otherwise
    say whether the folder's run is resumed or already finished."""
    from napari_dkan.engine.runs import preflight_run_folder

    folder = preflight_run_folder(run_dir, spec, str(dataset.root), base)
    if folder.refused:
        problems.append(folder.message)
        return ""
    return "" if folder.action == "new" else folder.message


def run_spec(request: TrainingRequest, base: TrainedModel | None) -> RunSpec:
    """The engine's run spec: the preset's from scratch; the base model's own when fine-tuning."""
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec
    from napari_dkan.engine.trainer import TrainSettings

    if base is None:
        spec = RunSpec.for_preset(SCRATCH_MODEL, request.preset, features=FeatureSpec(encoder=request.encoder))
        defaults = default_settings(spec.settings.to_dict())
    else:
        known = {f.name for f in fields(TrainSettings)}
        settings = TrainSettings(**{k: v for k, v in base.config["training"].items() if k in known})
        # the base's network, features and targets, so its weights load and its outputs mean the same
        spec = RunSpec(model=base.kind, preset=base.config.get("preset") or request.preset,
                       features=base.features, settings=settings, smoothing=base.smoothing,
                       network_overrides=dict(base.config["network"]))
        if spec.network() != base.config["network"]:
            raise DataError(f"the network of {base.run_dir} cannot be rebuilt from its config; "
                            "it was written by another version of napari-dkan")
        defaults = default_settings(settings.to_dict(), base.config["training"])
    s = spec.settings
    s.epochs = request.epochs or defaults.epochs
    s.lr = request.lr or defaults.lr
    s.batch_size = request.batch_size or defaults.batch_size
    s.device = request.device
    return spec


def describe_plan(plan: TrainingPlan) -> str:
    """One line saying what is about to happen, shown when the checks pass."""
    s = plan.spec.settings
    start = (f"fine-tune {plan.base.run_dir.name}" if plan.base is not None
             else f"train a {plan.spec.preset} DKAN from scratch")
    val = plan.validation.name if plan.validation is not None else "a spatial block of it"
    return (f"ready: {start} on {plan.section.name} ({len(plan.section.spots)} spots), validated on "
            f"{val}; {len(plan.panel)} genes, {s.epochs} epochs, learning rate {s.lr:g}, batch "
            f"{s.batch_size} → {plan.run_dir}" + (f" ({plan.output_note})" if plan.output_note else ""))
