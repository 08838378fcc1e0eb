"""Model families in one engine: how each is built, fed, trained and asked for predictions.

``dkan`` / ``dkan-improved`` / ``triplex`` share the DKAN network (method.md §3; TRIPLEX is DKAN
with text and contrastive parts off), ``nh2st`` is the hypergraph contrastive baseline.  Ridge
regression has no training loop and lives in :mod:`napari_dkan.engine.ridge`.

A :class:`SpotStore` holds the arrays of several sections as tensors on the training device,
concatenated, so a batch of spots from any sections is a plain index into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from napari_dkan.engine.data import Needs, SectionData
from napari_dkan.features.imagenet import IMAGENET_MEAN, IMAGENET_STD
from napari_dkan.model import DKAN, NH2ST, DKANConfig, NH2STConfig, SlideContext, SpotInputs
from napari_dkan.model.config import PatchInput
from napari_dkan.model.losses import dkan_loss

TORCH_FAMILIES = ("dkan", "dkan-improved", "triplex", "nh2st")
ALL_FAMILIES = (*TORCH_FAMILIES, "ridge")


class SpotStore:
    """Several sections' arrays as device tensors; spot ``g`` is row ``g`` of every array."""

    def __init__(self, sections: Sequence[SectionData], device: torch.device) -> None:
        if not sections:
            raise ValueError("no sections to train or evaluate on")
        self.sections = list(sections)
        self.device = device
        sizes = [len(s) for s in sections]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.section_of = np.repeat(np.arange(len(sections)), sizes)
        self.spot_of = np.concatenate([np.arange(n) for n in sizes])
        cat = lambda name: np.concatenate([getattr(s, name) for s in sections])  # noqa: E731
        to = lambda a, dtype=None: torch.as_tensor(a, dtype=dtype).to(device)  # noqa: E731
        self.patch_feat = to(cat("patch_feat"), torch.float32)
        self.region = to(cat("region"))  # float16 on the device, cast per batch
        self.region_mask = to(cat("region_mask"))
        self.tokens = to(cat("patch_tokens")) if sections[0].patch_tokens is not None else None
        self.patches = to(cat("patches")) if sections[0].patches is not None else None
        self.y = to(cat("y"), torch.float32) if all(s.y is not None for s in sections) else None
        if sections[0].neighbours is not None:
            nb = [s.neighbours + off for s, off in zip(sections, self.offsets[:-1])]
            self.neighbours = to(np.concatenate(nb))
        else:
            self.neighbours = None
        self.slides = [
            SlideContext(self.patch_feat[self.offsets[i] : self.offsets[i + 1]], to(s.positions))
            for i, s in enumerate(sections)
        ]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def section_rows(self, i: int) -> np.ndarray:
        return np.arange(self.offsets[i], self.offsets[i + 1])


@dataclass
class Dims:
    """Widths of the inputs, fixed by the data (recorded in the checkpoint config)."""

    n_genes: int
    frozen_dim: int
    token_dim: int | None = None
    text_dim: int | None = None


def _dihedral(x: Tensor, gen: torch.Generator, grid_dims: tuple[int, int]) -> Tensor:
    """Random horizontal flip, vertical flip and 90° rotation (each p = 0.5) per sample."""
    b = x.shape[0]
    draws = torch.rand(b, 3, generator=gen) < 0.5
    hd, wd = grid_dims
    out = x.clone()
    for i in range(b):
        xi = out[i]
        if draws[i, 0]:
            xi = xi.flip(wd)
        if draws[i, 1]:
            xi = xi.flip(hd)
        if draws[i, 2]:
            xi = xi.rot90(1, (hd, wd))
        out[i] = xi
    return out


