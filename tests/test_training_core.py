"""The training dock's library side, without a viewer: input checks, training, cancel, registry.

Real data throughout: HER2ST sections C2 and C3 (with their H&E images), the Visium folder
(which has no full-resolution image), an OpenSlide test slide as a wrong image.
"""

from __future__ import annotations

import gzip
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_dkan._widgets.jobs import run_to_end
from napari_dkan._widgets.recent_models import RecentModels
from napari_dkan._widgets.training_plan import (
    BaseChoice,
    PanelChoice,
    TrainingRequest,
    check_request,
    default_settings,
    describe_plan,
)
from napari_dkan._widgets.training_run import TrainingOutcome, release_device_memory, training_steps
from plugin_support import PANEL_SIZE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_run(tiny_run_dir):
    return tiny_run_dir


def _request(tmp_path, her2st, base_run=None, **kw) -> TrainingRequest:
    """Fine-tune the tiny base on C2, validated on C3: each test changes one thing."""
    fields = dict(dataset=str(her2st), section="C2", validation="C3", output=str(tmp_path / "out"),
                  base=BaseChoice.RUN, base_run=str(base_run), panel=PanelChoice.BASE,
                  epochs=2, batch_size=32, device="cpu")
    fields.update(kw)
    return TrainingRequest(**fields)


def _problems(request: TrainingRequest) -> str:
    result = check_request(request)
    assert not result.ok and result.plan is None
    return "\n".join(result.problems)


def _small_root(her2st: Path, tmp: Path, keep: dict[str, int]) -> Path:
    """A HER2ST-style root with the first ``keep[name]`` spots of each named section."""
    root = tmp / "small"
    (root / "ST-cnts").mkdir(parents=True)
    (root / "ST-spotfiles").mkdir()
    for name, n in keep.items():
        with gzip.open(her2st / "ST-cnts" / f"{name}.tsv.gz", "rt") as fh:
            lines = fh.read().splitlines()
        with gzip.open(root / "ST-cnts" / f"{name}.tsv.gz", "wt") as fh:
            fh.write("\n".join(lines[: n + 1]) + "\n")
        ids = {line.split("\t", 1)[0] for line in lines[1 : n + 1]}
        spots = (her2st / "ST-spotfiles" / f"{name}_selection.tsv").read_text().splitlines()
        kept = [s for s in spots[1:] if "x".join(s.split("\t")[:2]) in ids]
        (root / "ST-spotfiles" / f"{name}_selection.tsv").write_text("\n".join([spots[0], *kept]) + "\n")
        image = next((her2st / "ST-imgs" / name[0] / name).glob("*.jpg"))
        (root / "ST-imgs" / name[0] / name).mkdir(parents=True)
        (root / "ST-imgs" / name[0] / name / image.name).symlink_to(image)
    return root


# -- input checks ---------------------------------------------------------------------------------
def test_a_good_request_becomes_a_plan_with_the_base_models_network_and_fine_tune_defaults(
        her2st, base_run, tmp_path):
    from napari_dkan.engine.runs import TrainedModel

    result = check_request(_request(tmp_path, her2st, base_run, epochs=None, lr=None, batch_size=None))
    assert result.ok, result.problems
    plan, base = result.plan, TrainedModel.load(base_run)
    assert plan.panel == base.panel and plan.validation.name == "C3"
    assert plan.spec.network() == base.config["network"] and plan.spec.features == base.features
    trained = base.config["training"]  # 12 epochs at lr 1e-2, batch 32
    s = plan.spec.settings
    assert (s.epochs, s.batch_size, s.device) == (12, 32, "cpu")
    assert s.lr == pytest.approx(trained["lr"] * 0.2)
    assert "fine-tune tiny-dkan on C2 (187 spots), validated on C3" in describe_plan(plan)


def test_image_missing(visium_dir, tmp_path):
    text = _problems(TrainingRequest(str(visium_dir), str(tmp_path / "out"), panel_size=20))
    assert "has no full-resolution image" in text and "Space Ranger does not copy" in text


def test_image_not_matching_the_spot_coordinates(visium_dir, wsi_dir, tmp_path):
    wrong = wsi_dir / "CMU-1-Small-Region.svs"  # a real slide, but not this sample's
    text = _problems(TrainingRequest(str(visium_dir), str(tmp_path / "out"), image=str(wrong), panel_size=20))
    assert "lie outside the image" in text and "does not match the spot coordinates" in text


