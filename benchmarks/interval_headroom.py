"""How much narrower could a model's intervals be, and what would it take? (issue 12, turn 6)

For every fold of a leave-one-section-out CV folder (trust files attached as in
``trust_tables.py``: calibration on the fold's inner-validation section only), at the 90 % level:

- **ours**: our mean width ÷ a constant-width interval around ŷ reaching the same per-gene
  coverage on the test section (the ratio of ``trust_tables.py``);
- **our shape, best scale**: our intervals (centre and the clip at 0 kept) with each gene's
  half-widths multiplied by the factor that gives exactly 90 % on the test section — an oracle
  per-gene calibration; what is left is the per-spot *shape* of our widths. Near 1: the shape
  does not find the spots where the model errs;
- **offset known**: a constant-width interval around ŷ + m_g, m_g the test section's median
  residual of gene g — an oracle that knows each gene's section-level offset and nothing per
  spot;
- **offset share**: the fraction of the test section's squared error that is that per-gene
  offset (mean residual², averaged over genes ÷ mean squared error);
- the literal reading of the issue's comparator: the usual split-conformal interval (per-gene
  widths from the calibration spots only) at the one nominal level that gives it our coverage on
  the test section (NaN: no level reaches it).

    python benchmarks/interval_headroom.py CV_DIR --out WORK [--json out.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_tables import conformal_width_at, cv_parser, folds  # noqa: E402

LEVEL = 0.9


def equal_coverage_width(err: np.ndarray, coverage: np.ndarray) -> float:
    """Mean width of the per-gene constant interval ŷ ± w_g around ŷ covering ``coverage[g]``."""
    return 2.0 * float(np.mean([np.quantile(err[:, g], coverage[g]) for g in range(err.shape[1])]))


def headroom(y: np.ndarray, pred: np.ndarray, lower: np.ndarray, upper: np.ndarray, centre: np.ndarray,
             spread: np.ndarray, verr: np.ndarray, level: float = LEVEL) -> dict:
    """The figures of the module docstring for one test section: our interval [lower, upper] at
    ``level``, its centre and spread (lower = max(0, centre − q·spread), upper = centre + q·spread)."""
    err = np.abs(y - pred)
    inside = (lower <= y) & (y <= upper)
    ours = float(np.mean(upper - lower)) / equal_coverage_width(err, inside.mean(axis=0))
    # our shape with the per-gene factor set on the test section: an interval is
    # [max(0, c − k·s), c + k·s] (centre c, spread s); y ≥ 0, so the clip never uncovers a value
    k = np.quantile(np.abs(y - centre) / np.maximum(spread, 1e-12), level, axis=0)
    lo_k, up_k = np.maximum(centre - k * spread, 0.0), centre + k * spread
    cov_k = ((lo_k <= y) & (y <= up_k)).mean(axis=0)
    shape = float(np.mean(up_k - lo_k)) / equal_coverage_width(err, cov_k)
    # the per-gene section offset known (an oracle), a constant width around ŷ + m_g
    resid = y - pred
    offset = np.median(resid, axis=0)
    w = np.quantile(np.abs(resid - offset), level, axis=0)
    cov_o = (np.abs(resid - offset) <= w).mean(axis=0)
    shifted = 2.0 * float(w.mean()) / equal_coverage_width(err, cov_o)
    share = float(np.mean(resid.mean(axis=0) ** 2) / np.mean(resid**2))
    literal = float(np.mean(upper - lower)) / conformal_width_at(verr, pred, y, float(inside.mean()))
    return {"coverage_90": float(inside.mean()), "ratio_ours": ours, "ratio_shape_best_scale": shape,
            "ratio_offset_known": shifted, "offset_share_of_mse": share, "ratio_conformal_literal": literal}


def main(argv: list[str] | None = None) -> int:
    args = cv_parser(__doc__.split("\n")[0]).parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    from napari_dkan.engine.trust import assess

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for fold in folds(args.cv_dir, args.data, args.device, work):
            lower, upper = (b.astype(np.float64) for b in
                            assess(fold.trust, fold.pred, fold.data, LEVEL, fold.model.smoothing).lower_upper())
            # the centre and spread from the upper bounds at two levels (upper = centre + q·spread)
            upper_80 = assess(fold.trust, fold.pred, fold.data, 0.8, fold.model.smoothing).lower_upper()[1]
            q_90, q_80 = (fold.trust.calibration.quantile(lv)[None, :] for lv in (LEVEL, 0.8))
            spread = (upper - upper_80) / np.maximum(q_90 - q_80, 1e-12)
            centre = upper - q_90 * spread
            verr = np.abs(np.concatenate([d.y for d in fold.val]) - fold.val_pred)
            row = {"fold": fold.test, **headroom(fold.data.y, fold.pred, lower, upper, centre, spread, verr)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k != "fold"]
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in keys}
    if args.json:
        args.json.write_text(json.dumps({"folds": rows, "mean": mean}, indent=1))
    print("| test section | coverage 90 % | ours | our shape, best per-gene scale (oracle) | "
          "constant width, per-gene offset known (oracle) | offset share of squared error | "
          "usual conformal at the same coverage |")
    print("|---|---|---|---|---|---|---|")
    for r in [*rows, {"fold": "**mean**", **mean}]:
        print(f"| {r['fold']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
