"""Transformer building blocks shared by DKAN and the baselines.

All layers are pre-norm (LayerNorm before attention / feed-forward, residual after).  Attention
takes an optional additive bias and a key-padding mask; masked keys get exactly zero weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: how dropout masks are drawn: ``torch`` (PyTorch's Bernoulli sampler, the default: runs
#: reproduce earlier ones draw for draw) or ``uniform`` (uniform draws compared with p: the same
#: operation and distribution, other draws; 6–13 % less CPU per compact DKAN training step)
SAMPLERS = ("torch", "uniform")


def dropout(x: Tensor, p: float, training: bool = True, sampler: str = "torch") -> Tensor:
    """Inverted dropout: each element kept with probability 1 − p and scaled by 1 / (1 − p).

    ``sampler="torch"`` is :func:`torch.nn.functional.dropout` itself.  ``"uniform"`` draws the
    mask as uniform numbers ≥ p: on a CPU dropout is ~40 % of a compact DKAN training step
    (benchmarks/README.md, issue 13) and the uniform draw trims the step by 6–13 %.  Outside training, or with p = 0, ``x`` is returned.
    """
    if not training or p <= 0.0:
        return x
    if sampler == "torch":
        return F.dropout(x, p, training=True)
    if p >= 1.0:
        return torch.zeros_like(x)
    keep = torch.rand(x.shape, device=x.device) >= p  # float32 draws whatever x's dtype
    return x * (keep * (1.0 / (1.0 - p))).to(x.dtype)


class Dropout(nn.Module):
    """:func:`dropout` as a module (no weights: checkpoints are those of ``nn.Dropout``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.sampler = "torch"

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.sampler)

    def extra_repr(self) -> str:
        return f"p={self.p}, sampler={self.sampler}"


def set_dropout_sampler(module: nn.Module, sampler: str) -> None:
    """Make every dropout of ``module`` (and its attention weights' dropout) draw with ``sampler``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown dropout sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    for m in module.modules():
        if isinstance(m, (Dropout, Attention)):
            m.sampler = sampler


class FeedForward(nn.Module):
    """Linear → GELU → dropout → linear → dropout (hidden width ``mlp_ratio · d``)."""

    def __init__(self, d: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, int(round(d * mlp_ratio)))
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, d), Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention of queries over keys/values with optional bias and key mask."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"model width {d} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.dropout = dropout
        self.sampler = "torch"
        self.proj_drop = Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        kv: Tensor,
        bias: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """``query`` B×Lq×d, ``kv`` B×Lk×d; ``bias`` broadcastable to B×H×Lq×Lk;
        ``key_mask`` B×Lk, True where a key must be ignored."""
        if kv.shape[1] == 1 and bias is None and key_mask is None:
            return self._single_key(query, kv)
        q, k, v = self._split(self.q(query)), self._split(self.k(kv)), self._split(self.v(kv))
        attn_bias = bias
        if key_mask is not None:
            neg = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
            neg = neg.masked_fill(key_mask, float("-inf"))[:, None, None, :]
            attn_bias = neg if attn_bias is None else attn_bias.to(q.dtype) + neg
        elif attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        if self.training and self.dropout > 0 and self.sampler != "torch":
            out = self._attend_with_dropout(q, k, v, attn_bias)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_bias, dropout_p=self.dropout if self.training else 0.0
            )
        b, h, n, dh = out.shape
        return self.proj_drop(self.out(out.transpose(1, 2).reshape(b, n, h * dh)))

    def _attend_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None) -> Tensor:
        """softmax(q·kᵀ/√d + bias) with dropout on the weights, then · v: what
        ``scaled_dot_product_attention(dropout_p=p)`` computes, with :func:`dropout`'s cheaper
        mask (PyTorch's own attention dropout cost 5× the attention itself on a CPU)."""
        logits = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        if bias is not None:
            logits = logits + bias
        weights = logits.softmax(dim=-1)
        return dropout(weights, self.dropout, sampler=self.sampler) @ v

    def _single_key(self, query: Tensor, kv: Tensor) -> Tensor:
        """One key: the softmax is identically 1, so every query receives the projected value
        (DKAN's faithful alignment).  Queries and keys would get no gradient anyway; skipping
        their projections is exact.  Attention dropout still drops whole (query, head) weights,
        as it would in the general path."""
        b, lq = query.shape[:2]
        v = self._split(self.v(kv))  # B×H×1×dh
        if self.training and self.dropout > 0:
            keep = torch.ones(b, self.heads, lq, 1, dtype=v.dtype, device=v.device)
            out = dropout(keep, self.dropout, sampler=self.sampler) * v
            out = out.transpose(1, 2).reshape(b, lq, -1)
            return self.proj_drop(self.out(out))
        merged = v.transpose(1, 2).reshape(b, 1, -1)
        return self.proj_drop(self.out(merged)).expand(b, lq, -1)

    def weights(self, query: Tensor, kv: Tensor, bias: Tensor | None = None,
                key_mask: Tensor | None = None) -> Tensor:
        """The attention probabilities B×H×Lq×Lk (for inspection and tests)."""
        q, k = self._split(self.q(query)), self._split(self.k(kv))
        logits = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        if bias is not None:
            logits = logits + bias
        if key_mask is not None:
            logits = logits.masked_fill(key_mask[:, None, None, :], float("-inf"))
        return logits.softmax(dim=-1)


class SelfAttentionLayer(nn.Module):
    """Pre-norm self-attention + feed-forward."""

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = FeedForward(d, mlp_ratio, dropout)

    def forward(self, x: Tensor, bias: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, bias=bias, key_mask=key_mask)
        return x + self.ffn(self.norm2(x))


class CrossAttentionLayer(nn.Module):
    """Pre-norm cross-attention of queries over a token set, then feed-forward.

    ``shared_norm=True`` normalises queries and keys/values with one LayerNorm (DKAN's image
    fusion); otherwise each side has its own (the dual-path alignment).
    """

    def __init__(self, d: int, heads: int, mlp_ratio: float, dropout: float, shared_norm: bool = False) -> None:
        super().__init__()
        self.shared_norm = shared_norm
        self.norm_q = nn.LayerNorm(d)
        if not shared_norm:  # a shared norm is registered once, so checkpoints hold no aliases
            self.norm_kv = nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = FeedForward(d, mlp_ratio, dropout)

    def forward(self, query: Tensor, kv: Tensor, key_mask: Tensor | None = None) -> Tensor:
        norm_kv = self.norm_q if self.shared_norm else self.norm_kv
        query = query + self.attn(self.norm_q(query), norm_kv(kv), key_mask=key_mask)
        return query + self.ffn(self.norm_ffn(query))


class TransformerStack(nn.Module):
    """``depth`` self-attention layers, optionally followed by a final LayerNorm."""

    def __init__(self, d: int, depth: int, heads: int, mlp_ratio: float, dropout: float,
                 final_norm: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(SelfAttentionLayer(d, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d) if final_norm else nn.Identity()

    def forward(self, x: Tensor, bias: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, bias=bias, key_mask=key_mask)
        return self.norm(x)


def projection(d_in: int, d_out: int) -> nn.Module:
    """A linear map when the widths differ, else the identity (method.md: "linear to d if needed")."""
    return nn.Identity() if d_in == d_out else nn.Linear(d_in, d_out)
