"""The bundled default model: shipped complete, small, documented, and usable with no network."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from napari_dkan.bundled import MODEL_DIR, default_model_path
from napari_dkan.cli import main

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="this build ships no bundled model")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_shipped_files_are_safetensors_and_json_within_25_mb():
    names = {p.name for p in MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "gene_text.safetensors", "MODEL_CARD.md", "metrics.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".ckpt"))], "no pickles"
    assert sum(p.stat().st_size for p in MODEL_DIR.iterdir()) <= 25e6
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model"] in {"dkan", "dkan-improved"} and config["preset"] == "compact"
    assert config["features"]["encoder"] == "efficientnet-lite0-imagenet"
    assert sorted(config["training"]["train_sections"] + config["training"]["val_sections"]) == [
        "B4", "C2", "C3", "C4", "C5"]


def test_model_card_states_data_metrics_and_limits():
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == ["B4", "C2", "C3", "C4", "C5"]
    assert f"{metrics['mean']['PCC-ALL']:.3f} ± {metrics['std']['PCC-ALL']:.3f}" in card
    for words in ("HER2ST", "Andersson", "no explicit licence", "cite the paper", "Not a diagnostic device",
                  "Breast cancer", "efficientnet-lite0-imagenet", "all-MiniLM-L6-v2"):
        assert words in card, words


def test_evaluate_default_model_offline(her2st, no_network, capsys):
    assert main(["evaluate", str(her2st), "--model", "default", "--sections", "C2", "--device", "cpu",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    fold = out["folds"][0]
    assert fold["fold"] == "C2" and out["model"] == str(MODEL_DIR)
    # C2 is one of the model's training sections: a working model fits it well, a broken one (random
    # weights, a mismatched panel or feature order) scores near zero
    assert fold["PCC-ALL"] > 0.3 and np.isfinite(fold["MAE"])
