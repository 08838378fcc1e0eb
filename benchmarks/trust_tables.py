"""Both trust tables of benchmarks/README.md from a leave-one-section-out CV folder.

For every fold folder ``CV/fold-<S>`` (its config names the training and inner-validation
sections): the fold model's trust files are attached after the fact (calibration on its
inner-validation section only, domain summary of its training sections, reliability from its
validation spots), then its held-out test section S is scored:

- **coverage**: fraction of spot × gene values inside the nominal 80 % / 90 % intervals; mean
  width of the 90 % intervals; the same for a constant-width split-conformal interval calibrated
  on the same spots (the usual baseline); the ratio of our mean width to the constant width that
  reaches *the same* coverage on S, gene by gene (< 0.9 = at least 10 % narrower); the Spearman ρ
  between a spot's interval width and its absolute error, averaged over genes;
- **out of domain**: S's slide score under the fold's summary (which never saw S) and whether it
  is warned; each foreign slide's score under every fold's summary; AUROC of held-out HER2ST
  sections (in domain) against the foreign slides (pairs taken within the same fold summary).

    python benchmarks/trust_tables.py CV_DIR --data ../shared/data/her2st --out WORK [--json out.json]
        [--depth-blind] [--folds B4 C2] [--candidate C0|C1|C2|C3]

The fold folders are copied into ``WORK`` (default: a temporary folder) and the trust files are
written there, never into CV_DIR.  ``--depth-blind`` calibrates without the sections' counts
(the version-1 method, intervals that ignore sequencing depth), for the before/after table.
``--candidate`` picks the interval candidates declared in benchmarks/README.md ("Turn 5"): C0
the section's depth profile, C1 each spot's own depth, C2 the model error scaled by the
out-of-domain score, C3 both (default: the product's default).
The feature cache (``NAPARI_DKAN_CACHE``) makes a second run fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def foreign_slides() -> dict[str, object]:
    """Slides of other tissue, each with a lattice of spots over its detected tissue."""
    from napari_dkan.io.formats import open_section

    out: dict[str, object] = {}
    cmu = SHARED / "wsi" / "CMU-1-Small-Region.svs"
    if cmu.is_file():
        out["CMU-1 (skin, H&E)"] = open_section(cmu, None, "lattice")
    visium = SHARED / "visium" / "scanpy-v1.0.0" / "spatial"
    if (visium / "tissue_lowres_image.png").is_file():
        sf = json.loads((visium / "scalefactors_json.json").read_text())
        mpp = 55.0 / sf["spot_diameter_fullres"] / sf["tissue_lowres_scalef"]  # Visium spots: 55 µm
        out["Visium folder (mouse brain, lowres PNG)"] = open_section(
            visium / "tissue_lowres_image.png", None, "lattice", mpp=mpp)
    try:
        import skimage

        ihc = Path(skimage.__file__).parent / "data" / "ihc.png"
        if ihc.is_file():  # scikit-image's sample: human colon, IHC (DAB + haematoxylin)
            out["scikit-image ihc.png (colon, IHC; 0.5 µm/px assumed)"] = open_section(ihc, None, "lattice", mpp=0.5)
    except ImportError:
        pass
    return out


def auroc(inside: list[float], outside: list[float]) -> float:
    """P(score of an out-of-domain slide > score of an in-domain one), ties counting half."""
    pairs = [(o > i) + 0.5 * (o == i) for i in inside for o in outside]
    return float(np.mean(pairs)) if pairs else float("nan")


def spearman_by_gene(width: np.ndarray, err: np.ndarray) -> float:
    from scipy.stats import spearmanr

    rhos = []
    for g in range(width.shape[1]):
        if np.ptp(width[:, g]) > 0 and np.ptp(err[:, g]) > 0:
            rhos.append(spearmanr(width[:, g], err[:, g]).statistic)
    return float(np.nanmean(rhos)) if rhos else float("nan")


def conformal_width_at(verr: np.ndarray, pred: np.ndarray, y: np.ndarray, target: float) -> float:
    """Mean width of the constant-width split-conformal interval ŷ ± q_g (q_g: the k-th smallest
    absolute residual of gene g on the calibration spots, one rank k for every gene) whose
    coverage on the test section first reaches ``target``; NaN when no rank reaches it."""
    ranked = np.sort(verr, axis=0)
    err = np.abs(y - pred)

    def cover(k: int) -> float:
        return float((err <= ranked[k - 1][None, :]).mean())

    lo, hi = 1, len(ranked)
    if cover(hi) < target:
        return float("nan")
    while lo < hi:  # the smallest rank that reaches the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if cover(mid) < target else (lo, mid)
    return 2.0 * float(ranked[lo - 1].mean())


TRUST_FILES = ("reliability.json", "calibration.safetensors", "domain.safetensors")
#: the declared interval candidates: (each spot at its own depth, model error scaled by the domain score)
CANDIDATES = {"C0": (False, False), "C1": (True, False), "C2": (False, True), "C3": (True, True)}


@dataclass
class Fold:
    """One fold with its trust files attached: the held-out test section's data and prediction,
    and the inner-validation (calibration) sections' data and predictions."""

    test: str
    model: Any
    trust: Any
    training: dict
    data: Any
    pred: np.ndarray
    val: list
    val_pred: np.ndarray
    seconds_start: float


