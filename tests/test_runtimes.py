"""Inference runtimes for the frozen encoder: torch, ONNX Runtime, OpenVINO, and what auto picks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_dkan.features import runtimes
from napari_dkan.features.encoders import load_encoder
from napari_dkan.features.registry import EncoderError

CPU = torch.device("cpu")


def _convnext_file(tmp_path, seed=5):
    """timm's test ConvNeXt with weights in a file (an export is keyed by the file's identity)."""
    from safetensors.torch import save_file

    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("test_convnext", num_classes=0)
    path = tmp_path / f"convnext-{seed}.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def test_auto_picks_an_installed_exported_runtime_on_a_cpu_and_torch_elsewhere(monkeypatch):
    monkeypatch.delenv(runtimes.ENV_RUNTIME, raising=False)
    big = 4_000_000
    assert runtimes.resolve_runtime("auto", CPU, big) == runtimes.CPU_PREFERENCE[0]
    assert runtimes.resolve_runtime("auto", torch.device("cuda"), big) == "torch"
    assert runtimes.resolve_runtime("auto", CPU, 11_312) == "torch"  # the tiny test encoder
    assert runtimes.resolve_runtime("auto", CPU, 1_100_000_000) == "torch"  # ViT-g: > 2 GB
    monkeypatch.setattr(runtimes, "installed", lambda r: r in ("torch", "onnxruntime"))
    assert runtimes.resolve_runtime("auto", CPU, big) == "onnxruntime"
    monkeypatch.setattr(runtimes, "installed", lambda r: r == "torch")
    assert runtimes.resolve_runtime("auto", CPU, big) == "torch"
    monkeypatch.setenv(runtimes.ENV_RUNTIME, "torch")
    monkeypatch.setattr(runtimes, "installed", lambda r: True)
    assert runtimes.resolve_runtime("auto", CPU, big) == "torch"  # the user's override


def test_unusable_runtimes_are_clear_errors(monkeypatch):
    with pytest.raises(EncoderError, match="unknown inference runtime 'tensorrt'; choose one of: auto, torch"):
        runtimes.resolve_runtime("tensorrt", CPU)
    with pytest.raises(EncoderError, match="OpenVINO runtime runs on the CPU only.*--runtime torch"):
        runtimes.resolve_runtime("openvino", torch.device("cuda"))
    monkeypatch.setattr(runtimes, "installed", lambda r: r == "torch")
    with pytest.raises(EncoderError, match="ONNX Runtime runtime is not installed: pip install onnxruntime"):
        runtimes.resolve_runtime("onnxruntime", CPU)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtimes_give_torchs_features_and_tokens(runtime, tmp_path):
    path = _convnext_file(tmp_path)
    ref = load_encoder(f"timm:test_convnext@{path}", runtime="torch")
    enc = load_encoder(f"timm:test_convnext@{path}", runtime=runtime)
    assert enc.runtime == runtime and ref.runtime == "torch"
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (5, 224, 224, 3), dtype=np.uint8))
    p0, t0 = ref.encode(x, tokens=True)
    p1, t1 = enc.encode(x, tokens=True)
    assert p1.shape == p0.shape and t1.shape == t0.shape == (5, 49, enc.width)
    assert _cosine(p1, p0) > 0.9999 and _cosine(t1, t0) > 0.9999
    torch.testing.assert_close(p1, p0, atol=1e-3, rtol=1e-3)
    # another tile size: the export takes any batch and side
    y = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (3, 160, 160, 3), dtype=np.uint8))
    assert _cosine(enc.encode(y)[0], ref.encode(y)[0]) > 0.9999


def test_exports_are_cached_by_the_weights_identity(tmp_path):
    path = _convnext_file(tmp_path)
    load_encoder(f"timm:test_convnext@{path}", runtime="onnxruntime")
    spec = load_encoder(f"timm:test_convnext@{path}", runtime="torch").spec
    export = runtimes.export_path(spec)
    assert export.is_file()
    stamp = export.stat().st_mtime_ns
    load_encoder(f"timm:test_convnext@{path}", runtime="openvino")  # reuses the export
    assert export.stat().st_mtime_ns == stamp
    # new weights in the same file: a new identity, a new export, other features
    other = _convnext_file(tmp_path, seed=6)
    path.write_bytes(other.read_bytes())
    enc = load_encoder(f"timm:test_convnext@{path}", runtime="onnxruntime")
    assert runtimes.export_path(enc.spec) != export and runtimes.export_path(enc.spec).is_file()
    x = torch.full((1, 224, 224, 3), 120, dtype=torch.uint8)
    ref = load_encoder(f"timm:test_convnext@{path}", runtime="torch")
    assert _cosine(enc.encode(x)[0], ref.encode(x)[0]) > 0.9999
    assert not list(export.parent.glob("*.tmp"))  # written atomically: no leftovers


def test_auto_falls_back_to_torch_when_an_export_fails(tmp_path, monkeypatch):
    path = _convnext_file(tmp_path)

    def broken(model, spec):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(runtimes, "export_onnx", broken)
    monkeypatch.setattr(runtimes, "MIN_PARAMETERS", 0)
    enc = load_encoder(f"timm:test_convnext@{path}", runtime="auto")
    assert enc.runtime == "torch" and "failed (RuntimeError); torch used" in enc.runtime_note
    with pytest.raises(EncoderError, match="could not run encoder .* with ONNX Runtime .*unsupported operator"):
        load_encoder(f"timm:test_convnext@{path}", runtime="onnxruntime")


@pytest.mark.slow
def test_default_encoder_on_auto_matches_torch_on_real_tiles(c2):
    """The bundled model's encoder on HER2ST C2 patches: auto's runtime vs torch."""
    from napari_dkan.features import section_patches

    tiles = torch.from_numpy(section_patches(c2)[:16])
    ref = load_encoder("efficientnet-lite0-imagenet", runtime="torch")
    enc = load_encoder("efficientnet-lite0-imagenet", runtime="auto")
    assert enc.runtime == runtimes.CPU_PREFERENCE[0]
    p0, t0 = ref.encode(tiles, tokens=True)
    p1, t1 = enc.encode(tiles, tokens=True)
    assert _cosine(p1, p0) > 0.9999 and _cosine(t1, t0) > 0.999


def test_bench_features_reports_its_runtime(her2st, tmp_path, monkeypatch, capsys):
    from napari_dkan.cli import main

    monkeypatch.setenv("NAPARI_DKAN_CACHE", str(tmp_path))
    for runtime in ("torch", "onnxruntime"):
        assert main(["bench", "features", str(her2st), "--sections", "C2", "--encoder", "tiny",
                     "--max-spots", "4", "--no-cache", "--runtime", runtime, "--json"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["runtime"] == runtime and out["tiles_per_s"] > 0
    with pytest.raises(SystemExit) as stop:
        main(["bench", "features", str(her2st), "--sections", "C2", "--encoder", "tiny",
              "--runtime", "tensorrt"])
    assert stop.value.code == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_openvino_normalises_inside_the_network_and_splits_batches_over_requests(tmp_path, monkeypatch):
    path = _convnext_file(tmp_path, seed=7)
    ref = load_encoder(f"timm:test_convnext@{path}", runtime="torch")
    enc = load_encoder(f"timm:test_convnext@{path}", runtime="openvino")
    session = enc._session  # noqa: SLF001
    assert session.takes_raw
    calls = {"raw": 0, "float": 0}
    raw, run = session.raw, session._run  # noqa: SLF001

    def spy_raw(tiles):
        calls["raw"] += 1
        assert tiles.dtype == np.uint8 and tiles.shape[-1] == 3  # NHWC bytes, no float copy
        return raw(tiles)

    def spy_run(x, raw):
        calls["float"] += not raw
        return run(x, raw)

    monkeypatch.setattr(session, "raw", spy_raw)
    monkeypatch.setattr(session, "_run", spy_run)
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 255, (7, 224, 224, 3), dtype=np.uint8))
    p1, t1 = enc.encode(x, tokens=True)
    assert calls == {"raw": 1, "float": 0}
    p0, t0 = ref.encode(x, tokens=True)
    torch.testing.assert_close(p1, p0, atol=1e-3, rtol=1e-3)
    assert _cosine(t1, t0) > 0.9999
    # a batch split over the parallel requests gives each tile what it gets alone
    alone = torch.cat([enc.encode(x[i : i + 1])[0] for i in range(len(x))])
    torch.testing.assert_close(p1, alone, atol=1e-5, rtol=1e-5)
    # a network that takes any size takes other tiles raw too; one that needs resizing does not
    y = torch.from_numpy(np.random.default_rng(3).integers(0, 255, (2, 160, 160, 3), dtype=np.uint8))
    assert _cosine(enc.encode(y)[0], ref.encode(y)[0]) > 0.9999
    assert calls["float"] == 0
    enc.spec = dataclasses.replace(enc.spec, fixed_input_size=True, input_size=192)
    enc.encode(y)
    assert calls["float"] == 1