def test_too_few_spots_for_a_validation_block_or_section(her2st, tmp_path):
    root = _small_root(her2st, tmp_path, {"C2": 15, "C3": 8})
    block = _problems(TrainingRequest(str(root), str(tmp_path / "out"), section="C2", panel_size=10))
    assert "C2 has only 15 spots: too few to hold out a validation block (need at least 20)" in block
    section = _problems(TrainingRequest(str(root), str(tmp_path / "out"), section="C2", validation="C3",
                                        panel_size=10))
    assert "validation section C3 has only 8 spots" in section and "validation block" not in section


def test_panel_genes_absent_from_the_sample(visium_dir, base_run, tmp_path):
    # the HER2ST base model's genes are not all among the 100 genes of this Visium sample
    text = _problems(TrainingRequest(str(visium_dir), str(tmp_path / "out"), base=BaseChoice.RUN,
                                     base_run=str(base_run), panel=PanelChoice.BASE))
    assert "absent from 1 of 1 section(s)" in text and "the sample must measure all of them" in text


def test_base_model_whose_panel_does_not_match(her2st, base_run, tmp_path):
    text = _problems(_request(tmp_path, her2st, base_run, panel=PanelChoice.TOP, panel_size=PANEL_SIZE))
    assert f"predicts {PANEL_SIZE} genes but the chosen panel has {PANEL_SIZE}" in text
    assert "not in the base model's panel" in text and "“the base model's panel”" in text


def test_base_output_and_settings_problems_are_all_listed(her2st, base_run, tmp_path, monkeypatch):
    from napari_dkan import bundled

    monkeypatch.setattr(bundled, "default_model_path", lambda: None)
    text = _problems(_request(tmp_path, her2st, base=BaseChoice.BUNDLED, epochs=0, output=""))
    assert "ships no bundled model" in text and "choose an output folder" in text
    assert "epochs must be at least 1" in text
    text = _problems(_request(tmp_path, her2st, base_run, output=str(base_run)))
    assert "the base model's own run" in text
    text = _problems(_request(tmp_path, her2st, base_run, validation="C2"))
    assert "must differ from the training section" in text


def test_default_settings_from_a_preset_or_a_base_run():
    preset = {"epochs": 100, "lr": 5e-4, "batch_size": 64}
    assert default_settings(preset) == (d := default_settings(preset, None))
    assert (d.epochs, d.lr, d.batch_size) == (100, 5e-4, 64)
    tuned = default_settings(preset, {"epochs": 200, "lr": 1e-3, "batch_size": 128})
    assert (tuned.epochs, tuned.batch_size) == (30, 128) and tuned.lr == pytest.approx(2e-4)


# -- training -------------------------------------------------------------------------------------
def test_fine_tuning_reuses_the_base_gene_text_and_reports_every_epoch(her2st, base_run, tmp_path,
                                                                        monkeypatch):
    from napari_dkan.engine import runs
    from napari_dkan.engine.runs import TrainedModel

    base = TrainedModel.load(base_run)

    def no_reembedding(*args, **kwargs):
        raise AssertionError("fine-tuning re-embedded the gene texts instead of reusing the base's")

    monkeypatch.setattr(runs, "gene_text_for", no_reembedding)
    items = []
    outcome = run_to_end(training_steps(_request(tmp_path, her2st, base_run), threading.Event()), items.append)
    assert isinstance(outcome, TrainingOutcome) and outcome.status == "finished"
    epochs = [i.epoch for i in items if getattr(i, "epoch", None) is not None]
    assert [e.epoch for e in epochs] == [1, 2]
    assert [e.train_loss for e in epochs] == pytest.approx([h["train_loss"] for h in outcome.history])
    assert items[-1].done == items[-1].total  # the bar reaches its end
    assert outcome.base_val_pcc is not None and outcome.gpu_bytes_after is None  # no CUDA here
    tuned = TrainedModel.load(outcome.run_dir)
    assert tuned.config["fine_tuned_from"] == str(base.run_dir)
    assert tuned.config["text"]["sha256"] == base.config["text"]["sha256"]  # the same vectors
    assert np.array_equal(tuned._text.numpy(), base._text.numpy())  # as the base stored them
    assert tuned.config["training"]["val_sections"] == ["C3"]


def test_from_scratch_with_a_spatial_validation_block(her2st, tmp_path):
    from napari_dkan.engine.runs import TrainedModel

    request = _request(tmp_path, her2st, base=BaseChoice.SCRATCH, base_run=None, validation=None,
                       panel=PanelChoice.TOP, panel_size=PANEL_SIZE, preset="tiny", encoder="tiny", epochs=1)
    outcome = run_to_end(training_steps(request, threading.Event()))
    model = TrainedModel.load(outcome.run_dir)
    assert model.config["training"]["train_sections"] == ["C2[fit]"]
    assert model.config["training"]["val_sections"] == ["C2[val]"]
    assert len(model.panel) == PANEL_SIZE and "fine_tuned_from" not in model.config


