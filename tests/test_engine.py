"""The training / evaluation engine on real HER2ST sections with the tiny encoder and preset."""

from __future__ import annotations

import threading

import numpy as np
import pytest

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

FEATURES = FeatureSpec(encoder="tiny")


@pytest.fixture(scope="module")
def panel(her2st_dataset):
    from napari_dkan.io.expression import select_panel

    return select_panel([her2st_dataset[n] for n in ("C2", "C3", "C4")], n=16)


def _spec(model="dkan", epochs=3, **kw):
    settings = TrainSettings(epochs=epochs, patience=10, lr=1e-3, batch_size=32, contrastive_genes=8,
                             device="cpu")
    return RunSpec(model=model, preset="tiny", features=FEATURES, settings=settings, **kw)


@pytest.fixture(scope="module")
def data(her2st_dataset, panel):
    secs = [her2st_dataset[n] for n in ("C2", "C3", "C4")]
    # every family's needs at once: tokens (DKAN tiny) and neighbours (NH2ST)
    d1 = prepare_sections(secs, _spec("dkan"), panel)
    d2 = prepare_sections(secs, _spec("nh2st"), panel)
    for name, sd in d2.items():
        d1[name].neighbours = sd.neighbours
    return d1


@pytest.fixture(scope="module")
def gene_text(panel):
    return gene_text_for(_spec("dkan"), panel)


def test_train_writes_a_self_contained_run(data, panel, gene_text, tmp_path):
    model = train_model(data, ["C2"], ["C3"], _spec(), panel, tmp_path / "run", gene_text=gene_text)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "model.safetensors", "gene_text.safetensors", "state.json"} <= files
    assert [f for f in files if f.startswith(("last", "best"))] == ["last-e0003.safetensors"]
    cfg = model.config
    assert cfg["panel"] == list(panel) and cfg["features"]["encoder"] == "tiny"
    assert cfg["text"]["encoder"] and cfg["versions"]["torch"]
    assert cfg["protocol"].startswith("inner validation")
    assert cfg["status"] == "finished" and len(cfg["result"]["history"]) == 3
    again = TrainedModel.load(tmp_path / "run" / "model.safetensors")
    pred = again.predict(data["C4"], device="cpu")
    assert pred.shape == (len(data["C4"]), len(panel)) and np.isfinite(pred).all()


def test_cancel_keeps_best_checkpoint_and_rerun_resumes_identically(data, panel, gene_text, tmp_path):
    full = train_model(data, ["C2"], ["C3"], _spec(epochs=3), panel, tmp_path / "full", gene_text=gene_text)
    stop = threading.Event()

    def on_event(e):
        if e.phase == "step" and e.epoch == 2:
            stop.set()  # cancel during the second epoch

    part = train_model(data, ["C2"], ["C3"], _spec(epochs=3), panel, tmp_path / "part",
                       gene_text=gene_text, on_event=on_event, cancel=stop)
    assert part.config["status"] == "cancelled" and part.config["result"]["epochs_run"] == 1
    assert TrainedModel.load(tmp_path / "part").predict(data["C4"], device="cpu").shape[1] == len(panel)
    resumed = train_model(data, ["C2"], ["C3"], _spec(epochs=3), panel, tmp_path / "part", gene_text=gene_text)
    assert resumed.config["result"]["resumed_from"] == 1 and resumed.config["status"] == "finished"
    a, b = full.state_dict(), resumed.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-6)


def test_corrupt_checkpoints_are_detected(data, panel, gene_text, tmp_path):
    run = tmp_path / "run"
    train_model(data, ["C2"], ["C3"], _spec(epochs=1), panel, run, gene_text=gene_text)
    weights = run / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-20] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        TrainedModel.load(run)
    stop = threading.Event()
    part = tmp_path / "part"
    train_model(data, ["C2"], ["C3"], _spec(epochs=2), panel, part, gene_text=gene_text, cancel=stop,
                on_event=lambda e: stop.set() if e.epoch == 2 else None)
    (part / "last-e0001.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        train_model(data, ["C2"], ["C3"], _spec(epochs=2), panel, part, gene_text=gene_text)


def test_resuming_into_a_different_run_is_refused(data, panel, gene_text, tmp_path):
    run = tmp_path / "run"
    train_model(data, ["C2"], ["C3"], _spec(epochs=1), panel, run, gene_text=gene_text)
    with pytest.raises(CheckpointError, match="different training run"):
        train_model(data, ["C3"], ["C2"], _spec(epochs=2), panel, run, gene_text=gene_text)


@pytest.mark.parametrize("kind", ["triplex", "nh2st", "ridge", "dkan-improved"])
def test_every_family_trains_and_predicts(kind, data, panel, gene_text, tmp_path):
    spec = _spec(kind, epochs=2)
    text = gene_text if spec.uses_text else None
    model = train_model(data, ["C2", "C4"], ["C3"], spec, panel, tmp_path / kind, gene_text=text)
    pred = model.predict(data["C3"], device="cpu")
    assert pred.shape == (len(data["C3"]), len(panel)) and np.isfinite(pred).all()
    assert model.kind == kind
    if kind != "ridge":
        assert model.config["result"]["best_val_pcc"] is not None


def test_paper_protocol_is_labelled(data, panel, tmp_path):
    model = train_model(data, ["C2"], ["C4"], _spec("triplex", epochs=1, protocol="paper"), panel, tmp_path / "p")
    assert "leaky" in model.protocol and "test fold" in model.protocol