def folds(cv_dir: Path, data_root: Path, device: str, work: Path, depth_blind: bool = False,
          only: list[str] | None = None, candidate: str | None = None) -> Iterator[Fold]:
    """Each fold folder of ``cv_dir`` copied into ``work``, its trust files attached after the fact
    (calibration on its inner-validation sections only), and its test section predicted."""
    import shutil

    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.engine.trust import attach_from_data
    from napari_dkan.io.formats import open_dataset

    ds = open_dataset(data_root)
    for source_dir in sorted(cv_dir.glob("fold-*")):
        t0 = time.perf_counter()
        test = source_dir.name.removeprefix("fold-")
        if only and test not in only:
            continue
        fold_dir = work / source_dir.name  # the trust files are written here, not into the CV folder
        if fold_dir.exists():
            shutil.rmtree(fold_dir)
        shutil.copytree(source_dir, fold_dir, ignore=shutil.ignore_patterns(*TRUST_FILES))
        model = TrainedModel.load(fold_dir)
        tr = model.config["training"]

        def load(n: str, model: TrainedModel = model, blind: bool = False) -> Any:
            data = model.section_data(ds[n], with_targets=True, device=device)
            if blind:
                data.panel_counts = None
            return data

        def predict(d: Any, model: TrainedModel = model) -> np.ndarray:
            return model.predict(d, device=device)

        train = [load(n) for n in tr["train_sections"]]
        val = [load(n, blind=depth_blind) for n in tr["val_sections"]]
        spot_depth, domain_scaling = CANDIDATES[candidate] if candidate else (None, None)
        trust = attach_from_data(model, train, val, predict=predict, spot_depth=spot_depth,
                                 domain_scaling=domain_scaling)
        model.reload_trust()
        data = load(test)
        pred = np.asarray(model.predict(data, device=device), dtype=np.float64)
        vpred = np.concatenate([np.asarray(model.predict(d, device=device)) for d in val])
        yield Fold(test, model, trust, tr, data, pred, val, vpred, t0)


