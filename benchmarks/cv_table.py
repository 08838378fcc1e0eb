"""Score kept cross-validation runs after the fact: one model, or an ensemble of several.

Every ``napari-dkan cv ... -o DIR`` keeps one run folder per fold (``DIR/fold-B4/`` …).  This
script loads, for each fold, the fold model of every DIR given, predicts the fold's test
section, averages the predictions when several DIRs are given (an ensemble: seeds, or
different model families, weighted equally), and scores them with the paper's metrics plus
the gene-collapse diagnostic — the rows of the ablation table in benchmarks/README.md.  Only
test predictions of models already selected on their inner validation are used: nothing is
chosen here.

    python benchmarks/cv_table.py /work/exp/i13/cv-dkan-improved-s2021 --name dkan-improved
    python benchmarks/cv_table.py DIR_A DIR_B --name "A+B ensemble" --json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_DKAN_SHARED", ROOT.parent / "shared")) / "data"
SECTIONS = ["B4", "C2", "C3", "C4", "C5"]


def fold_cost(run: Path) -> dict:
    """Training facts of one fold run: epochs, best epoch, summed epoch seconds, weight bytes."""
    cfg = json.loads((run / "config.json").read_text())
    res = cfg.get("result", {})
    hist = res.get("history") or []
    return {"best_epoch": res.get("best_epoch"), "epochs_run": res.get("epochs_run"),
            "train_s": float(sum(h.get("seconds", 0.0) for h in hist if isinstance(h, dict))),
            "bytes": (run / "model.safetensors").stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="cv output folders (one per ensemble member)")
    ap.add_argument("--name", default=None)
    ap.add_argument("--data", type=Path, default=DATA / "her2st")
    ap.add_argument("--sections", nargs="+", default=SECTIONS)
    ap.add_argument("--weights", nargs="+", type=float, help="ensemble weights (default equal)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print the two README table rows")
    args = ap.parse_args(argv)

    import torch

    from napari_dkan.engine.cv import score_sections
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.engine.splits import make_folds
    from napari_dkan.io import open_dataset

    torch.set_num_threads(1)
    ds = open_dataset(args.data)
    folds = make_folds(args.sections, {n: ds[n].patient for n in args.sections}, "sections")
    folds = [f for f in folds if all((r / f"fold-{f.name}" / "model.safetensors").is_file() for r in args.runs)]
    if not folds:
        raise SystemExit("no fold is finished in every run given")
    weights = np.asarray(args.weights or [1.0] * len(args.runs), dtype=np.float64)
    weights = weights / weights.sum()
    predictions, data, costs = {}, {}, []
    panel = None
    for fold in folds:
        name = fold.test[0]
        acc = None
        fold_costs = []
        for w, run in zip(weights, args.runs):
            model = TrainedModel.load(run / f"fold-{fold.name}")
            if panel is None:
                panel = model.panel
            elif model.panel != panel:
                raise SystemExit(f"{run} has another gene panel")
            sec = model.section_data(ds[name], with_targets=True, device="cpu")
            data.setdefault(name, sec)
            pred = model.predict(sec, device="cpu").astype(np.float64)
            acc = w * pred if acc is None else acc + w * pred
            fold_costs.append(fold_cost(run / f"fold-{fold.name}"))
        predictions[name] = acc.astype(np.float32)
        costs.append(fold_costs)
    rep = score_sections(predictions, data, folds, panel)
    out = {"name": args.name or " + ".join(r.name for r in args.runs), "runs": [str(r) for r in args.runs],
           "weights": weights.tolist(), **rep.to_dict(),
           "best_epochs": [[c["best_epoch"] for c in fc] for fc in costs],
           "epochs_run": [[c["epochs_run"] for c in fc] for fc in costs],
           "train_s": float(sum(c["train_s"] for fc in costs for c in fc)),
           "model_mb": float(sum(c["bytes"] for c in costs[0]) / 1e6)}
    del out["gene_sets"]
    if args.json:
        print(json.dumps(out))
    elif args.markdown:
        print(markdown_rows(out))
    else:
        keys = ("PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG")
        print(out["name"])
        for row in rep.folds:
            print(f"  {row['fold']:<4}" + "".join(f" {k} {row[k]:.3f}" for k in keys)
                  + f"  GENE-R {row['GENE-R-PRED']:.2f}/{row['GENE-R-TRUE']:.2f}"
                  f"  PCS90 {row['PCS90-PRED']:.0f}/{row['PCS90-TRUE']:.0f}")
        print("  mean" + "".join(f" {k} {rep.mean[k]:.3f}±{rep.std[k]:.3f}" for k in keys)
              + f"  GENE-R {rep.mean['GENE-R-PRED']:.2f}/{rep.mean['GENE-R-TRUE']:.2f}"
              f"  PCS90 {rep.mean['PCS90-PRED']:.1f}/{rep.mean['PCS90-TRUE']:.1f}")
        print(f"  training {out['train_s'] / 60:.1f} min (summed epoch seconds), "
              f"{out['model_mb']:.1f} MB per fold model set")
    return 0


def markdown_rows(out: dict) -> str:
    """Row of the summary table (means ± std, collapse, size, time) and of the per-fold table."""
    m, sd = out["mean"], out["std"]
    cells = [f"{m[k]:.3f} ± {sd[k]:.3f}" for k in ("PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG")]
    summary = (f"| {out['name']} | " + " | ".join(cells)
               + f" | {m['GENE-R-PRED']:.2f} / {m['GENE-R-TRUE']:.2f} | {m['PCS90-PRED']:.1f} / {m['PCS90-TRUE']:.1f}"
               + f" | {out['model_mb']:.1f} | {out['train_s'] / 60:.0f} |")
    per_fold = f"| {out['name']} | " + " | ".join(
        f"{f['PCC-ALL']:.3f} / {f['PCC-HPG']:.3f} / {f['PCC-HEG']:.3f} / {f['PCC-HVG']:.3f}" for f in out["folds"]) + " |"
    return summary + "\n" + per_fold


if __name__ == "__main__":
    raise SystemExit(main())
