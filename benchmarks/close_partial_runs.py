"""Make the best checkpoint of unfinished fold runs loadable, saying that they were stopped.

A fold run that is still training has ``model.safetensors`` (its best epoch so far on the inner
validation) and ``state.json``, but its ``config.json`` names no finished checkpoint, so it
cannot be loaded.  When a session must end before its runs do (issue 13: CPU-bound), this
writes into each unfinished run's ``config.json`` the status ``stopped at epoch N of M``, the
best checkpoint's digest and the training history from ``state.json`` — checkpoint selection
stays the inner validation's.  The runs stay resumable: the same ``napari-dkan cv ... -o``
command continues from ``state.json`` and rewrites ``config.json`` when it finishes.

    python benchmarks/close_partial_runs.py /work/exp/i13/cv-dkan-improved-e40-s2021
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def close(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    if config.get("status") != "training":
        return f"{run.name}: {config.get('status')}, left as it is"
    state = json.loads((run / "state.json").read_text())
    if not state.get("best_sha256"):
        return f"{run.name}: no epoch finished yet, nothing to close"
    epochs = config["training"]["epochs"]
    config.update(status=f"stopped at epoch {state['epoch']} of {epochs} (session ended; resumable)",
                  files={"model.safetensors": state["best_sha256"]},
                  result={"epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
                          "best_val_pcc": state["best_val_pcc"], "resumed_from": 0,
                          "history": state["history"]})
    tmp = run / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(run / "config.json")
    return f"{run.name}: stopped at epoch {state['epoch']}/{epochs}, best epoch {state['best_epoch']}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cv_dirs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    for d in args.cv_dirs:
        for run in sorted(d.glob("fold-*")):
            if (run / "config.json").is_file():
                print(close(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
