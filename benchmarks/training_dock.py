"""The training dock under load: GUI-thread stalls while it fine-tunes, and memory given back after.

Opens HER2ST C2 in napari, fine-tunes a model through the training dock (validation on C3)
while a QTimer asks to fire every ``--interval-ms`` on the GUI thread, and prints one JSON
object: the longest stall and p99 gap during training (see ``gui_stall.py``), the epochs run,
and the memory before, at the peak of and after training — on CUDA the bytes allocated by
PyTorch and the driver's free memory (what ``nvidia-smi`` shows), on any machine the process's
resident memory.

    xvfb-run -a python benchmarks/training_dock.py [--base tiny|bundled|RUN_DIR] [--epochs 3] [--device cuda]

``--base tiny`` (default) trains the tests' tiny DKAN first (random ``tiny`` encoder);
``bundled`` fine-tunes the shipped compact model (EfficientNet-Lite0 features of C2 and C3 are
extracted first, into a temporary cache).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gui_stall import DATA, measure, train_tiny  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cuda() -> dict | None:
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    free, total = torch.cuda.mem_get_info()
    return {"allocated_mb": round(torch.cuda.memory_allocated() / 2**20, 1),
            "reserved_mb": round(torch.cuda.memory_reserved() / 2**20, 1),
            "driver_used_mb": round((total - free) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="tiny", help="tiny (default), bundled, or a run directory")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--interval-ms", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=3000.0)
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        raise SystemExit("needs a display: run under xvfb-run -a")

    work = Path(tempfile.mkdtemp(prefix="training-dock-"))
    os.environ["NAPARI_DKAN_CACHE"] = str(work / "cache")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.init()
    from napari_dkan._widgets.training_plan import BaseChoice

    base = args.base
    if base == "tiny":
        base = str(train_tiny(work))

    import napari

    from napari_dkan._widgets.recent_models import RecentModels
    from napari_dkan._widgets.training_dock import TrainingDock
    from napari_dkan.demo import wait_for

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    viewer.open(str(DATA / "her2st" / "ST-imgs" / "C" / "C2"), plugin="napari-dkan")
    dock = TrainingDock(viewer, registry=RecentModels(), runs_root=work / "runs")
    viewer.window.add_dock_widget(dock, name="training")
    wait_for(lambda: not dock.busy and dock.form.section.currentData() == "C2", 300)
    form = dock.form
    form.choose(form.validation, "C3")
    if base == "bundled":
        form.set_base(BaseChoice.BUNDLED)
    else:
        form.set_base(BaseChoice.RUN, base)
    wait_for(lambda: not dock.busy, 600)
    form.epochs.setValue(args.epochs)
    form.device.setCurrentText(args.device)
    form.output.edit.setText(str(work / "out"))

    before = {"rss_mb": round(_rss_mb(), 1), "cuda": _cuda()}
    peak = {"cuda_allocated_mb": 0.0}

    def track() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak["cuda_allocated_mb"] = max(peak["cuda_allocated_mb"], torch.cuda.max_memory_allocated() / 2**20)

    dock.runner.progress.valueChanged.connect(lambda _: track())
    stall = measure(dock.train, lambda: dock.busy, args.interval_ms, args.timeout, dock.status.text)
    track()
    outcome = dock.outcome
    if outcome is None:
        raise SystemExit(f"training did not end with a model: {dock.status.text()}")
    after = {"rss_mb": round(_rss_mb(), 1), "cuda": _cuda(),
             "gpu_bytes_after_release": outcome.gpu_bytes_after}
    result = {"base": args.base, "device": args.device, "epochs_run": outcome.epochs_run,
              "status": outcome.status, "best_val_pcc": outcome.best_val_pcc,
              "base_val_pcc": outcome.base_val_pcc, "training": stall, "memory_before": before,
              "memory_peak": {"cuda_allocated_mb": round(peak["cuda_allocated_mb"], 1),
                              "rss_max_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
              "memory_after": after}
    viewer.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