class _AfterFirstCheckpoint(threading.Event):
    """Set once the first best checkpoint is on disk: a deterministic 'user pressed Cancel'."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir

    def is_set(self) -> bool:
        return super().is_set() or any(self.run_dir.glob("best-e*.safetensors"))


def test_cancel_keeps_the_best_checkpoint_so_far(her2st, base_run, tmp_path):
    from napari_dkan.engine.runs import TrainedModel

    request = _request(tmp_path, her2st, base_run, epochs=50)
    outcome = run_to_end(training_steps(request, _AfterFirstCheckpoint(tmp_path / "out")))
    assert outcome.status == "cancelled" and outcome.epochs_run == 1 and outcome.best_epoch == 1
    assert "best checkpoint so far is kept" in outcome.summary
    model = TrainedModel.load(outcome.run_dir)  # usable as it is
    assert model.config["status"] == "cancelled" and model.panel == TrainedModel.load(base_run).panel


def test_cancel_before_the_first_epoch_saves_nothing(her2st, base_run, tmp_path):
    from napari_dkan.progress import Cancelled

    cancel = threading.Event()
    cancel.set()
    steps = training_steps(_request(tmp_path, her2st, base_run), cancel)
    with pytest.raises(Cancelled):
        run_to_end(steps)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_release_device_memory_without_cuda_reports_nothing():
    assert release_device_memory() is None


def test_recent_models_announce_each_run_once_per_training(tmp_path):
    registry, seen = RecentModels(), []
    registry.added.connect(seen.append)
    registry.add(tmp_path / "a", "trained: a")
    registry.add(tmp_path / "b")
    registry.add(tmp_path / "a", "fine-tuned: a")
    assert [e.path for e in registry.entries] == [str((tmp_path / p).resolve()) for p in ("b", "a")]
    assert [e.label for e in seen] == ["trained: a", "trained: b", "fine-tuned: a"]


def test_frozen_heap_keeps_the_collector_off_existing_objects_and_gives_them_back():
    import gc

    from napari_dkan._widgets.jobs import frozen_heap

    assert gc.get_freeze_count() == 0
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # this process's objects, skipped by full collections
        # nested (a prediction beside a training): still frozen, not re-frozen — the count never
        # grows; it may shrink by a few as frozen objects are freed (another test's thread ending)
        with frozen_heap():
            junk = [[i] for i in range(5000)]  # tracked objects: a re-freeze would take these in
            assert frozen - 100 <= gc.get_freeze_count() <= frozen
            del junk
        assert frozen - 100 <= gc.get_freeze_count() <= frozen
    assert gc.get_freeze_count() == 0  # handed back: nothing leaks
    try:
        with frozen_heap():
            raise RuntimeError("a failed job")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0


def test_fine_tuning_a_bundled_ensemble_fine_tunes_its_dkan_member(her2st, her2st_dataset, base_run, tmp_path,
                                                                    monkeypatch):
    """The bundled model is an ensemble (DKAN + TRIPLEX): the dock fine-tunes its DKAN member,
    and the new run's ancestry names that member, inside the ensemble."""
    from napari_dkan import bundled
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.ensemble import build_ensemble
    from napari_dkan.engine.runs import RunSpec, TrainedModel, prepare_sections, train_model
    from napari_dkan.engine.trainer import TrainSettings

    dkan = TrainedModel.load(base_run)
    spec = RunSpec(model="ridge", preset="tiny", features=FeatureSpec(encoder="tiny"), settings=TrainSettings(device="cpu"))
    data = prepare_sections([her2st_dataset["C3"]], spec, dkan.panel)
    ridge = train_model(data, ["C3"], ["C3"], spec, dkan.panel, tmp_path / "ridge")
    ensemble = build_ensemble([ridge.run_dir, base_run], tmp_path / "bundled")
    monkeypatch.setattr(bundled, "default_model_path", lambda: ensemble.run_dir)

    request = _request(tmp_path, her2st, base=BaseChoice.BUNDLED, base_run=None, epochs=1)
    result = check_request(request)
    assert result.ok, result.problems
    assert result.plan.base.kind == "dkan" and result.plan.base.run_dir.parent.parent == ensemble.run_dir
    outcome = run_to_end(training_steps(request, threading.Event()), lambda _: None)
    assert outcome.status == "finished"
    tuned = TrainedModel.load(outcome.run_dir)
    assert tuned.config["fine_tuned_from"] == str(result.plan.base.run_dir)
    assert tuned.seen_sections["C3"] == "training"  # the member's own training section, by ancestry
