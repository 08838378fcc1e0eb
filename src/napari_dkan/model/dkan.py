"""DKAN (method.md §3) and, with text and contrastive parts off, the TRIPLEX architecture.

Branches: patch (49 tokens of a CNN, trainable or frozen), region (transformer over the 5×5
grid of frozen tile features, relative-position bias, masked off-image tiles), slide context
(transformer over every spot of the slide with a convolutional positional encoding gathered
by explicit index).  Image fusion lets the slide-context token attend to the patch tokens and,
with the same weights, to the region tokens.  DKAN then aligns gene-text tokens with the image
(prediction path) and, in training, with an embedding of the measured expression (contrastive
path).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from napari_dkan.model.blocks import (
    CrossAttentionLayer,
    Dropout,
    TransformerStack,
    projection,
    set_dropout_sampler,
)
from napari_dkan.model.config import Alignment, DKANConfig, PatchInput


@dataclass
class SlideContext:
    """Frozen features of every spot of one slide and their integer array positions."""

    features: Tensor  # N×D
    positions: Tensor  # N×2 (row, col), long
    #: the slide branch's output for these spots, computed once for a whole prediction (the
    #: branch is deterministic in eval mode); used only in eval mode, ignored in training
    tokens: Tensor | None = None


@dataclass
class SpotInputs:
    """A batch of spots.  ``slide_index[b]``/``spot_index[b]`` locate spot b in ``slides``."""

    patch: Tensor  # B×3×H×W (image input) or B×49×Dp (token input)
    region: Tensor  # B×25×Dr
    region_mask: Tensor  # B×25, True where the tile is off the image
    slide_index: Tensor  # B
    spot_index: Tensor  # B
    slides: list[SlideContext]
    y: Tensor | None = None  # B×G targets (training)
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class ModelOutput:
    pred: Tensor  # B×G
    aux: list[Tensor]  # auxiliary predictions, each B×G
    e_ti: Tensor | None = None  # B×G×d gene tokens aligned with the image
    e_te: Tensor | None = None  # B×K×d gene tokens aligned with the expression (K genes)
    #: the K genes of ``e_te`` (None: all G, in order)
    contrastive_genes: Tensor | None = None


class PatchBranch(nn.Module):
    """49 tokens of width d from a CNN's last 7×7 map, or from precomputed frozen tokens."""

    def __init__(self, cfg: DKANConfig, token_dim: int | None) -> None:
        super().__init__()
        self.mode = cfg.patch_input
        if self.mode is PatchInput.IMAGE:
            self.cnn = _patch_cnn(cfg.patch_cnn, cfg.patch_cnn_weights)
            token_dim = self.cnn.num_features
        elif token_dim is None:
            raise ValueError("token patch input needs the frozen token width")
        self.proj = projection(int(token_dim), cfg.d)

    def forward(self, patch: Tensor) -> Tensor:
        if self.mode is PatchInput.IMAGE:
            fmap = self.cnn.forward_features(patch)  # B×C×7×7
            patch = fmap.flatten(2).transpose(1, 2)
        return self.proj(patch)


