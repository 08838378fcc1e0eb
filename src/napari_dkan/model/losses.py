"""DKAN's losses (method.md §5): supervised with distillation, chunked InfoNCE, adaptive weights.

InfoNCE over (spot, gene) tokens makes a (B·G)×(B·G) logit matrix — 32,000² at B = 128,
G = 250, i.e. 4 GB in fp32 and as much again for its gradient.  :func:`info_nce` never holds
it: the forward pass walks row blocks keeping only each row's log-sum-exp, and the backward pass
recomputes one block at a time (a flash-attention-style kernel in plain PyTorch), so memory is
O(chunk · B·G) whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def supervised_loss(pred: Tensor, aux: list[Tensor], y: Tensor, alpha: float = 0.3,
                    detach_target: bool = False) -> Tensor:
    """``MSE(ŷ, y) + Σ_k [(1−α)·MSE(ŷ_k, y) + α·MSE(ŷ_k, ŷ)]``.

    The reference code does not detach ŷ in the distillation term (the heads also pull the
    main prediction towards them); ``detach_target=True`` makes it a pure teacher.
    """
    teacher = pred.detach() if detach_target else pred
    loss = F.mse_loss(pred, y)
    for a in aux:
        loss = loss + (1 - alpha) * F.mse_loss(a, y) + alpha * F.mse_loss(a, teacher)
    return loss


class _ChunkedInfoNCE(torch.autograd.Function):
    """Mean cross-entropy of ``(q @ k.T) / tau`` against the diagonal, row block by row block.

    ``q`` and ``k`` are M×d and already L2-normalised.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, tau: float, chunk: int) -> Tensor:  # noqa: ANN001
        m = q.shape[0]
        lse = torch.empty(m, dtype=torch.float32, device=q.device)
        diag = (q.float() * k.float()).sum(dim=1) / tau
        kt = k.float().T
        for a in range(0, m, chunk):
            logits = (q[a : a + chunk].float() @ kt) / tau
            lse[a : a + chunk] = torch.logsumexp(logits, dim=1)
        ctx.save_for_backward(q, k, lse)
        ctx.tau, ctx.chunk = tau, chunk
        return (lse - diag).mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001, ANN205
        q, k, lse = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        m = q.shape[0]
        qf, kf = q.float(), k.float()
        grad_q = torch.zeros_like(qf)
        grad_k = torch.zeros_like(kf)
        scale = grad_out.float() / (m * tau)
        for a in range(0, m, chunk):
            b = min(a + chunk, m)
            probs = torch.exp((qf[a:b] @ kf.T) / tau - lse[a:b, None])  # softmax rows
            probs[torch.arange(b - a, device=q.device), torch.arange(a, b, device=q.device)] -= 1.0
            probs *= scale
            grad_q[a:b] = probs @ kf
            grad_k += probs.T @ qf[a:b]
        return grad_q.to(q.dtype), grad_k.to(k.dtype), None, None


def info_nce(image_tokens: Tensor, expr_tokens: Tensor, tau: float, chunk: int = 2048) -> Tensor:
    """InfoNCE image → expression over flattened (spot, gene) tokens (B×G×d each).

    A positive is the same spot and the same gene; every other pair in the batch is a negative.
    """
    q = F.normalize(image_tokens.reshape(-1, image_tokens.shape[-1]), dim=-1)
    k = F.normalize(expr_tokens.reshape(-1, expr_tokens.shape[-1]), dim=-1)
    return _ChunkedInfoNCE.apply(q, k, float(tau), int(chunk))


def info_nce_reference(image_tokens: Tensor, expr_tokens: Tensor, tau: float) -> Tensor:
    """The plain computation (whole logit matrix); for tests and small batches."""
    q = F.normalize(image_tokens.reshape(-1, image_tokens.shape[-1]), dim=-1)
    k = F.normalize(expr_tokens.reshape(-1, expr_tokens.shape[-1]), dim=-1)
    logits = q @ k.T / tau
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def adaptive_weights(sup: Tensor | float, cont: Tensor | float) -> tuple[float, float]:
    """``w_sup = C/(C+3S)``, ``w_cont = 3S/(C+3S)`` from detached losses; both 1 if either ≤ 0.

    Inverse-loss weights with the contrastive one tripled, renormalised: the larger loss gets
    the smaller weight, so neither term swamps the other.
    """
    s = float(sup.detach()) if isinstance(sup, Tensor) else float(sup)
    c = float(cont.detach()) if isinstance(cont, Tensor) else float(cont)
    if s <= 0 or c <= 0:
        return 1.0, 1.0
    return c / (c + 3 * s), 3 * s / (c + 3 * s)


def _data_parallel() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _across_ranks(x: Tensor) -> Tensor:
    """``x`` of every data-parallel rank stacked along the batch (with gradient); ``x`` alone
    outside data parallelism.  Ranks hold equal batches (the engine's sharding pads them)."""
    if not _data_parallel():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def _rank_mean(x: Tensor) -> float:
    """The mean of a detached scalar over ranks (the global batch's loss, for the weights)."""
    value = x.detach().float().reshape(1).clone()
    if _data_parallel():
        import torch.distributed as dist

        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


@dataclass
class LossTerms:
    total: Tensor
    supervised: float
    contrastive: float | None
    w_sup: float
    w_cont: float


def dkan_loss(out, y: Tensor, alpha: float, tau: float, detach_distillation: bool = False,  # noqa: ANN001
              adaptive: bool = True) -> LossTerms:
    """The full DKAN objective for one batch; ``out`` is a ``ModelOutput``.

    InfoNCE runs over the genes the model's expression path was given (all genes, as the paper,
    unless the caller drew a subset: the compact preset draws a few per step to keep CPU steps
    short).
    """
    sup = supervised_loss(out.pred, out.aux, y, alpha=alpha, detach_target=detach_distillation)
    if out.e_te is None or out.e_ti is None:
        return LossTerms(sup, float(sup.detach()), None, 1.0, 0.0)
    e_ti = out.e_ti if out.contrastive_genes is None else out.e_ti[:, out.contrastive_genes]
    # Under data parallelism every rank scores the global batch, so its negatives are those of
    # one process with the global batch (the gather passes gradients back to each rank's part).
    cont = info_nce(_across_ranks(e_ti), _across_ranks(out.e_te), tau)
    w_sup, w_cont = adaptive_weights(_rank_mean(sup), cont) if adaptive else (1.0, 1.0)
    total = w_sup * sup + w_cont * cont
    return LossTerms(total, float(sup.detach()), float(cont.detach()), w_sup, w_cont)
