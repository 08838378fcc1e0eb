"""Nothing lost, nothing leaked: refused reruns, crashes between writes, corrupt caches, stale
cache keys, full and read-only disks, leaky validation splits and bad numbers (issue 15).

Faults are injected by making the operating system calls raise the errno a full disk
(ENOSPC), a read-only file system (EROFS) or a folder without permission (EACCES) raises: the
tests may run as root, for whom ``chmod`` protects nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_dkan import storage
from napari_dkan.cli import main
from napari_dkan.engine import trainer
from napari_dkan.engine.checkpoint import CheckpointError
from napari_dkan.engine.data import FeatureSpec
from napari_dkan.engine.runs import (
    RunSpec,
    TrainedModel,
    gene_text_for,
    prepare_sections,
    train_model,
)
from napari_dkan.engine.trainer import TrainSettings
from napari_dkan.io.errors import DataError

FEATURES = FeatureSpec(encoder="tiny")
TINY = ["--preset", "tiny", "--encoder", "tiny", "--device", "cpu"]


def _spec(epochs: int = 2, model: str = "dkan", **kw) -> RunSpec:
    settings = TrainSettings(epochs=epochs, patience=10, lr=1e-3, batch_size=32, contrastive_genes=8,
                             device="cpu", **kw)
    return RunSpec(model=model, preset="tiny", features=FEATURES, settings=settings)


@pytest.fixture(scope="module")
def panel(her2st_dataset):
    from napari_dkan.io.expression import select_panel

    return select_panel([her2st_dataset[n] for n in ("C2", "C3")], n=12)


@pytest.fixture(scope="module")
def data(her2st_dataset, panel, one_torch_thread):
    return prepare_sections([her2st_dataset[n] for n in ("C2", "C3")], _spec(), panel)


@pytest.fixture(scope="module")
def gene_text(panel):
    return gene_text_for(_spec(), panel)


@pytest.fixture(scope="module")
def panel_file(tmp_path_factory, panel):
    f = tmp_path_factory.mktemp("panel") / "panel.txt"
    f.write_text("\n".join(panel) + "\n")
    return f


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- 1. a refused rerun leaves the finished run as it was ---------------------------------------


def test_a_refused_rerun_touches_nothing_of_the_finished_run(data, panel, gene_text, tmp_path):
    run = tmp_path / "run"
    train_model(data, ["C2"], ["C3"], _spec(epochs=1), panel, run, gene_text=gene_text)
    before = _snapshot(run)
    seen = []
    with pytest.raises(CheckpointError, match="different training run .*training settings"):
        train_model(data, ["C2"], ["C3"], _spec(epochs=2), panel, run, gene_text=gene_text,
                    on_folder=seen.append)
    assert [f.action for f in seen] == ["refuse"]
    assert _snapshot(run) == before
    assert TrainedModel.load(run).config["status"] == "finished"
    # the same sections of another dataset are another run too
    with pytest.raises(CheckpointError, match="dataset"):
        train_model(data, ["C2"], ["C3"], _spec(epochs=1), panel, run, gene_text=gene_text,
                    dataset_info={"path": str(tmp_path / "another-dataset")})
    assert _snapshot(run) == before
    # and the same run again is recognised as finished: loaded, not rewritten
    seen.clear()
    again = train_model(data, ["C2"], ["C3"], _spec(epochs=1), panel, run, gene_text=gene_text,
                        on_folder=seen.append)
    assert [f.action for f in seen] == ["finished"] and _snapshot(run) == before
    assert again.config["result"] == TrainedModel.load(run).config["result"]


def test_a_refused_ridge_rerun_and_the_cli_say_so_before_writing(her2st, panel_file, tmp_path, capsys,
                                                                  monkeypatch):
    run = tmp_path / "ridge"
    args = ["train", str(her2st), "--model", "ridge", *TINY, "--panel", str(panel_file), "--sections",
            "C2", "--val-sections", "C3", "-o", str(run)]
    assert main(args) == 0
    assert "a new run in" in capsys.readouterr().err
    before = _snapshot(run)

    import napari_dkan.engine.runs as runs

    def no_features(*a, **k):
        raise AssertionError("features computed before the output folder was checked")

    monkeypatch.setattr(runs, "prepare_sections", no_features)
    assert main([*args[:-2], "--seed", "7", "-o", str(run)]) == 2
    err = capsys.readouterr().err
    assert "different training run" in err and "training settings" in err and "left as it is" in err
    assert _snapshot(run) == before
    assert TrainedModel.load(run).config["status"] == "finished"


# -- 2. validation sections inside the training sections are refused -----------------------------


@pytest.mark.parametrize("extra", [
    ["--sections", "C2", "C3", "--val-sections", "C3"],
    ["--sections", "C2", "--val-sections", "C2"],
    ["--sections", "C2", "C3", "--paper-protocol", "--test-sections", "C3"],
])
def test_validation_on_training_sections_is_refused(extra, her2st, panel_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(her2st), *TINY, "--panel", str(panel_file), *extra, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "in both --sections and" in err and "selected on spots it was trained on" in err
    assert not out.exists()


def test_a_library_run_validated_on_its_training_spots_is_not_labelled_held_out(data, panel, tmp_path):
    model = train_model(data, ["C2"], ["C2"], _spec(epochs=1, model="ridge"), panel, tmp_path / "r")
    assert "not held out" in model.protocol and "held-out" not in model.protocol


# -- 3. the spatial validation block has a guard band against smoothing --------------------------


def test_spatial_holdout_targets_share_no_spot_across_the_split(c2):
    from napari_dkan.engine.data import SectionData
    from napari_dkan.engine.splits import MIN_VAL_SPOTS, inner_validation

    spots = c2.spots
    n = len(spots)
    positions = np.column_stack([spots.array_row, spots.array_col]).astype(np.int64)
    section = SectionData("C2", "C", spots.spot_id, positions, spots.xy, np.zeros((n, 2), np.float32),
                          np.zeros((n, 25, 2), np.float16), np.zeros((n, 25), bool), y=np.zeros((n, 1)))
    (fit,), (val,) = inner_validation([section])
    index = {s: i for i, s in enumerate(spots.spot_id)}
    fit_i = {index[s] for s in fit.spot_id}
    val_i = {index[s] for s in val.spot_id}
    assert len(val_i) >= MIN_VAL_SPOTS and len(fit_i) > 3 * len(val_i)
    nbr = spots.neighbour_index(include_self=True)  # what each spot's smoothed target averages
    support = lambda idx: {int(j) for i in idx for j in nbr[i] if j >= 0}  # noqa: E731
    assert not support(val_i) & support(fit_i), "a raw spot feeds both a training and a validation target"
    assert not support(val_i) & fit_i and not support(fit_i) & val_i


# -- 4. a crash between two writes leaves a run that resumes -------------------------------------


def test_a_crash_between_checkpoint_writes_resumes(data, panel, gene_text, tmp_path, monkeypatch):
    full = train_model(data, ["C2"], ["C3"], _spec(epochs=3), panel, tmp_path / "full", gene_text=gene_text)
    run = tmp_path / "run"
    real = trainer._write_state

    def crash_at_epoch_2(run_dir, state):
        if state["epoch"] == 2:  # the epoch's weights are written, its state is not: power cut
            raise KeyboardInterrupt
        real(run_dir, state)

    monkeypatch.setattr(trainer, "_write_state", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_model(data, ["C2"], ["C3"], _spec(epochs=3), panel, run, gene_text=gene_text)
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(trainer, "_write_state", real)
    resumed = train_model(data, ["C2"], ["C3"], _spec(epochs=3), panel, run, gene_text=gene_text)
    assert resumed.config["result"]["resumed_from"] == 1 and resumed.config["status"] == "finished"
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)
    assert not list(run.glob(".*.tmp"))


def test_a_crash_while_publishing_the_best_weights_resumes(data, panel, gene_text, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = trainer._write_state

    def crash_after_publishing(run_dir, state):
        if state.get("best_file") == trainer.MODEL_FILE:  # model.safetensors written, state not yet
            raise KeyboardInterrupt
        real(run_dir, state)

    monkeypatch.setattr(trainer, "_write_state", crash_after_publishing)
    with pytest.raises(KeyboardInterrupt):
        train_model(data, ["C2"], ["C3"], _spec(epochs=2), panel, run, gene_text=gene_text)
    monkeypatch.setattr(trainer, "_write_state", real)
    model = train_model(data, ["C2"], ["C3"], _spec(epochs=2), panel, run, gene_text=gene_text)
    assert model.config["status"] == "finished" and TrainedModel.load(run).kind == "dkan"
    checkpoints = sorted(p.name for p in run.glob("*.safetensors") if p.name.startswith(("last", "best", "model")))
    assert checkpoints == ["last-e0002.safetensors", "model.safetensors"]  # nothing stale left


# -- 5. a corrupted feature cache is rebuilt, and NaN is never written ---------------------------


def test_a_feature_cache_corrupted_in_place_is_rebuilt(c2, caplog):
    from napari_dkan.features import extract_section_features

    first = extract_section_features(c2, encoder="tiny", device="cpu")
    path = Path(first.meta["cache_path"])
    raw = bytearray(path.read_bytes())
    k = len(raw) // 3
    raw[-k:] = b"\xff" * k  # in place, same size: float16/32 0xFFFF… is NaN
    path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="napari_dkan.features.cache"):
        again = extract_section_features(c2, encoder="tiny", device="cpu")
    assert "corrupt" in caplog.text and not again.meta.get("cache_hit")
    assert np.isfinite(again.patch).all() and np.isfinite(np.asarray(again.region, np.float32)).all()
    np.testing.assert_allclose(again.patch, first.patch, rtol=1e-5, atol=1e-6)


def test_a_prediction_with_nan_is_never_written(tiny_run_dir, her2st, tmp_path, monkeypatch):
    model = TrainedModel.load(tiny_run_dir)
    monkeypatch.setattr(TrainedModel, "predict", lambda self, data, **kw: np.full((len(data), 2), np.nan))
    monkeypatch.setattr("napari_dkan.cli._engine.load_model_arg", lambda name: model)
    out = tmp_path / "pred.h5ad"
    assert main(["predict", str(her2st), "--sections", "C2", "--model", "x",
                 "--device", "cpu", "-o", str(out)]) == 2
    assert not out.exists() and not list(tmp_path.iterdir())


# -- 6. every cache keyed on every input ------------------------------------------------------------


def test_prediction_cache_key_holds_scale_and_encoder(tiny_run_dir, c2, monkeypatch):
    import napari_dkan.features.registry as registry
    from napari_dkan._widgets.cache import PredictionKey

    model = TrainedModel.load(tiny_run_dir)
    key = PredictionKey.of(model, c2)
    rescaled = dataclasses.replace(c2, mpp_override=float(c2.mpp) * 1.1)
    assert PredictionKey.of(model, rescaled).digest() != key.digest()
    real = registry.resolve_encoder
    monkeypatch.setattr(registry, "resolve_encoder",  # the same name, its weight file replaced
                        lambda name: dataclasses.replace(real(name), identity=real(name).identity + "|new"))
    assert PredictionKey.of(model, c2).digest() != key.digest()


def test_cohort_output_is_redone_when_its_row_inputs_change(tmp_path):
    import anndata

    from napari_dkan.cohort.manifest import CohortSlide
    from napari_dkan.cohort.tasks import output_is_valid, row_inputs

    slide = tmp_path / "s.jpg"
    slide.write_bytes(b"x" * 10)
    entry = CohortSlide("s", slide, None, None, 0.5)
    out = tmp_path / "s.h5ad"
    adata = anndata.AnnData(np.zeros((3, 2), np.float32))
    adata.var_names = ["A", "B"]
    adata.uns["napari_dkan"] = {"weights_sha256": "w", "inputs": row_inputs(entry)}
    adata.write_h5ad(out)
    assert output_is_valid(out, "w", ["A", "B"], row_inputs(entry)) is True
    for changed in (dataclasses.replace(entry, mpp=0.25), dataclasses.replace(entry, section="B1"),
                    dataclasses.replace(entry, spots="lattice")):
        assert output_is_valid(out, "w", ["A", "B"], row_inputs(changed)) is False
    slide.write_bytes(b"y" * 11)  # the slide file itself replaced
    assert output_is_valid(out, "w", ["A", "B"], row_inputs(entry)) is False


# -- faults: full disk, read-only folder, no permission --------------------------------------------


FAULTS = [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "no permission")]


@pytest.mark.parametrize(("code", "words"), FAULTS)
def test_every_writer_turns_a_disk_fault_into_one_line_and_leaves_no_temporary(code, words, tmp_path,
                                                                                monkeypatch):
    import anndata

    from napari_dkan.cohort.tasks import write_atomically
    from napari_dkan.engine.checkpoint import save_tensors, write_json

    def refuse(*a, **k):
        raise OSError(code, "injected")

    monkeypatch.setattr(storage.os, "replace", refuse)
    writers = {
        "checkpoint": lambda d: save_tensors(d / "w.safetensors", {"a": np.zeros(3, np.float32)}),
        "json": lambda d: write_json(d / "state.json", {"epoch": 1}),
        "h5ad": lambda d: write_atomically(anndata.AnnData(np.zeros((2, 2), np.float32)), d / "o.h5ad"),
    }
    for name, write in writers.items():
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(storage.StorageError) as info:
            write(folder)
        assert words in str(info.value) and str(folder) in str(info.value), name
        assert "\n" not in str(info.value)
        assert list(folder.iterdir()) == [], f"{name} left {list(folder.iterdir())}"


def test_a_full_disk_during_training_is_one_clear_line(her2st, panel_file, tmp_path, capsys, monkeypatch):
    real_write = storage.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    run = tmp_path / "run"
    code = main(["train", str(her2st), *TINY, "--epochs", "1", "--panel", str(panel_file), "--sections",
                 "C2", "--val-sections", "C3", "-o", str(run)])
    monkeypatch.setattr(storage.os, "fsync", real_write)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no space left on the disk holding" in err[-1] and str(run) in err[-1]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_an_unwritable_feature_cache_only_warns(c2, tmp_path, monkeypatch, caplog):
    from napari_dkan.features import extract_section_features

    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path / "cache"))

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(storage.os, "replace", read_only)
    with caplog.at_level(logging.WARNING):
        feats = extract_section_features(c2, encoder="tiny", device="cpu")
    assert feats.patch.shape[0] == len(c2.spots) and "read-only" in caplog.text
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_predict_checks_the_output_folder_before_computing(tiny_run_dir, her2st, tmp_path, capsys,
                                                           monkeypatch):
    import napari_dkan.engine.predict as predict

    monkeypatch.setattr(predict, "predict_section",
                        lambda *a, **k: pytest.fail("computed before the output was checked"))
    real_open = open

    def no_permission(path, *a, **k):
        if ".napari-dkan-probe" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(storage, "open", no_permission, raising=False)
    out = tmp_path / "out" / "pred.h5ad"
    assert main(["predict", str(her2st), "--sections", "C2", "--model", str(tiny_run_dir), "-o", str(out)]) == 2
    assert "no permission to write in" in capsys.readouterr().err


def test_helper_cleans_up_after_an_interrupted_write(tmp_path):
    def interrupted(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        storage.atomic_write(tmp_path / "f.h5ad", interrupted)
    assert list(tmp_path.iterdir()) == []


# -- bad values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--lr", "-1", "learning rate must be a positive"), ("--batch-size", "0", "batch size must be"),
    ("--patience", "-1", "patience must be"), ("--epochs", "0", "epochs must be"),
])
def test_bad_numbers_are_refused_before_anything_is_written(flag, value, words, her2st, panel_file,
                                                            tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(her2st), *TINY, "--panel", str(panel_file), "--sections", "C2",
                 flag, value, "-o", str(out)]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()


def test_a_wrong_config_field_is_named(tiny_run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["network"]["d"] = "abc"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'network\.d' is 'abc', not an integer"):
        TrainedModel.load(run)
    cfg["network"]["d"] = 32
    cfg["features"]["tile_px"] = None
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"'features\.tile_px'"):
        TrainedModel.load(run)


def test_a_run_with_only_a_pickle_says_the_safetensors_file_is_missing(tiny_run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    (run / "model.safetensors").unlink()
    (run / "model.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing .*model\.pt is there"):
        TrainedModel.load(run)


def test_predict_on_counts_lacking_panel_genes_compares_the_genes_there(tiny_run_dir, c2):
    from napari_dkan.engine.predict import predict_section
    from napari_dkan.io.counts import Counts

    model = TrainedModel.load(tiny_run_dir)
    full = c2.counts
    gone = model.panel[:2]
    keep = np.flatnonzero(~np.isin(full.genes, gone))
    partial = Counts(full.matrix[:, keep], np.asarray(full.genes)[keep], full.spot_id)
    section = dataclasses.replace(c2, load_counts=lambda: partial)
    with pytest.raises(DataError):
        section.counts.take_genes(model.panel)  # the section really lacks them
    adata = predict_section(model, section, device="cpu")
    assert adata.shape == (len(c2.spots), len(model.panel)) and np.isfinite(adata.X).all()
    measured = adata.layers["measured"]
    assert np.isnan(measured[:, :2]).all() and np.isfinite(measured[:, 2:]).all()
    assert list(adata.uns["napari_dkan"]["measured_absent_genes"]) == gone
    from napari_dkan.cli._engine import predict_notes  # and the command line says so

    said = [n for n in predict_notes(adata.uns["napari_dkan"], c2.name, 0.9) if n.startswith("not measured")]
    assert said and all(g in said[0] for g in gone) and "(2 panel gene(s))" in said[0]
    if adata.uns["napari_dkan"].get("interval_depth_source") == "calibration":
        assert "calibration section's sequencing depth" in said[0]


def test_the_dock_refuses_a_folder_holding_another_run_before_any_feature(her2st, tiny_run_dir, tmp_path):
    from napari_dkan._widgets.training_plan import TrainingRequest, check_request

    out = tmp_path / "out"
    shutil.copytree(tiny_run_dir, out)
    before = _snapshot(out)
    result = check_request(TrainingRequest(str(her2st), str(out), section="C2", validation="C3",
                                           preset="tiny", encoder="tiny", panel_size=10, epochs=2,
                                           batch_size=32, device="cpu"))
    assert not result.ok and any("holds a different training run" in p for p in result.problems)
    assert _snapshot(out) == before


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 kB file system, when this process may mount one (root on Linux); else skipped."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root on Linux); the patched-errno tests cover it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_really_full_disk_is_one_line_and_leaves_nothing(tiny_tmpfs):
    import anndata

    from napari_dkan.cohort.tasks import write_atomically
    from napari_dkan.engine.checkpoint import save_tensors

    with pytest.raises(storage.StorageError, match="no space left on the disk holding"):
        save_tensors(tiny_tmpfs / "w.safetensors", {"a": np.zeros(100_000, np.float32)})  # 400 kB
    with pytest.raises(storage.StorageError, match="no space left"):
        write_atomically(anndata.AnnData(np.random.rand(400, 250).astype(np.float32)), tiny_tmpfs / "o.h5ad")
    with pytest.raises(storage.StorageError, match="no space left"):  # a writer with no size hint
        storage.atomic_write(tiny_tmpfs / "f.bin", lambda tmp: tmp.write_bytes(b"x" * 200_000))
    assert list(tiny_tmpfs.iterdir()) == []
    storage.atomic_write(tiny_tmpfs / "small.json", b"{}")  # and what fits is written
    assert (tiny_tmpfs / "small.json").read_bytes() == b"{}"
