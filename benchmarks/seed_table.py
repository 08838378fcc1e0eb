"""The seed table of benchmarks/README.md: each trained row as the mean over seeds, with min–max.

Reads kept cross-validation folders named ``ROOT/cv-<model>-s<seed>`` (``napari-dkan cv ... -o``,
each with its ``cv.json``), builds for each seed the equal-weight ensemble of the models given
with ``--ensemble`` (``ROOT/cv-ensemble-s<seed>``: ``napari-dkan ensemble --cv``, scored on each
fold's held-out section; built once, reused after), and prints, per row and per fold, PCC-ALL as
the mean over the seeds found [min–max], plus the collapse diagnostic and, per seed, on how many
folds a row beats the reference row (TRIPLEX by default) of the same seed.  Seedless rows (ridge)
come from ``ROOT/cv-ridge-colour`` / ``cv-ridge-effnet`` when present.

    python benchmarks/seed_table.py /work/exp/cv --seeds 1 2 2021 --models dkan-improved triplex \\
        --ensemble dkan-improved triplex --data ../shared/data/her2st
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_DKAN_SHARED", ROOT.parent / "shared")) / "data"
FOLDS = ["B4", "C2", "C3", "C4", "C5"]
ANCHORS = {"ridge, six colour statistics": "cv-ridge-colour", "ridge, EfficientNet-Lite0 features": "cv-ridge-effnet"}


def read_cv(path: Path) -> dict | None:
    """Per-fold PCC-ALL and the mean collapse figures of a finished cross-validation, or None."""
    f = path / "cv.json"
    if not f.is_file():
        return None
    cv = json.loads(f.read_text())
    folds = {r["fold"]: r for r in cv["folds"]}
    if sorted(folds) != FOLDS:
        return None
    return {"pcc": {k: folds[k]["PCC-ALL"] for k in FOLDS}, "mean": cv["mean"]}


def span(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} [{min(values):.3f}–{max(values):.3f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--seeds", nargs="+", default=["1", "2", "2021"])
    ap.add_argument("--models", nargs="+", default=["dkan-improved", "triplex"])
    ap.add_argument("--ensemble", nargs="*", default=["dkan-improved", "triplex"])
    ap.add_argument("--reference", default="triplex", help="the row others are counted against, fold by fold")
    ap.add_argument("--data", type=Path, default=DATA / "her2st")
    args = ap.parse_args(argv)

    rows: dict[str, dict[str, dict]] = {}
    for label, name in ANCHORS.items():
        got = read_cv(args.root / name)
        if got:
            rows[label] = {"-": got}
    for model in args.models:
        rows[model] = {s: got for s in args.seeds if (got := read_cv(args.root / f"cv-{model}-s{s}"))}
    if args.ensemble:
        label = " + ".join(args.ensemble) + " (equal weights)"
        rows[label] = {}
        for s in args.seeds:
            out = args.root / f"cv-ensemble-s{s}"
            parts = [args.root / f"cv-{m}-s{s}" for m in args.ensemble]
            if not all(read_cv(p) for p in parts):
                continue
            if read_cv(out) is None:
                import shutil

                import torch

                from napari_dkan.engine.cv import score_kept_folds
                from napari_dkan.engine.ensemble import ensemble_cv
                from napari_dkan.io import open_dataset

                torch.set_num_threads(1)
                shutil.rmtree(out, ignore_errors=True)
                ensemble_cv(parts, out, name=label)
                score_kept_folds(out, open_dataset(args.data), device="cpu")
            rows[label][s] = read_cv(out)

    ref = rows.get(args.reference, {})
    print("| row | seeds | PCC-ALL, mean of the 5 folds | " + " | ".join(FOLDS)
          + " | GENE-R pred / measured | PCS90 pred / measured | folds above "
          + args.reference + ", per seed |")
    print("|---|---|---|" + "---|" * len(FOLDS) + "---|---|---|")
    for label, by_seed in rows.items():
        if not by_seed:
            continue
        seeds = sorted(by_seed, key=lambda s: (s == "-", int(s) if s.isdigit() else 0))
        means = [float(np.mean(list(by_seed[s]["pcc"].values()))) for s in seeds]
        cells = [span([by_seed[s]["pcc"][f] for s in seeds]) for f in FOLDS]
        gr = np.mean([by_seed[s]["mean"].get("GENE-R-PRED", np.nan) for s in seeds])
        gt = np.mean([by_seed[s]["mean"].get("GENE-R-TRUE", np.nan) for s in seeds])
        pp = np.mean([by_seed[s]["mean"].get("PCS90-PRED", np.nan) for s in seeds])
        pt = np.mean([by_seed[s]["mean"].get("PCS90-TRUE", np.nan) for s in seeds])
        wins = []
        for s in seeds:
            other = ref.get(s) or (ref.get(seeds[0]) if s == "-" else None)
            if label == args.reference or other is None:
                continue
            wins.append(f"{s}: {sum(by_seed[s]['pcc'][f] > other['pcc'][f] for f in FOLDS)}/5")
        print(f"| {label} | {', '.join(seeds)} | {span(means)} | " + " | ".join(cells)
              + f" | {gr:.2f} / {gt:.2f} | {pp:.1f} / {pt:.1f} | {'; '.join(wins) or '–'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
