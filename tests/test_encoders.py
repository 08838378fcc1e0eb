"""The encoder registry: names, weight files, key mapping, and what the encoders return."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dkan.features import EncoderError, list_encoders, load_encoder, resolve_encoder
from napari_dkan.features.encoders import efficientnet_lite0_state_dict


def _timm():
    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    return timm


# -- names and errors ---------------------------------------------------------------------

def test_registry_lists_the_families_and_the_timm_form():
    names = list_encoders()
    for name in ("efficientnet-lite0-imagenet", "uni", "h-optimus-0", "resnet18-ciga", "tiny"):
        assert name in names
    assert any(k.startswith("timm:") for k in names)


def test_unknown_encoder_lists_what_is_available():
    with pytest.raises(EncoderError) as err:
        resolve_encoder("unii")
    msg = str(err.value)
    assert "unknown encoder 'unii'" in msg
    for name in ("efficientnet-lite0-imagenet", "uni", "resnet18-ciga", "tiny", "timm:ARCH"):
        assert name in msg


def test_missing_weight_file_says_how_to_get_it(tmp_path):
    with pytest.raises(EncoderError, match=r"weight file .*not found.*huggingface.co/MahmoodLab/UNI"):
        resolve_encoder(f"uni@{tmp_path / 'nope.bin'}")
    with pytest.raises(EncoderError, match="needs a local weight file.*ozanciga"):
        resolve_encoder("resnet18-ciga")
    with pytest.raises(EncoderError, match=r"needs weights: add @/path"):
        resolve_encoder("timm:resnet18")
    with pytest.raises(EncoderError, match="timm has no architecture 'resnet_nope'"):
        resolve_encoder("timm:resnet_nope@random")


def test_resolving_never_loads_weights_and_identity_tracks_the_file(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"not loaded while resolving")
    a = resolve_encoder(f"resnet18-ciga@{w}")
    assert a.weight_file == w.resolve() and a.width == 512
    w.write_bytes(b"a different file, same name")
    b = resolve_encoder(f"resnet18-ciga@{w}")
    assert a.identity != b.identity  # the cache key notices replaced weights
    assert resolve_encoder("uni").identity == "uni|vit_large_patch16_224|hub:hf-hub:MahmoodLab/UNI"


def test_unreadable_or_wrong_weights_are_clear_errors(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(EncoderError, match="could not be read as a weights-only torch checkpoint"):
        load_encoder(f"resnet18-ciga@{bad}")
    wrong = tmp_path / "effnet.pth"
    torch.save(efficientnet_lite0_state_dict(), wrong)
    with pytest.raises(EncoderError, match="do not fit encoder 'resnet18-ciga'.*missing tensors"):
        load_encoder(f"resnet18-ciga@{wrong}")


# -- architectures as their checkpoints expect ---------------------------------------------

@pytest.mark.parametrize(
    ("name", "width", "prefix", "key"),
    [("uni", 1024, 1, "blocks.0.ls1.gamma"), ("h-optimus-0", 1536, 5, "reg_token")],
)
def test_foundation_encoders_are_built_as_published(name, width, prefix, key):
    """UNI is ViT-L/16 with layer scale; H-optimus-0 is ViT-g/14 with 4 registers (no weights
    needed: built on the meta device)."""
    spec = resolve_encoder(f"{name}@random")
    with torch.device("meta"):
        model = _timm().create_model(spec.arch, num_classes=0, **spec.timm_kwargs)
    assert model.num_features == width == spec.width
    assert model.num_prefix_tokens == prefix
    assert key in model.state_dict()


# -- what encoders return -----------------------------------------------------------------

def test_tiny_is_deterministic_and_returns_pooled_and_7x7_tokens():
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 224, 224, 3), dtype=np.uint8))
    a, ta = load_encoder("tiny").encode(tiles, tokens=True)
    b, tb = load_encoder("tiny").encode(tiles, tokens=True)
    assert a.shape == (3, 32) and ta.shape == (3, 49, 32)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ta, tb)
    assert not torch.allclose(a[0], a[1])  # different tiles, different features
    torch.testing.assert_close(ta.mean(1), a)  # a CNN's pooled feature: the mean of its map


def test_vit_patch_tokens_are_pooled_to_a_7x7_grid():
    """A ViT's 14×14 patch tokens (class token dropped) average-pooled 2×2 → 49 tokens."""
    enc = load_encoder("timm:vit_tiny_patch16_224@random")
    tiles = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8))
    pooled, tokens = enc.encode(tiles, tokens=True)
    assert tokens.shape == (2, 49, enc.width)
    x = (tiles.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        feats = enc.model.forward_features(x)
    grid = feats[:, enc.model.num_prefix_tokens:].reshape(2, 14, 14, enc.width)
    want = grid.reshape(2, 7, 2, 7, 2, enc.width).mean(dim=(2, 4)).reshape(2, 49, enc.width)
    torch.testing.assert_close(tokens, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, enc.model.forward_head(feats, pre_logits=True))


def test_packaged_efficientnet_weights_map_in_order_and_classify_a_cat():
    from PIL import Image
    from skimage import data

    state = efficientnet_lite0_state_dict()
    timm = _timm()
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    model.load_state_dict(state, strict=True)
    img = np.array(Image.fromarray(data.chelsea()).resize((224, 224)))
    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        top = int(model(x).argmax())
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat"  # tabby … Egyptian cat


def test_default_encoder_loads_offline_with_cnn_tokens():
    enc = load_encoder("efficientnet-lite0-imagenet")
    assert enc.width == 1280 and enc.spec.mean == (0.5, 0.5, 0.5)
    pooled, tokens = enc.encode(torch.full((1, 224, 224, 3), 200, dtype=torch.uint8), tokens=True)
    assert pooled.shape == (1, 1280) and tokens.shape == (1, 49, 1280)
    # a CNN's pooled feature is the mean of its 7×7 feature map
    torch.testing.assert_close(tokens.mean(1), pooled, atol=1e-4, rtol=1e-4)


def test_resnet18_ciga_checkpoint_keys_are_mapped(tmp_path):
    """Ciga et al. ship a PyTorch Lightning checkpoint whose backbone keys sit under
    'model.resnet.' beside a projection head; both must be handled."""
    torch.manual_seed(3)
    source = _timm().create_model("resnet18", num_classes=0)
    state = {f"model.resnet.{k}": v for k, v in source.state_dict().items()}
    state["model.resnet.fc.1.weight"] = torch.randn(128, 512)
    ckpt = tmp_path / "tenpercent_resnet18.ckpt"
    torch.save({"epoch": 3, "state_dict": state}, ckpt)
    enc = load_encoder(f"resnet18-ciga@{ckpt}")
    for k, v in source.state_dict().items():
        torch.testing.assert_close(enc.model.state_dict()[k], v)
    assert enc.width == 512


def test_any_timm_architecture_with_a_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    source = _timm().create_model("test_convnext", num_classes=0)
    path = tmp_path / "convnext.safetensors"
    save_file(source.state_dict(), str(path))
    enc = load_encoder(f"timm:test_convnext@{path}")
    assert enc.spec.name == f"timm:test_convnext@{path.resolve()}"
    x = torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8)
    pooled, tokens = enc.encode(x, tokens=True)
    assert pooled.shape == (2, enc.width) and tokens.shape == (2, 49, enc.width)
    with torch.inference_mode():
        ref = source.eval()(((x.permute(0, 3, 1, 2).float() / 255) - torch.tensor(enc.spec.mean).view(1, 3, 1, 1))
                            / torch.tensor(enc.spec.std).view(1, 3, 1, 1))
    torch.testing.assert_close(pooled, ref, atol=1e-4, rtol=1e-4)


def test_hub_download_failure_is_explained(monkeypatch):
    timm = _timm()

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(EncoderError, match="could not download .*'uni'.*uni@/path/to/weights"):
        load_encoder("uni")


def test_weight_file_path_is_reported(tmp_path):
    p = Path(tmp_path / "x.safetensors")
    p.write_bytes(b"junk")
    with pytest.raises(EncoderError, match="not a readable safetensors file"):
        load_encoder(f"timm:test_vit@{p}")