def _patch_cnn(name: str, weights: str | None) -> nn.Module:
    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    if weights:
        from napari_dkan.model.weights import load_state_dict_file

        state = load_state_dict_file(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > len(state) // 2:
            raise ValueError(f"{weights} does not fit {name}: {len(missing)} tensors missing")
    return model


class RegionBranch(nn.Module):
    """Transformer over the region tiles with a learned bias per head and |Δrow|, |Δcol|."""

    def __init__(self, cfg: DKANConfig, in_dim: int) -> None:
        super().__init__()
        g = cfg.region_grid
        s = cfg.region
        self.proj = projection(in_dim, cfg.d)
        self.stack = TransformerStack(cfg.d, s.depth, s.heads, s.mlp_ratio, s.dropout, final_norm=True)
        self.rel_bias = nn.Parameter(torch.zeros(s.heads, g, g))
        rows = torch.arange(g * g) // g
        cols = torch.arange(g * g) % g
        self.register_buffer("dr", (rows[:, None] - rows[None, :]).abs(), persistent=False)
        self.register_buffer("dc", (cols[:, None] - cols[None, :]).abs(), persistent=False)

    def bias(self) -> Tensor:
        return self.rel_bias[:, self.dr, self.dc][None]  # 1×H×25×25

    def forward(self, region: Tensor, mask: Tensor) -> Tensor:
        return self.stack(self.proj(region), bias=self.bias(), key_mask=mask)


class PositionalConv(nn.Module):
    """Tokens scattered onto the array grid, a depthwise 3×3 convolution, gathered back."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(d, d, kernel_size=3, padding=1, groups=d)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """``x`` N×d, ``positions`` N×2 (row, col).  Returns N×d, by explicit index."""
        pos = positions - positions.min(dim=0).values
        h, w = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
        grid = x.new_zeros(x.shape[1], h, w)  # empty cells stay zero
        grid[:, pos[:, 0], pos[:, 1]] = x.T
        out = self.conv(grid[None])[0]
        return x + out[:, pos[:, 0], pos[:, 1]].T


class SlideBranch(nn.Module):
    """One layer over all spots, positional convolution, further layers, LayerNorm."""

    def __init__(self, cfg: DKANConfig, in_dim: int) -> None:
        super().__init__()
        s = cfg.slide
        self.proj = projection(in_dim, cfg.d)
        self.first = TransformerStack(cfg.d, 1, s.heads, s.mlp_ratio, s.dropout, final_norm=False)
        self.peg = PositionalConv(cfg.d)
        self.rest = TransformerStack(cfg.d, max(s.depth - 1, 0), s.heads, s.mlp_ratio, s.dropout, final_norm=True)

    def forward(self, ctx: SlideContext) -> Tensor:
        x = self.first(self.proj(ctx.features)[None])[0]
        x = self.peg(x, ctx.positions)
        return self.rest(x[None])[0]


class ImageFusion(nn.Module):
    """The slide-context token attends to patch tokens and, with the same weights, to the
    region tokens; the two results are summed and normalised."""

    def __init__(self, cfg: DKANConfig) -> None:
        super().__init__()
        s = cfg.fusion
        self.layers = nn.ModuleList(
            CrossAttentionLayer(cfg.d, s.heads, s.mlp_ratio, s.dropout, shared_norm=True) for _ in range(s.depth)
        )
        self.norm = nn.LayerNorm(cfg.d)

    def forward(self, ctx: Tensor, patch: Tensor, region: Tensor, region_mask: Tensor) -> Tensor:
        qp = qr = ctx[:, None]
        for layer in self.layers:
            qp = layer(qp, patch)
            qr = layer(qr, region, key_mask=region_mask)
        return self.norm(qp + qr)[:, 0]


class ExpressionEncoder(nn.Module):
    """``LayerNorm(Dropout(Linear(GELU(p))) + p)`` with ``p = Linear(y)`` (method.md §3.6)."""

    def __init__(self, n_genes: int, d: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(n_genes, d)
        self.hidden = nn.Linear(d, d)
        self.act = nn.GELU()
        self.drop = Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, y: Tensor) -> Tensor:
        p = self.inp(y)
        return self.norm(self.drop(self.hidden(self.act(p))) + p)


class AlignmentPath(nn.Module):
    """Gene tokens as queries over a key/value token set; no final norm."""

    def __init__(self, d: int, spec) -> None:  # noqa: ANN001 - BlockSpec
        super().__init__()
        self.layers = nn.ModuleList(
            CrossAttentionLayer(d, spec.heads, spec.mlp_ratio, spec.dropout) for _ in range(spec.depth)
        )

    def forward(self, genes: Tensor, kv: Tensor, key_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            genes = layer(genes, kv, key_mask=key_mask)
        return genes


class DKAN(nn.Module):
    """The DKAN network; ``cfg.use_text=False`` gives TRIPLEX (no text, expression, alignment).

    ``frozen_dim``: width of the frozen tile features (region tiles and slide context);
    ``token_dim``: width of frozen patch tokens (token patch input); ``text_dim``: width of the
    gene-text embeddings.
    """

    def __init__(self, cfg: DKANConfig, n_genes: int, frozen_dim: int, token_dim: int | None = None,
                 text_dim: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_genes = n_genes
        d = cfg.d
        self.patch_branch = PatchBranch(cfg, token_dim)
        self.region_branch = RegionBranch(cfg, frozen_dim)
        self.slide_branch = SlideBranch(cfg, frozen_dim)
        self.fusion = ImageFusion(cfg)
        if cfg.use_text:
            if text_dim is None:
                raise ValueError("DKAN with text needs the gene-text embedding width")
            t = cfg.text
            self.text_proj = projection(text_dim, d)
            self.text_encoder = TransformerStack(d, t.depth, t.heads, t.mlp_ratio, t.dropout, final_norm=False)
            self.align_image = AlignmentPath(d, cfg.align_image)
            self.gene_head = nn.Linear(d, 1)  # shared across genes
            self.aux_heads = nn.ModuleList(nn.Linear(d, n_genes) for _ in range(4))
            if cfg.use_contrastive:
                self.expr_encoder = ExpressionEncoder(n_genes, d, cfg.expr_dropout)
                self.align_expr = AlignmentPath(d, cfg.align_expr)
                if cfg.alignment is Alignment.IMPROVED:
                    self.expr_tokens = nn.Linear(d, cfg.expr_tokens * d)
        else:
            self.fusion_head = nn.Linear(d, n_genes)
            self.aux_heads = nn.ModuleList(nn.Linear(d, n_genes) for _ in range(3))
        set_dropout_sampler(self, cfg.dropout_sampler)

    # -- pieces ------------------------------------------------------------------------------
    def slide_tokens(self, inputs: SpotInputs) -> Tensor:
        """Slide-context token of each spot: the branch runs once per slide in the batch, and
        each spot's token is taken by its explicit index (never by sort order)."""
        present = torch.unique(inputs.slide_index).tolist()
        start = torch.zeros(len(inputs.slides), dtype=torch.long, device=inputs.slide_index.device)
        parts, n = [], 0
        for s in present:
            start[s] = n
            ctx = inputs.slides[s]
            parts.append(ctx.tokens if ctx.tokens is not None and not self.training
                         else self.slide_branch(ctx))
            n += parts[-1].shape[0]
        return torch.cat(parts)[start[inputs.slide_index] + inputs.spot_index]

    def encode_text(self, gene_text: Tensor) -> Tensor:
        return self.text_encoder(self.text_proj(gene_text)[None])[0]  # G×d

    def _masked_mean(self, tokens: Tensor, mask: Tensor) -> Tensor:
        if self.cfg.alignment is Alignment.FAITHFUL:
            return tokens.mean(dim=1)  # the reference averages masked tiles too
        keep = (~mask).unsqueeze(-1).to(tokens.dtype)
        return (tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def encode_queries(self, panel_text: Tensor, query_text: Tensor, chunk: int = 64) -> Tensor:
        """Gene tokens (Q×d) for texts of genes outside the trained panel.

        The text transformer treats the genes as a set, so a gene's token depends on the others
        present.  Each query joins the trained panel as its one extra member: its token is the
        one it would get beside the panel, and no query changes another's (or the panel's).
        """
        if not self.cfg.use_text:
            raise ValueError("a model without gene text cannot be queried by text")
        if query_text.ndim != 2 or query_text.shape[1] != panel_text.shape[1]:
            raise ValueError(f"query embeddings must be Q×{panel_text.shape[1]} (the width of the "
                             f"panel's text embeddings), got {tuple(query_text.shape)}")
        panel = self.text_proj(panel_text)  # G×d
        queries = self.text_proj(query_text)  # Q×d
        out = []
        for a in range(0, queries.shape[0], chunk):
            q = queries[a : a + chunk]
            seq = torch.cat([panel.expand(q.shape[0], -1, -1), q[:, None]], dim=1)
            out.append(self.text_encoder(seq)[:, -1])
        return torch.cat(out) if out else panel.new_zeros(0, panel.shape[1])

    def predict_queries(self, inputs: SpotInputs, panel_text: Tensor, query_text: Tensor) -> Tensor:
        """Predictions (B×Q) for genes given only by their text embeddings (``query_text``),
        beside the panel the model was trained on (``panel_text``); see :meth:`encode_queries`."""
        kv, kv_mask, *_ = self._image(inputs)
        genes = self.encode_queries(panel_text, query_text)
        e_ti = self.align_image(genes.expand(kv.shape[0], -1, -1), kv, key_mask=kv_mask)
        return self.gene_head(e_ti).squeeze(-1)

    def _image(self, inputs: SpotInputs) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor, Tensor]:
        """The alignment's key/value tokens and mask, and the fused, patch, region, slide tokens."""
        patch = self.patch_branch(inputs.patch)  # B×49×d
        region = self.region_branch(inputs.region, inputs.region_mask)  # B×25×d
        ctx = self.slide_tokens(inputs)  # B×d
        fused = self.fusion(ctx, patch, region, inputs.region_mask)  # B×d
        b = fused.shape[0]
        if self.cfg.alignment is Alignment.FAITHFUL:
            kv, kv_mask = fused[:, None], None
        else:
            kv = torch.cat([patch, region, ctx[:, None]], dim=1)
            free = torch.zeros(b, patch.shape[1], dtype=torch.bool, device=kv.device)
            kv_mask = torch.cat([free, inputs.region_mask, free[:, :1]], dim=1)
        return kv, kv_mask, fused, patch, region, ctx

    # -- forward -----------------------------------------------------------------------------
    def forward(self, inputs: SpotInputs, gene_text: Tensor | None = None,
                contrastive_genes: Tensor | None = None) -> ModelOutput:
        """Predictions; in training with targets, also the contrastive tokens.

        ``contrastive_genes`` restricts the expression path to those genes (InfoNCE then runs
        over them only): the path's cost grows with B·K instead of B·G.
        """
        kv, kv_mask, fused, patch, region, ctx = self._image(inputs)
        region_mean = self._masked_mean(region, inputs.region_mask)
        if not self.cfg.use_text:
            pred = self.fusion_head(fused)
            aux = [h(x) for h, x in zip(self.aux_heads, (patch.mean(1), region_mean, ctx))]
            return ModelOutput(pred=pred, aux=aux)
        if gene_text is None:
            raise ValueError("DKAN needs the gene-text embeddings")
        b = fused.shape[0]
        genes = self.encode_text(gene_text)
        e_ti = self.align_image(genes.expand(b, -1, -1), kv, key_mask=kv_mask)
        pred = self.gene_head(e_ti).squeeze(-1)
        aux = [h(x) for h, x in zip(self.aux_heads, (fused, patch.mean(1), region_mean, ctx))]
        e_te = None
        if self.training and self.cfg.use_contrastive and inputs.y is not None:
            expr = self.expr_encoder(inputs.y)  # B×d
            if self.cfg.alignment is Alignment.FAITHFUL:
                ekv = expr[:, None]
            else:
                ekv = self.expr_tokens(expr).view(b, self.cfg.expr_tokens, self.cfg.d)
            genes2 = self.encode_text(gene_text)  # second pass: independent dropout
            if contrastive_genes is not None:
                genes2 = genes2[contrastive_genes]
            e_te = self.align_expr(genes2.expand(b, -1, -1), ekv)
        return ModelOutput(pred=pred, aux=aux, e_ti=e_ti, e_te=e_te, contrastive_genes=contrastive_genes)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