def fold_rows(cv_dir: Path, data_root: Path, device: str, work: Path,
              depth_blind: bool = False, only: list[str] | None = None,
              candidate: str | None = None, with_foreign: bool = True) -> tuple[list[dict], dict]:
    from napari_dkan.engine.conformal import coverage_and_width
    from napari_dkan.engine.data import Needs, load_section_data
    from napari_dkan.engine.trust import assess

    foreign = foreign_slides() if with_foreign else {}
    rows, foreign_scores = [], {name: {} for name in foreign}
    for fold in folds(cv_dir, data_root, device, work, depth_blind, only, candidate):
        test, model, trust, tr, data, pred, val = (fold.test, fold.model, fold.trust, fold.training,
                                                   fold.data, fold.pred, fold.val)
        err = np.abs(data.y - pred)
        row: dict = {"fold": test, "train": tr["train_sections"], "calibrated_on": tr["val_sections"],
                     "method": trust.calibration.method,
                     "median_gene_r": float(np.nanmedian(trust.reliability.r)),
                     "calibration_version": trust.calibration.version}
        # the constant-width baseline, calibrated on the same validation spots
        verr = np.abs(np.concatenate([d.y for d in val]) - fold.val_pred)
        for level in (0.8, 0.9):
            spot = assess(trust, pred, data, level, model.smoothing)
            lower, upper = (b.astype(np.float64) for b in spot.lower_upper())
            if spot.depth is not None:
                row["test_depth"] = spot.depth.median
                row["calibration_depth"] = trust.calibration.measurement.reference.median
                row["overdispersion"] = trust.calibration.measurement.overdispersion
            cov, width = coverage_and_width(data.y, lower, upper)
            n = len(verr)
            const = np.sort(verr, axis=0)[min(int(np.ceil((n + 1) * level)), n) - 1]
            ccov, cwidth = coverage_and_width(data.y, pred - const, pred + const)
            per_gene = ((lower <= data.y) & (data.y <= upper)).mean(axis=0)
            # the constant width per gene (around ŷ) that reaches the same coverage on the test section
            equal = np.array([np.quantile(err[:, g], per_gene[g]) for g in range(err.shape[1])])
            # … and around the interval's centre (ŷ moved to the section's depth): the width's own share
            off = np.abs(data.y - (lower + upper) / 2)
            equal_centre = np.array([np.quantile(off[:, g], per_gene[g]) for g in range(err.shape[1])])
            tag = round(level * 100)
            row[f"width_ratio_equal_coverage_centre_{tag}"] = width / (2 * float(equal_centre.mean()))
            # the literal reading: the usual conformal interval (widths from the calibration spots
            # only), at the one nominal level that gives it our coverage on the test section
            row[f"width_ratio_conformal_same_coverage_{tag}"] = width / conformal_width_at(verr, pred, data.y, cov)
            row.update({f"coverage_{tag}": cov, f"width_{tag}": width,
                        f"const_coverage_{tag}": ccov, f"const_width_{tag}": cwidth,
                        f"width_ratio_equal_coverage_{tag}": width / (2 * float(equal.mean())),
                        f"genes_within_10pt_{tag}": float(np.mean(np.abs(per_gene - level) <= 0.10))})
            if level == 0.9:
                row["spearman_width_abs_error"] = spearman_by_gene(upper - lower, err)
                # the error from the interval's centre (ŷ moved to the section's depth)
                row["spearman_width_abs_error_centre"] = spearman_by_gene(
                    upper - lower, np.abs(data.y - (lower + upper) / 2))
        dom = trust.domain
        row.update({"ood_score": dom.slide_score(data.patch_feat), "ood_threshold": dom.threshold,
                    "ood_held_out": dom.held_out})
        row["warned"] = bool(row["ood_score"] > dom.threshold)
        for name, section in foreign.items():
            # patch features only: the cache entry without patch tokens serves every model kind
            feats = load_section_data(section, model.features, None, Needs(), device=device).patch_feat
            foreign_scores[name][test] = {"score": dom.slide_score(feats), "threshold": dom.threshold,
                                          "spots": len(feats)}
        row["seconds"] = round(time.perf_counter() - fold.seconds_start, 1)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "ood_held_out"}), flush=True)
    return rows, foreign_scores


def summarise(rows: list[dict], foreign: dict) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], float) and k not in ("ood_threshold",)]
    keys = [k for k in keys if all(k in r for r in rows) and k not in ("test_depth", "calibration_depth")]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    inside, outside = [], []
    for r in rows:
        for by_fold in foreign.values():
            if r["fold"] in by_fold:
                inside.append(r["ood_score"])
                outside.append(by_fold[r["fold"]]["score"])
    pooled_in = [r["ood_score"] for r in rows]
    pooled_out = [v["score"] for by in foreign.values() for v in by.values()]
    return {"mean": mean, "auroc_pooled": auroc(pooled_in, pooled_out),
            "auroc_within_fold": float(np.mean([(o > i) + 0.5 * (o == i) for i, o in zip(inside, outside)]))
            if inside else float("nan"),
            "held_out_warned": [r["fold"] for r in rows if r["warned"]],
            "foreign_warned": {n: sum(v["score"] > v["threshold"] for v in by.values()) for n, by in foreign.items()}}


