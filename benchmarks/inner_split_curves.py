"""Validation curves on one fold's training sections only (the diagnosis in benchmarks/README.md).

Trains on B4, C2 and C4 and validates on C5 — fold C3's inner split, so C3 (the test section)
is never touched — for a fixed number of epochs without early stopping, and prints one JSON
object with the validation PCC and training loss of every epoch.

    python benchmarks/inner_split_curves.py dkan [--epochs 80]
    python benchmarks/inner_split_curves.py dkan-nocont      # DKAN without the InfoNCE path
    python benchmarks/inner_split_curves.py triplex
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_DKAN_SHARED", ROOT.parent / "shared")) / "data"
VARIANTS = {
    "dkan": ("dkan", {}),
    "dkan-improved": ("dkan-improved", {}),
    "triplex": ("triplex", {}),
    "dkan-nocont": ("dkan", {"use_contrastive": False}),
    "dkan-fixedw": ("dkan", {"adaptive_weights": False}),
    "dkan-detach": ("dkan", {"detach_distillation": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--out", type=Path, help="run directory (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from napari_dkan.engine.cv import dataset_panel
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec, gene_text_for, prepare_sections, train_model
    from napari_dkan.io import open_dataset

    torch.set_num_threads(1)
    ds = open_dataset(DATA / "her2st")
    panel = dataset_panel(ds)
    model, overrides = VARIANTS[args.variant]
    spec = RunSpec.for_preset(model, "compact", features=FeatureSpec(encoder="efficientnet-lite0-imagenet"),
                              network_overrides=overrides)
    spec.settings.epochs, spec.settings.patience = args.epochs, 10**6
    data = prepare_sections([ds[n] for n in ("B4", "C2", "C4", "C5")], spec, panel)
    out = args.out or Path(tempfile.mkdtemp(prefix="inner-split-")) / args.variant
    t0 = time.time()
    trained = train_model(data, ["B4", "C2", "C4"], ["C5"], spec, panel, out, gene_text=gene_text_for(spec, panel))
    history = trained.config["result"]["history"]
    print(json.dumps({"variant": args.variant, "seconds": round(time.time() - t0),
                      "val_pcc": [round(r["val_pcc"], 4) for r in history],
                      "train_loss": [round(r["train_loss"], 4) for r in history]}))


if __name__ == "__main__":
    main()
