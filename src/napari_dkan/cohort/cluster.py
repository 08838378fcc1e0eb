"""The Dask cluster a cohort runs on: a local one by default, or any running scheduler.

Local GPUs get one worker process each, pinned through ``CUDA_VISIBLE_DEVICES`` set before the
worker process starts (so the worker sees exactly one GPU, as ``cuda``), and a ``GPU=1``
resource that tasks ask for, so each GPU runs one slide at a time.  Local CPU workers get one
Dask thread each and share the cores out as torch threads.

A remote scheduler (``dask scheduler``, dask-jobqueue, Kubernetes…) brings its own workers;
GPU workers there should be started one per GPU with ``--resources GPU=1`` (dask-jobqueue's
``job_extra_directives`` / ``worker_extra_args``), and tasks ask for that resource whenever the
connected workers advertise it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, LocalCluster

from napari_dkan.io.errors import DataError

#: how long a remote cluster may take to bring its first worker (batch queues are slow)
REMOTE_WORKER_WAIT_S = 600


class PinnedGPUCluster(LocalCluster):
    """A local cluster whose worker *i* sees only GPU ``devices[i % len(devices)]``."""

    def __init__(self, devices: list[str], n_workers: int, **kw: Any) -> None:
        self.devices = list(devices)
        super().__init__(n_workers=0, threads_per_worker=1, processes=True, **kw)
        self.scale(n_workers)

    def new_worker_spec(self) -> dict[Any, dict[str, Any]]:
        ((name, spec),) = super().new_worker_spec().items()
        options = dict(spec["options"])
        # set in the nanny, so a worker it restarts after a crash is pinned to the same GPU
        options["env"] = {**options.get("env", {}), "CUDA_VISIBLE_DEVICES": self.devices[int(name) % len(self.devices)]}
        options["resources"] = {"GPU": 1}
        return {name: {**spec, "options": options}}


@dataclass
class CohortCluster:
    """A client, the local cluster behind it (None for a remote scheduler), and how to submit."""

    client: Client
    cluster: LocalCluster | None = None
    resources: dict[str, float] | None = None  # what each task asks of its worker
    device: str = "auto"  # what each task predicts on
    cpu_threads: int | None = None  # torch threads per local CPU worker
    description: str = ""
    owned: bool = field(default=True, repr=False)

    def close(self) -> None:
        if not self.owned:
            return
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> CohortCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as values for ``CUDA_VISIBLE_DEVICES``."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def local_cluster(workers: int | None = None, device: str = "auto") -> CohortCluster:
    """A local cluster: one worker per GPU when predicting on GPUs, else CPU workers."""
    from napari_dkan.devices import resolve_device

    if workers is not None and workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    # the scheduler serves HTTP (metrics) even without a dashboard: on a free port, not 8787
    # and silent: a slide's failure is reported in the summary, not as Dask's log and traceback
    quiet = {"dashboard_address": ":0", "silence_logs": logging.CRITICAL}
    kind = resolve_device(device).type
    if kind == "cuda":
        gpus = visible_gpus()
        n = workers or len(gpus)
        cluster: LocalCluster = PinnedGPUCluster(gpus, n, memory_limit=_memory_per_worker(n), **quiet)
        client = Client(cluster)
        client.wait_for_workers(n)
        return CohortCluster(client, cluster, {"GPU": 1}, "cuda", None,
                             f"local cluster: {n} GPU worker(s) on GPU(s) {', '.join(gpus)}")
    if kind != "cpu":
        raise DataError(f"cohort prediction runs on CUDA GPUs or CPUs, not on {kind}")
    cores = os.cpu_count() or 1
    n = workers or max(1, cores // 2)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           memory_limit=_memory_per_worker(n), **quiet)
    client = Client(cluster)
    client.wait_for_workers(n)
    return CohortCluster(client, cluster, None, "cpu", max(1, cores // n),
                         f"local cluster: {n} CPU worker(s), {max(1, cores // n)} torch thread(s) each")


def remote_cluster(address: str, device: str = "auto", wait_s: float = REMOTE_WORKER_WAIT_S) -> CohortCluster:
    """A client of a running scheduler; waits for its first worker."""
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise DataError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    try:
        client.wait_for_workers(1, timeout=wait_s)
    except TimeoutError as exc:
        client.close()
        raise DataError(f"the Dask scheduler at {address} has had no worker for {wait_s:.0f} s") from exc
    return from_client(client, device, owned=True, description=f"scheduler {address}")


def from_client(client: Client, device: str = "auto", owned: bool = False,
                description: str = "") -> CohortCluster:
    """Submission settings for an existing client: ask for ``GPU`` when workers offer it."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    gpu = any("GPU" in (w.get("resources") or {}) for w in workers)
    return CohortCluster(client, None, {"GPU": 1} if gpu else None, device, None,
                         description or f"scheduler {client.scheduler.address}", owned=owned)


def _memory_per_worker(n: int) -> int:
    """The machine's memory split between ``n`` workers (Dask's default would split it by
    threads, leaving a one-thread GPU worker a sliver of a many-core machine's memory)."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT // max(n, 1))