def markdown(rows: list[dict], foreign: dict, summary: dict) -> str:
    def depth(r: dict) -> str:
        return f"{r['test_depth']:.0f} / {r['calibration_depth']:.0f}" if "test_depth" in r else "—"

    lines = ["| test section | calibrated on | depth: test / calibration | coverage 80 % | coverage 90 % | width 90 % | constant-width conformal: coverage 90 % / width | width ÷ constant width at equal coverage (90 %) | Spearman ρ(width, abs. error) | ρ(width, abs. error from the centre) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {', '.join(r['calibrated_on'])} | {depth(r)} | {r['coverage_80']:.3f} | {r['coverage_90']:.3f} | "
                     f"{r['width_90']:.3f} | {r['const_coverage_90']:.3f} / {r['const_width_90']:.3f} | "
                     f"{r['width_ratio_equal_coverage_90']:.3f} | {r['spearman_width_abs_error']:.3f} | "
                     f"{r['spearman_width_abs_error_centre']:.3f} |")
    m = summary["mean"]
    lines.append(f"| **mean** | | | {m['coverage_80']:.3f} | {m['coverage_90']:.3f} | {m['width_90']:.3f} | "
                 f"{m['const_coverage_90']:.3f} / {m['const_width_90']:.3f} | {m['width_ratio_equal_coverage_90']:.3f} | "
                 f"{m['spearman_width_abs_error']:.3f} | {m['spearman_width_abs_error_centre']:.3f} |")
    lines += ["", "| slide | scored by | out-of-domain score | threshold | warned |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| HER2ST {r['fold']} (held out) | fold {r['fold']} (trained on {', '.join(r['train'])}) | "
                     f"{r['ood_score']:.2f} | {r['ood_threshold']:.2f} | {'**yes**' if r['warned'] else 'no'} |")
    for name, by in foreign.items():
        scores = [v["score"] for v in by.values()]
        warned = sum(v["score"] > v["threshold"] for v in by.values())
        lines.append(f"| {name} | each of the {len(by)} fold summaries | {min(scores):.2f}–{max(scores):.2f} | "
                     f"{min(v['threshold'] for v in by.values()):.2f}–{max(v['threshold'] for v in by.values()):.2f} | "
                     f"{warned} of {len(by)} |")
    lines.append(f"\nAUROC (held-out HER2ST vs other tissue, pooled): {summary['auroc_pooled']:.3f}; "
                 f"within each fold's summary: {summary['auroc_within_fold']:.3f}")
    return "\n".join(lines)


def cv_parser(description: str, out_required: bool = False) -> argparse.ArgumentParser:
    """The arguments every trust benchmark takes: a CV folder, the dataset, the device, where
    the fold copies go and a JSON file for every figure."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("cv_dir", type=Path)
    ap.add_argument("--data", type=Path, default=SHARED / "her2st")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--out", type=Path, required=out_required,
                    help="where the fold folders are copied and their trust files written"
                    + ("" if out_required else " (default: a temporary folder)"))
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = cv_parser(__doc__.split("\n")[0])
    ap.add_argument("--depth-blind", action="store_true",
                    help="calibrate without the sections' counts (version-1 intervals, depth ignored)")
    ap.add_argument("--folds", nargs="+", help="only these folds (test sections), e.g. while the others train")
    ap.add_argument("--candidate", choices=sorted(CANDIDATES), help="interval candidate (default: the product's)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows, foreign = fold_rows(args.cv_dir, args.data, args.device, work, args.depth_blind, args.folds,
                                  args.candidate)
    summary = summarise(rows, foreign)
    if args.json:
        args.json.write_text(json.dumps({"folds": rows, "foreign": foreign, "summary": summary}, indent=1))
    print(markdown(rows, foreign, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
