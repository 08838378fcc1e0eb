"""Read tiles on worker threads while the encoder runs: the loop that keeps a GPU busy.

Worker threads fill whole batches of uint8 tiles (slide reads release the GIL: OpenSlide's C
library and numpy copies of decoded images both do) and hand them over in order; the main thread
copies each batch to the device and encodes it.  On CUDA the batches live in a small pool of
pinned (page-locked) host buffers, so the host-to-device copy is asynchronous and needs no extra
staging copy; normalisation happens on the device, so the threads only move bytes.

Between batches the loop checks the cancel token and reports progress.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_dkan.progress import CancelToken, ProgressCallback, check_cancel, report

if TYPE_CHECKING:
    import torch

    from napari_dkan.features.encoders import Encoder

#: read one tile (tile_px × tile_px × 3 uint8) by its index
TileReader = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class EncodeStats:
    tiles: int
    batches: int
    batch_size: int
    seconds: float
    #: time the encoder sat waiting for tiles: large means reading is the bottleneck
    read_wait_s: float
    encode_s: float


@dataclass
class EncodedTiles:
    pooled: np.ndarray  # (n, D) float32
    tokens: np.ndarray | None  # (n, 49, D) float16
    stats: EncodeStats


def read_batches(
    read_tile: TileReader,
    n: int,
    tile_px: int,
    batch_size: int,
    num_workers: int,
    pin: bool = False,
    cancel: CancelToken | None = None,
) -> _BatchStream:
    """Batches of tiles ``[i0, i1)`` as (i0, uint8 tensor B×H×W×3, release) in order."""
    return _BatchStream(read_tile, n, tile_px, batch_size, num_workers, pin, cancel)


class _BatchStream:
    def __init__(self, read_tile: TileReader, n: int, tile_px: int, batch_size: int,
                 num_workers: int, pin: bool, cancel: CancelToken | None) -> None:
        self._read, self._n, self._px, self._bs = read_tile, n, tile_px, max(1, batch_size)
        self._workers = max(0, num_workers)
        self._cancel = cancel
        # Enough batches in flight to cover a slow read, and one more buffer for the batch being
        # encoded, so a worker never waits on a buffer the main thread still holds.
        self._depth = max(1, 2 * self._workers)
        self._free: queue.Queue = queue.Queue()
        self._pin = pin
        self._buffers = 0
        self._lock = threading.Lock()
        self.wait_s = 0.0

    def _buffer(self) -> torch.Tensor:
        import torch

        try:
            return self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._buffers < self._depth + 1
                self._buffers += int(grow)
            if grow:
                buf = torch.empty((self._bs, self._px, self._px, 3), dtype=torch.uint8)
                return buf.pin_memory() if self._pin else buf
            return self._free.get()

    def _fill(self, i0: int) -> tuple[int, torch.Tensor, int]:
        check_cancel(self._cancel, "tile reading")
        i1 = min(i0 + self._bs, self._n)
        buf = self._buffer()
        view = buf.numpy()
        for i in range(i0, i1):
            view[i - i0] = self._read(i)
        return i0, buf, i1 - i0

    def release(self, buf: torch.Tensor) -> None:
        self._free.put(buf)

    def __iter__(self):  # noqa: ANN204 - a generator of (i0, tiles, count)
        starts = range(0, self._n, self._bs)
        if self._workers == 0:
            for i0 in starts:
                t = time.perf_counter()
                item = self._fill(i0)
                self.wait_s += time.perf_counter() - t
                yield item
            return
        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="napari-dkan-tiles")
        pending: deque[Future] = deque()
        it = iter(starts)
        try:
            for i0 in it:
                pending.append(pool.submit(self._fill, i0))
                if len(pending) >= self._depth:
                    break
            while pending:
                t = time.perf_counter()
                item = pending.popleft().result()
                self.wait_s += time.perf_counter() - t
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._fill, nxt))
                yield item
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def encode_tiles(
    encoder: Encoder,
    read_tile: TileReader,
    n: int,
    tile_px: int,
    *,
    tokens: bool = False,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> EncodedTiles:
    """Encode ``n`` tiles read by ``read_tile`` with ``encoder`` (on its device)."""
    import torch

    device = encoder.device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed tile size: let cuDNN pick its fastest kernels
    total = progress_total if progress_total is not None else n
    pooled = np.zeros((n, encoder.width), np.float32)
    grid = np.zeros((n, 49, encoder.width), np.float16) if tokens else None
    stream = read_batches(read_tile, n, tile_px, batch_size, num_workers, pin=cuda, cancel=cancel)
    t0 = time.perf_counter()
    encode_s, batches = 0.0, 0
    batches_in_order = iter(stream)
    try:
        for i0, buf, count in batches_in_order:
            check_cancel(cancel, "feature extraction")
            t = time.perf_counter()
            tiles = buf[:count].to(device, non_blocking=cuda)
            p, g = encoder.encode(tiles, tokens=tokens)
            pooled[i0 : i0 + count] = p.cpu().numpy()  # waits for the GPU: the buffer is free after
            if grid is not None and g is not None:
                grid[i0 : i0 + count] = g.cpu().numpy()
            stream.release(buf)
            encode_s += time.perf_counter() - t
            batches += 1
            report(progress, progress_offset + i0 + count, total)
    finally:
        batches_in_order.close()  # stops the reading threads at once on an error or a cancel
    check_cancel(cancel, "feature extraction")
    stats = EncodeStats(
        tiles=n,
        batches=batches,
        batch_size=batch_size,
        seconds=time.perf_counter() - t0,
        read_wait_s=stream.wait_s,
        encode_s=encode_s,
    )
    return EncodedTiles(pooled, grid, stats)
