"""The model's dropout: PyTorch's by default (runs reproduce draw for draw), or the same
operation with a cheaper uniform-draw mask (issue 13)."""

from __future__ import annotations

import pytest
import torch

from napari_dkan.model import DKAN, preset
from napari_dkan.model.blocks import Attention, Dropout, FeedForward, dropout, set_dropout_sampler


def test_dropout_keeps_one_minus_p_scaled_and_zeroes_the_rest():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    out = dropout(x, 0.2, sampler="uniform")
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.003
    torch.testing.assert_close(out[kept], x[kept] / 0.8)
    # inverted dropout: the expectation is the input
    assert abs(out.mean().item() / x.mean().item() - 1.0) < 0.005
    # gradients flow through the kept elements only, with the same scale
    x.requires_grad_(True)
    y = dropout(x, 0.5, sampler="uniform")
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


def test_dropout_is_the_identity_outside_training_and_at_p_zero():
    x = torch.randn(4, 5)
    for sampler in ("torch", "uniform"):
        assert dropout(x, 0.3, training=False, sampler=sampler) is x
        assert dropout(x, 0.0, sampler=sampler) is x
    assert torch.equal(dropout(x, 1.0, sampler="uniform"), torch.zeros_like(x))
    module = Dropout(0.4).eval()
    assert module(x) is x
    assert "p=0.4" in repr(module)


def test_the_default_sampler_draws_exactly_what_pytorch_dropout_draws():
    """Runs made before the uniform sampler existed reproduce: same masks, same outputs."""
    torch.manual_seed(3)
    ffn = FeedForward(8, 2, 0.3).train()
    reference = torch.nn.Sequential(ffn.net[0], ffn.net[1], torch.nn.Dropout(0.3), ffn.net[3],
                                    torch.nn.Dropout(0.3)).train()
    x = torch.randn(5, 7, 8)
    torch.manual_seed(11)
    ours = ffn(x)
    torch.manual_seed(11)
    theirs = reference(x)
    assert torch.equal(ours, theirs)
    attn = Attention(16, 4, dropout=0.25).train()
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    torch.manual_seed(7)
    a = attn(q, kv)
    torch.manual_seed(7)
    qh, kh, vh = attn._split(attn.q(q)), attn._split(attn.k(kv)), attn._split(attn.v(kv))
    o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, dropout_p=0.25)
    b = torch.nn.functional.dropout(attn.out(o.transpose(1, 2).reshape(2, 3, 16)), 0.25)
    assert torch.equal(a, b)


def test_the_sampler_is_part_of_the_network_config():
    cfg = preset("tiny")
    assert "dropout_sampler" not in cfg.to_dict()  # the default keeps earlier fingerprints
    fast = type(cfg).from_dict({**cfg.to_dict(), "dropout_sampler": "uniform"})
    net = DKAN(fast, n_genes=4, frozen_dim=8, token_dim=8, text_dim=6)
    samplers = {m.sampler for m in net.modules() if isinstance(m, (Dropout, Attention))}
    assert samplers == {"uniform"}
    assert fast.to_dict()["dropout_sampler"] == "uniform"
    with pytest.raises(ValueError, match="unknown dropout sampler"):
        set_dropout_sampler(net, "bernoulli")


def test_uniform_attention_dropout_is_scaled_dot_product_attention_in_expectation():
    torch.manual_seed(1)
    attn = Attention(16, 4, dropout=0.25)
    set_dropout_sampler(attn, "uniform")
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    mask = torch.tensor([[False] * 5 + [True], [False] * 6])
    bias = torch.randn(1, 4, 3, 6)
    attn.eval()
    with torch.no_grad():
        reference = attn(q, kv, bias=bias, key_mask=mask)
        attn.train()
        # a vanishing p takes the training path with every weight kept: exactly SDPA's values
        attn.dropout, attn.proj_drop.p = 1e-12, 1e-12
        torch.testing.assert_close(attn(q, kv, bias=bias, key_mask=mask), reference, atol=1e-5, rtol=1e-5)
        # with p = 0.25 every draw differs, and their mean is the attention without dropout
        attn.dropout, attn.proj_drop.p = 0.25, 0.25
        draws = torch.stack([attn(q, kv, bias=bias, key_mask=mask) for _ in range(4000)])
    assert not torch.allclose(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), reference, atol=0.03, rtol=0.0)
    # a masked key never receives weight, dropout or not
    with torch.no_grad():
        kv2 = kv.clone()
        kv2[0, 5] = 1e3
        torch.manual_seed(5)
        a = attn(q, kv, bias=bias, key_mask=mask)
        torch.manual_seed(5)
        b = attn(q, kv2, bias=bias, key_mask=mask)
    torch.testing.assert_close(a[0], b[0])


def test_cli_records_the_uniform_sampler_and_refuses_it_for_ridge(her2st, panels_dir, tmp_path, capsys):
    import json

    from napari_dkan.cli import main
    from napari_dkan.engine.runs import TrainedModel

    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join((panels_dir / "her2st.txt").read_text().split()[:12]) + "\n")
    common = [str(her2st), "--sections", "C2", "C3", "--preset", "tiny", "--encoder", "tiny",
              "--device", "cpu", "--epochs", "1", "--panel", str(panel), "--dropout-sampler", "uniform"]
    assert main(["train", *common, "--model", "ridge", "-o", str(tmp_path / "ridge")]) != 0
    assert "--dropout-sampler applies to dkan" in capsys.readouterr().err
    run = tmp_path / "dkan"
    assert main(["train", *common, "--model", "dkan-improved", "-o", str(run), "--json"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["dropout_sampler"] == "uniform"
    net = TrainedModel.load(run)._net
    assert {m.sampler for m in net.modules() if isinstance(m, (Dropout, Attention))} == {"uniform"}
