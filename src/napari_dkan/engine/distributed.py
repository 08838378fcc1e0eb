"""Data-parallel training across processes: PyTorch's process group and DistributedDataParallel.

One process per GPU (NCCL) or per CPU worker (gloo), started by ``torchrun``.  The trainer asks
:func:`current` whether it runs in such a group; a single process is a group of one, so every
helper here is a no-op there and :func:`napari_dkan.engine.trainer.fit` behaves exactly as
before.

How a distributed epoch matches a single-process one (see :func:`rank_shard`): every rank draws
the same epoch permutation, pads it to a multiple of the world size by repeating its head (as
``torch.utils.data.DistributedSampler`` does) and takes every ``world``-th index from its rank
on.  Step *s* of every rank then covers, together, exactly the spots of step *s* of one process
whose batch is ``world × batch``; DDP averages the ranks' gradients, which equals the gradient
of that global batch for losses that are means over spots.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from napari_dkan.io.errors import DataError

#: what torchrun sets in each process it starts
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: seeds of rank r are offset by r × this, so ranks draw independent dropout / augmentation
#: while rank 0 keeps the single-process seeds
RANK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in its process group (a group of one when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None

    @property
    def active(self) -> bool:
        """More than one process trains: gradients, metrics and decisions must be shared."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates, writes checkpoints and reports."""
        return self.rank == 0


_CONTEXT = DistContext()


def current() -> DistContext:
    return _CONTEXT


def init(rank: int, world_size: int, device: str = "auto", init_method: str = "env://",
         local_rank: int | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join a process group; NCCL when this rank trains on a GPU, gloo otherwise.

    Each process of a node takes the GPU of its local rank, so ``torchrun --nproc-per-node N``
    on an N-GPU machine uses every GPU once.
    """
    global _CONTEXT
    import torch.distributed as dist

    from napari_dkan.devices import resolve_device

    local_rank = rank if local_rank is None else local_rank
    dev = resolve_device(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise DataError(
                f"process {rank} (local rank {local_rank}) has no GPU of its own: this node has "
                f"{count}; start at most {count} processes per node (torchrun --nproc-per-node {count})"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise DataError(f"distributed training runs on CUDA GPUs or CPUs, not on {dev.type}")
    if not dist.is_initialized():
        kw = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s), **kw)
    _CONTEXT = DistContext(rank, world_size, local_rank, dev, backend)
    return _CONTEXT


def init_from_env(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in this process's environment."""
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise DataError(
            f"--distributed needs the environment torchrun sets ({', '.join(missing)} missing); "
            "start the command with: torchrun --nproc-per-node N -m napari_dkan train ... --distributed"
        )
    return init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device,
                local_rank=int(os.environ["LOCAL_RANK"]))


def shutdown() -> None:
    """Leave the process group (every rank, at the end of the command)."""
    global _CONTEXT
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = DistContext()


def barrier() -> None:
    if _CONTEXT.active:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling on-disk caches), then the other ranks (reading them)."""
    if not _CONTEXT.is_main:
        barrier()
    yield
    if _CONTEXT.is_main:
        barrier()


def rank_shard(perm: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of an epoch permutation: padded by its head, every ``world``-th index.

    All ranks get the same number of spots, so they run the same number of steps and every
    step's per-rank batches are equally large (a mean of the ranks' mean losses is then the mean
    over the global batch).
    """
    if world_size == 1:
        return perm
    n = len(perm)
    total = -(-n // world_size) * world_size
    if total > n:
        reps = -(-(total - n) // n)
        perm = torch.cat([perm, perm.repeat(reps)[: total - n]])
    return perm[rank::world_size]


def _flags(values: list[float], ctx: DistContext) -> torch.Tensor:
    # NCCL only moves tensors that live on the rank's GPU
    return torch.tensor(values, dtype=torch.float64, device=ctx.device or "cpu")


def mean_over_ranks(value: float) -> float:
    """The mean of a number over the ranks (a step's loss: the loss of the global batch)."""
    ctx = _CONTEXT
    if not ctx.active:
        return value
    import torch.distributed as dist

    t = _flags([value], ctx)
    dist.all_reduce(t)
    return float(t[0]) / ctx.world_size


def broadcast_decision(val_pcc: float, improved: bool, stop: bool) -> tuple[float, bool, bool]:
    """Rank 0's validation score and early-stopping decision, for every rank."""
    ctx = _CONTEXT
    if not ctx.active:
        return val_pcc, improved, stop
    import torch.distributed as dist

    t = _flags([val_pcc, float(improved), float(stop)], ctx)
    dist.broadcast(t, src=0)
    return float(t[0]), bool(t[1]), bool(t[2])


def broadcast_digest(digest: str | None) -> str | None:
    """Rank 0's SHA-256 hex digest (of the best checkpoint), for every rank."""
    ctx = _CONTEXT
    if not ctx.active:
        return digest
    import torch.distributed as dist

    raw = (digest or "").encode().ljust(64, b"\0")
    t = torch.tensor(list(raw), dtype=torch.uint8, device=ctx.device or "cpu")
    dist.broadcast(t, src=0)
    text = bytes(t.cpu().tolist()).rstrip(b"\0").decode()
    return text or None


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any."""
    ctx = _CONTEXT
    if not ctx.active:
        return flag
    import torch.distributed as dist

    t = _flags([float(flag)], ctx)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0] > 0)


def unused_parameters(model: nn.Module, step: Callable[[], torch.Tensor]) -> list[str]:
    """Names of trainable parameters that one training step leaves without a gradient.

    DDP must know in advance whether some parameters get no gradient (it waits for every
    parameter's gradient before reducing); probing one step tells, instead of paying for
    ``find_unused_parameters=True`` on every step when nothing is unused.
    """
    # the probe must leave no trace: batch-norm running statistics are restored afterwards
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.zero_grad(set_to_none=True)
    step().backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
    return names


def prepare_module(net: nn.Module) -> nn.Module:
    """Batch norm statistics over the global batch on GPUs (a trainable patch CNN has BN)."""
    ctx = _CONTEXT
    if ctx.active and ctx.backend == "nccl" and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                    for m in net.modules()):
        # SyncBatchNorm keeps the BN parameters and buffers under the same names, so
        # checkpoints still load into the plain network.
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def wrap(net: nn.Module, find_unused: bool) -> nn.Module:
    """``net`` in DistributedDataParallel (weights are broadcast from rank 0 here)."""
    ctx = _CONTEXT
    if not ctx.active:
        return net
    from torch.nn.parallel import DistributedDataParallel

    class _Wrapped(DistributedDataParallel):
        """DDP that also answers the network's own methods (NH2ST's ``loss``), which use no
        parameters and so need no gradient synchronisation of their own."""

        def __getattr__(self, name: str):  # noqa: ANN204
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    if ctx.backend == "nccl":
        idx = ctx.device.index
        return _Wrapped(net, device_ids=[idx], output_device=idx, find_unused_parameters=find_unused)
    return _Wrapped(net, find_unused_parameters=find_unused)
