"""Model configurations as data: the paper's presets, our compact preset, and variants.

A :class:`DKANConfig` fully describes a DKAN-family network (widths, depths, heads, dropout,
loss settings, which parts are on).  It round-trips through JSON so a checkpoint's config file
rebuilds the exact network.  Presets (method.md §3, table) are plain instances; variants are
made with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


class Alignment(str, enum.Enum):
    #: key/value is the single fused image token (the reference code; attention is trivial)
    FAITHFUL = "faithful"
    #: key/value is a real token set: patch, region and slide-context tokens (ours)
    IMPROVED = "improved"

    def __str__(self) -> str:
        return self.value


class PatchInput(str, enum.Enum):
    #: a trainable CNN on the 224-px RGB patch; its last 7×7 feature map gives 49 tokens (paper)
    IMAGE = "image"
    #: 49 frozen tokens precomputed by the frozen encoder (compact preset: cheap on a CPU)
    TOKENS = "tokens"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BlockSpec:
    """depth / heads / MLP ratio / dropout of one transformer module."""

    depth: int
    heads: int
    mlp_ratio: float
    dropout: float

    @classmethod
    def of(cls, depth: int, heads: int, mlp_ratio: float, dropout: float) -> BlockSpec:
        return cls(depth, heads, mlp_ratio, dropout)


@dataclass(frozen=True)
class DKANConfig:
    d: int
    fusion: BlockSpec  # image fusion (depth1)
    slide: BlockSpec  # slide-context branch (depth2)
    region: BlockSpec  # region branch (depth3)
    align_image: BlockSpec  # image–text cross attention
    align_expr: BlockSpec  # expression–text cross attention
    text: BlockSpec  # gene-text transformer
    tau: float = 0.1
    alpha: float = 0.3
    detach_distillation: bool = False
    alignment: Alignment = Alignment.FAITHFUL
    #: tokens the expression path offers the gene queries in the improved alignment
    expr_tokens: int = 8
    expr_dropout: float = 0.3
    use_text: bool = True
    use_contrastive: bool = True
    adaptive_weights: bool = True
    patch_input: PatchInput = PatchInput.IMAGE
    #: timm name of the trainable patch CNN (IMAGE input)
    patch_cnn: str = "resnet18"
    #: local checkpoint for the patch CNN (e.g. Ciga et al.'s self-supervised ResNet18)
    patch_cnn_weights: str | None = None
    #: rows of the region grid (5 → 25 tiles) and of the patch token grid (7 → 49)
    region_grid: int = 5
    patch_grid: int = 7
    name: str = "custom"
    extras: dict[str, Any] = field(default_factory=dict)
    #: how dropout masks are drawn (napari_dkan.model.blocks.SAMPLERS): ``torch`` reproduces
    #: earlier runs draw for draw; ``uniform`` is the same dropout, a few per cent faster on a CPU
    dropout_sampler: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["alignment"] = str(self.alignment)
        out["patch_input"] = str(self.patch_input)
        if out["dropout_sampler"] == "torch":  # the default stays out: earlier runs keep their fingerprint
            del out["dropout_sampler"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DKANConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        kw = dict(data)
        for key in ("fusion", "slide", "region", "align_image", "align_expr", "text"):
            kw[key] = BlockSpec(**kw[key])
        kw["alignment"] = Alignment(kw.get("alignment", "faithful"))
        kw["patch_input"] = PatchInput(kw.get("patch_input", "image"))
        return cls(**kw)


_B = BlockSpec.of

PRESETS: dict[str, DKANConfig] = {
    # method.md §3 table (d = 1024 in all three)
    "her2st": DKANConfig(
        d=1024, fusion=_B(1, 4, 4, 0.4), slide=_B(5, 8, 4, 0.3), region=_B(4, 4, 4, 0.3),
        align_image=_B(4, 4, 4, 0.3), align_expr=_B(3, 4, 4, 0.3), text=_B(3, 4, 4, 0.3),
        tau=0.1, name="her2st",
    ),
    "skin": DKANConfig(
        d=1024, fusion=_B(2, 8, 4, 0.1), slide=_B(2, 16, 1, 0.1), region=_B(4, 16, 1, 0.3),
        align_image=_B(4, 8, 4, 0.3), align_expr=_B(4, 8, 4, 0.3), text=_B(4, 8, 4, 0.3),
        tau=0.08, name="skin",
    ),
    "stnet": DKANConfig(
        d=1024, fusion=_B(3, 16, 4, 0.4), slide=_B(3, 8, 2, 0.1), region=_B(4, 8, 4, 0.3),
        align_image=_B(4, 8, 4, 0.3), align_expr=_B(4, 8, 4, 0.3), text=_B(4, 8, 4, 0.3),
        tau=0.1, name="stnet",
    ),
    # ours: small width and depths, frozen patch tokens, for CPUs and the bundled model
    "compact": DKANConfig(
        d=128, fusion=_B(1, 4, 2, 0.2), slide=_B(2, 4, 2, 0.2), region=_B(1, 4, 2, 0.2),
        align_image=_B(1, 4, 2, 0.2), align_expr=_B(1, 4, 2, 0.2), text=_B(1, 4, 2, 0.2),
        tau=0.1, patch_input=PatchInput.TOKENS, name="compact",
    ),
    # for tests: the smallest network that exercises every part, without dropout (deterministic)
    "tiny": DKANConfig(
        d=32, fusion=_B(1, 2, 2, 0.0), slide=_B(2, 2, 2, 0.0), region=_B(1, 2, 2, 0.0),
        align_image=_B(1, 2, 2, 0.0), align_expr=_B(1, 2, 2, 0.0), text=_B(1, 2, 2, 0.0),
        tau=0.1, expr_dropout=0.0, patch_input=PatchInput.TOKENS, name="tiny",
    ),
}


def preset(name: str, **overrides: Any) -> DKANConfig:
    """A preset by name, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def variant(cfg: DKANConfig, model: str) -> DKANConfig:
    """The configuration of a model family member built on ``cfg``.

    ``dkan`` (faithful alignment), ``dkan-improved`` (token-set alignment, masked means) and
    ``triplex`` (text, expression and contrastive parts off).
    """
    if model == "dkan":
        return replace(cfg, alignment=Alignment.FAITHFUL, use_text=True, use_contrastive=True)
    if model == "dkan-improved":
        return replace(cfg, alignment=Alignment.IMPROVED, use_text=True, use_contrastive=True)
    if model == "triplex":
        return replace(cfg, use_text=False, use_contrastive=False)
    raise ValueError(f"{model!r} is not a DKAN-family model (dkan, dkan-improved, triplex)")
