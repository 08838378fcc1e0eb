"""The model's dropout: the same operation as PyTorch's, with a cheaper mask (issue 13)."""

from __future__ import annotations

import torch

from napari_dkan.model.blocks import Attention, Dropout, dropout


def test_dropout_keeps_one_minus_p_scaled_and_zeroes_the_rest():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    out = dropout(x, 0.2)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.003
    torch.testing.assert_close(out[kept], x[kept] / 0.8)
    # inverted dropout: the expectation is the input
    assert abs(out.mean().item() / x.mean().item() - 1.0) < 0.005
    # gradients flow through the kept elements only, with the same scale
    x.requires_grad_(True)
    y = dropout(x, 0.5)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


def test_dropout_is_the_identity_outside_training_and_at_p_zero():
    x = torch.randn(4, 5)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.4).eval()
    assert module(x) is x
    assert "p=0.4" in repr(module)


def test_attention_with_dropout_is_scaled_dot_product_attention_in_expectation():
    torch.manual_seed(1)
    attn = Attention(16, 4, dropout=0.25)
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
