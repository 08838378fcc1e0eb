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


def test_shipped_files_are_safetensors_and_json_within_40_mb():
    files = [p for p in MODEL_DIR.rglob("*") if p.is_file()]
    names = {p.relative_to(MODEL_DIR).as_posix() for p in files}
    assert {"config.json", "MODEL_CARD.md", "metrics.json", "reliability.json", "calibration.safetensors",
            "domain.safetensors", "stain.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".ckpt"))], "no pickles"
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md"}
    assert sum(p.stat().st_size for p in files) <= 40e6
    # the seed ensemble of issue 13: DKAN and TRIPLEX, compact, three seeds each, on one image encoder
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model"] == "ensemble" and config["features"]["encoder"] == "efficientnet-lite0-imagenet"
    members = [json.loads((MODEL_DIR / m["dir"] / "config.json").read_text()) for m in config["members"]]
    assert [(m["model"], m["preset"], m["training"]["seed"]) for m in members] == [
        (net, "compact", seed) for net in ("dkan-improved", "triplex") for seed in (2021, 1, 2)]
    assert [m["weight"] for m in config["members"]] == pytest.approx([1 / 6] * 6)
    for m in members:  # both members trained on the same split, so the ensemble's calibration section is held out
        assert m["training"]["train_sections"] == config["training"]["train_sections"]
        assert m["training"]["val_sections"] == config["training"]["val_sections"]
    assert sorted(config["training"]["train_sections"] + config["training"]["val_sections"]) == [
        "B4", "C2", "C3", "C4", "C5"]


def test_model_card_states_data_metrics_and_limits():
    card = (MODEL_DIR / "MODEL_CARD.md").read_text()
    metrics = json.loads((MODEL_DIR / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == ["B4", "C2", "C3", "C4", "C5"]
    assert f"{metrics['mean']['PCC-ALL']:.3f} ± {metrics['std']['PCC-ALL']:.3f}" in card
    assert "ensemble" in card and "TRIPLEX" in card
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
