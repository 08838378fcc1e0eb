"""``napari-dkan features``, ``encoders`` and ``bench features`` from the shell."""

from __future__ import annotations

import json

import pytest

from napari_dkan.cli import main


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path))
    return tmp_path


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bench_compares_modes_then_reads_the_cache(her2st, cache, capsys, monkeypatch):
    argv = ["bench", "features", str(her2st), "--sections", "C2", "--encoder", "tiny",
            "--compare", "--max-spots", "6", "--json"]
    assert main(argv) == 0
    out = _json(capsys)
    for key in ("tiles_per_s", "spots_per_s", "encoder_passes_per_spot", "seconds"):
        assert out[key] > 0
    assert out["mode"] == "shared" and not out["cache_hit"]
    assert out["modes"]["exact"]["encoder_passes_per_spot"] == 25
    assert out["modes"]["shared"]["encoder_passes_per_spot"] < 25
    assert out["passes_ratio_shared_to_exact"] < 1
    assert 0 < out["mean_cosine_similarity"] <= 1
    assert out["machine"]["device"].startswith("cpu")

    from napari_dkan.features import pipeline

    encoded, encode = [], pipeline.encode_tiles
    monkeypatch.setattr(pipeline, "encode_tiles", lambda *a, **k: encoded.append(a) or encode(*a, **k))
    assert main(argv) == 0
    again = _json(capsys)
    assert again["cache_hit"] and again["encoder_passes_per_spot"] == 0
    assert again["modes"]["exact"]["cache_hit"]
    assert encoded == []  # both modes read from the cache: no tile was encoded
    assert again["mean_cosine_similarity"] == pytest.approx(out["mean_cosine_similarity"])


def test_features_command_extracts_and_caches_each_section(her2st, cache, capsys):
    argv = ["features", str(her2st), "--encoder", "tiny", "--max-spots", "5", "--json"]
    assert main(argv) == 0
    out = _json(capsys)
    assert [r["section"] for r in out["sections"]] == ["B4", "C2", "C3", "C4", "C5"]
    assert len(out["skipped"]) == 31  # HER2ST publishes 5 of its 36 images
    row = out["sections"][1]
    assert row["n_spots"] == 5 and row["width"] == 32 and not row["cache_hit"]
    assert row["encoder_passes_per_spot"] < 25
    assert main(argv) == 0
    assert _json(capsys)["sections"][0]["cache_hit"]


def test_encoders_command_lists_encoders_and_devices(capsys):
    assert main(["encoders", "--json"]) == 0
    out = _json(capsys)
    assert "efficientnet-lite0-imagenet" in out["encoders"] and out["devices"][:2] == ["auto", "cpu"]


def test_unknown_encoder_is_reported_in_one_line(her2st, cache, capsys):
    assert main(["features", str(her2st), "--sections", "C2", "--encoder", "vit-huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown encoder 'vit-huge'" in err and "efficientnet-lite0-imagenet" in err


def test_unavailable_device_is_reported(her2st, cache, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["bench", "features", str(her2st), "--sections", "C2", "--encoder", "tiny",
                 "--device", "cuda", "--max-spots", "2"]) == 2
    assert "not available" in capsys.readouterr().err
