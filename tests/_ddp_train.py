"""Training cases shared by ``test_distributed.py`` and the processes torchrun starts for it.

Run as ``torchrun --standalone --nproc-per-node 2 tests/_ddp_train.py CASES.json``: every rank
joins the gloo group, runs each case in turn with the same arguments, and rank 0 writes what it
saw (per-step losses, history, status) to ``<case run_dir>/seen.json``.  A case ``{"cli": ARGS}``
runs ``napari-dkan ARGS`` instead (it leaves the process group when done, so it comes last).
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

HER2ST = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"


def train_case(case: dict[str, Any], on_event=None, cancel=None):  # noqa: ANN001, ANN201
    """Train one case (a dict: model, panel, train, val, epochs, batch_size, augment, run_dir)."""
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec, gene_text_for, prepare_sections, train_model
    from napari_dkan.engine.trainer import TrainSettings
    from napari_dkan.io import open_dataset

    settings = TrainSettings(epochs=case["epochs"], patience=10, lr=1e-3, batch_size=case["batch_size"],
                             contrastive_genes=8, device="cpu", augment=case["augment"])
    spec = RunSpec(model=case["model"], preset="tiny", features=FeatureSpec(encoder="tiny"), settings=settings)
    ds = open_dataset(Path(case.get("her2st", HER2ST)))
    names = [*case["train"], *case["val"]]
    data = prepare_sections([ds[n] for n in names], spec, case["panel"])
    text = gene_text_for(spec, case["panel"])
    return train_model(data, case["train"], case["val"], spec, case["panel"], Path(case["run_dir"]),
                       gene_text=text, on_event=on_event, cancel=cancel)


def _run(case: dict[str, Any], rank: int) -> None:
    losses: list[float] = []
    cancel = threading.Event()

    def on_event(event) -> None:  # noqa: ANN001
        if event.phase == "step":
            losses.append(event.loss)
            # a cancel request reaching one rank only must still stop every rank at one step
            if case.get("cancel_rank") == rank and (event.epoch, event.step) == tuple(case["cancel_at"]):
                cancel.set()

    model = train_case(case, on_event, cancel)
    if rank == 0:
        seen = {"losses": losses, "status": model.config["status"], "result": model.config["result"]}
        (Path(case["run_dir"]) / "seen.json").write_text(json.dumps(seen))


def main(path: str) -> None:
    from napari_dkan.engine import distributed

    ctx = distributed.init_from_env("cpu")
    try:
        for case in json.loads(Path(path).read_text()):
            if "cli" in case:
                from napari_dkan.cli import main as cli

                if cli(case["cli"]) != 0:
                    raise SystemExit(f"napari-dkan {' '.join(case['cli'])} failed")
            else:
                _run(case, ctx.rank)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
