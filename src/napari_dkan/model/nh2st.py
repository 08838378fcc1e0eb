"""NH2ST baseline (Qu et al., MICCAI 2025; method.md §10), on frozen patch features.

Query branch: the target patch feature → linear (image embedding); the expression → two linear
layers (expression embedding).  Neighbour branch: the 9 nearest spots (target included) form a
hypergraph whose hyperedge *i* joins node *i* and its 3 most similar neighbours by image feature;
two hypergraph convolutions run over the image embeddings and, on the same hypergraph, over the
expression embeddings; each is mean-pooled.

Cross-attention: method.md does not pin its operands.  Letting a spot's image token attend to
its own expression token would hand the positive pair to InfoNCE (a trivial task), so here the
query-branch token of each modality attends over that modality's 9 neighbourhood nodes — one
attention layer shared by both modalities, in both branches' contrastive terms.

Loss = 1.0·InfoNCE(query branch) + 0.5·InfoNCE(neighbour branch) + MSE(decoder(image
embedding), y), τ = 0.05.  "Negatives' logits down-weighted by 0.1" is read as a weight of 0.1
on each negative's term in the softmax denominator: −log(e^{s⁺} / (e^{s⁺} + 0.1·Σ e^{s⁻})).
Prediction = decoder applied to the target patch's image embedding alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_dkan.model.blocks import CrossAttentionLayer


@dataclass(frozen=True)
class NH2STConfig:
    d: int = 256
    heads: int = 4
    dropout: float = 0.1
    tau: float = 0.05
    negative_weight: float = 0.1
    hyperedge_size: int = 3  # similar neighbours joined to each node
    neighbours: int = 9
    w_query: float = 1.0
    w_neighbour: float = 0.5
    name: str = "nh2st"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def hypergraph_incidence(features: Tensor, k: int) -> Tensor:
    """B×N×N incidence ``H[v, e]``: hyperedge e joins node e and its k most similar nodes
    (cosine similarity of image features)."""
    z = F.normalize(features, dim=-1)
    sim = z @ z.transpose(1, 2)
    b, n, _ = sim.shape
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    k = min(k, n - 1)
    top = sim.masked_fill(eye, float("-inf")).topk(k, dim=-1).indices  # B×E×k member nodes
    h = eye.float().expand(b, n, n).clone()
    bi = torch.arange(b, device=sim.device)[:, None, None].expand(b, n, k)
    ei = torch.arange(n, device=sim.device)[None, :, None].expand(b, n, k)
    h[bi, top, ei] = 1.0
    return h


class HypergraphConv(nn.Module):
    """``X' = Dv^{-1/2} H De^{-1} Hᵀ Dv^{-1/2} X Θ`` (HGNN), unit hyperedge weights."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.theta = nn.Linear(d, d)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        dv = h.sum(dim=2).clamp_min(1.0).rsqrt()  # B×N
        de = h.sum(dim=1).clamp_min(1.0).reciprocal()  # B×E
        xt = self.theta(x) * dv[..., None]
        edge = (h.transpose(1, 2) @ xt) * de[..., None]
        return (h @ edge) * dv[..., None]


def weighted_info_nce(a: Tensor, b: Tensor, tau: float, negative_weight: float) -> Tensor:
    """InfoNCE a→b over the batch with each negative's denominator term scaled."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / tau
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits + torch.where(eye, 0.0, math.log(negative_weight))
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


@dataclass
class NH2STOutput:
    pred: Tensor
    loss_query: Tensor | None = None
    loss_neighbour: Tensor | None = None


class NH2ST(nn.Module):
    def __init__(self, cfg: NH2STConfig, n_genes: int, feat_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        self.image = nn.Linear(feat_dim, d)
        self.expression = nn.Sequential(nn.Linear(n_genes, d), nn.GELU(), nn.Linear(d, d))
        self.hg_image = nn.ModuleList([HypergraphConv(d), HypergraphConv(d)])
        self.hg_expr = nn.ModuleList([HypergraphConv(d), HypergraphConv(d)])
        self.cross = CrossAttentionLayer(d, cfg.heads, 2.0, cfg.dropout)
        self.decoder = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, n_genes))

    def forward(self, feat: Tensor, y: Tensor | None = None, nb_feat: Tensor | None = None,
                nb_y: Tensor | None = None) -> NH2STOutput:
        """``feat`` B×D target features; in training ``y`` B×G, neighbours ``nb_*`` B×9×·."""
        zi = self.image(feat)
        pred = self.decoder(zi)
        if not self.training or y is None or nb_feat is None or nb_y is None:
            return NH2STOutput(pred=pred)
        h = hypergraph_incidence(nb_feat, self.cfg.hyperedge_size)
        ni, ne = self.image(nb_feat), self.expression(nb_y)
        for conv_i, conv_e in zip(self.hg_image, self.hg_expr):
            ni, ne = F.gelu(conv_i(ni, h)), F.gelu(conv_e(ne, h))
        ze = self.expression(y)
        qi = self.cross(zi[:, None], ni)[:, 0]
        qe = self.cross(ze[:, None], ne)[:, 0]
        pi = self.cross(ni.mean(1, keepdim=True), ni)[:, 0]
        pe = self.cross(ne.mean(1, keepdim=True), ne)[:, 0]
        c = self.cfg
        return NH2STOutput(
            pred=pred,
            loss_query=weighted_info_nce(qi, qe, c.tau, c.negative_weight),
            loss_neighbour=weighted_info_nce(pi, pe, c.tau, c.negative_weight),
        )

    def loss(self, out: NH2STOutput, y: Tensor) -> Tensor:
        loss = F.mse_loss(out.pred, y)
        if out.loss_query is not None:
            loss = loss + self.cfg.w_query * out.loss_query + self.cfg.w_neighbour * out.loss_neighbour
        return loss