class DKANFamily:
    """DKAN (faithful or improved alignment) and TRIPLEX."""

    def __init__(self, kind: str, cfg: DKANConfig) -> None:
        self.kind = kind
        self.cfg = cfg

    @property
    def needs(self) -> Needs:
        tokens = self.cfg.patch_input is PatchInput.TOKENS
        return Needs(patch_tokens=tokens, patches=not tokens)

    def build(self, dims: Dims) -> nn.Module:
        return DKAN(self.cfg, dims.n_genes, dims.frozen_dim, dims.token_dim,
                    dims.text_dim if self.cfg.use_text else None)

    def inputs(self, store: SpotStore, idx: Tensor, augment: torch.Generator | None) -> SpotInputs:
        i = idx.to(store.device)
        if self.cfg.patch_input is PatchInput.TOKENS:
            patch = store.tokens[i].float()  # B×49×D
            if augment is not None:  # the 7×7 token grid transformed as the image would be
                g = self.cfg.patch_grid
                grid = patch.view(len(i), g, g, -1)
                patch = _dihedral(grid, augment, (0, 1)).reshape(len(i), g * g, -1)
        else:
            img = store.patches[i].permute(0, 3, 1, 2).float() / 255.0
            if augment is not None:
                img = _dihedral(img, augment, (1, 2))
            mean = torch.tensor(IMAGENET_MEAN, device=img.device)[:, None, None]
            std = torch.tensor(IMAGENET_STD, device=img.device)[:, None, None]
            patch = (img - mean) / std
        sec = torch.as_tensor(store.section_of[idx.cpu().numpy()], device=store.device)
        spot = torch.as_tensor(store.spot_of[idx.cpu().numpy()], device=store.device)
        return SpotInputs(
            patch=patch, region=store.region[i].float(), region_mask=store.region_mask[i],
            slide_index=sec, spot_index=spot, slides=store.slides,
            y=None if store.y is None else store.y[i],
        )

    def loss(self, model: nn.Module, inputs: SpotInputs, gene_text: Tensor | None,
             contrastive_genes: int | None, gen: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        pick = None
        n_genes = inputs.y.shape[1]
        if self.cfg.use_contrastive and contrastive_genes is not None and contrastive_genes < n_genes:
            pick = torch.randperm(n_genes, generator=gen)[:contrastive_genes].to(inputs.y.device)
        out = model(inputs, gene_text, contrastive_genes=pick)
        terms = dkan_loss(out, inputs.y, self.cfg.alpha, self.cfg.tau, self.cfg.detach_distillation,
                          adaptive=self.cfg.adaptive_weights)
        logs = {"loss": float(terms.total.detach()), "supervised": terms.supervised}
        if terms.contrastive is not None:
            logs.update(contrastive=terms.contrastive, w_sup=terms.w_sup, w_cont=terms.w_cont)
        return terms.total, logs

    def predict(self, model: nn.Module, inputs: SpotInputs, gene_text: Tensor | None) -> Tensor:
        return model(inputs, gene_text).pred

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()


class NH2STFamily:
    def __init__(self, cfg: NH2STConfig) -> None:
        self.kind = "nh2st"
        self.cfg = cfg

    @property
    def needs(self) -> Needs:
        return Needs(neighbours=self.cfg.neighbours)

    def build(self, dims: Dims) -> nn.Module:
        return NH2ST(self.cfg, dims.n_genes, dims.frozen_dim)

    def inputs(self, store: SpotStore, idx: Tensor, augment: torch.Generator | None) -> dict[str, Tensor]:
        i = idx.to(store.device)
        nb = store.neighbours[i]  # B×9 global rows
        out = {"feat": store.patch_feat[i], "nb_feat": store.patch_feat[nb]}
        if store.y is not None:
            out.update(y=store.y[i], nb_y=store.y[nb])
        return out

    def loss(self, model: nn.Module, inputs: dict[str, Tensor], gene_text: Tensor | None,
             contrastive_genes: int | None, gen: torch.Generator | None) -> tuple[Tensor, dict[str, Any]]:
        out = model(**inputs)
        loss = model.loss(out, inputs["y"])
        logs = {"loss": float(loss.detach()), "mse": float(nn.functional.mse_loss(out.pred, inputs["y"]).detach())}
        return loss, logs

    def predict(self, model: nn.Module, inputs: dict[str, Tensor], gene_text: Tensor | None) -> Tensor:
        return model(inputs["feat"]).pred

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()


def make_family(kind: str, config: dict[str, Any] | DKANConfig | NH2STConfig) -> DKANFamily | NH2STFamily:
    """A family from its kind and network config (a dataclass or its JSON dict)."""
    if kind in ("dkan", "dkan-improved", "triplex"):
        cfg = config if isinstance(config, DKANConfig) else DKANConfig.from_dict(config)
        return DKANFamily(kind, cfg)
    if kind == "nh2st":
        cfg = config if isinstance(config, NH2STConfig) else NH2STConfig(**config)
        return NH2STFamily(cfg)
    raise ValueError(f"unknown model {kind!r}; available: {', '.join(ALL_FAMILIES)}")


@torch.no_grad()
def predict_store(family: DKANFamily | NH2STFamily, model: nn.Module, store: SpotStore,
                  gene_text: Tensor | None, batch_size: int = 256, cancel: Any = None,
                  progress: Any = None, rows: np.ndarray | None = None) -> np.ndarray:
    """Predictions for the spots ``rows`` of a store (default: all; N×G), in that order.

    Every spot sees the slide context of all spots of its section in the store.  The slide
    branch runs once per section for the whole call rather than once per batch: on a slide of
    10,000 spots it is a transformer over 10,000 tokens, which per batch would cost more than
    the batch itself.
    """
    from dataclasses import replace

    model.eval()
    out = []
    rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    slides = store.slides
    if hasattr(model, "slide_branch"):
        present = np.unique(store.section_of[rows]) if n else []
        store.slides = [replace(s, tokens=model.slide_branch(s)) if i in present else s
                        for i, s in enumerate(slides)]
    try:
        for a in range(0, n, batch_size):
            if cancel is not None and cancel.is_set():
                from napari_dkan.progress import Cancelled

                raise Cancelled("prediction cancelled")
            idx = torch.as_tensor(rows[a:a + batch_size])
            out.append(family.predict(model, family.inputs(store, idx, None), gene_text).float().cpu().numpy())
            if progress is not None:
                progress(min(a + batch_size, n), n)
    finally:
        store.slides = slides
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
