"""Score the declared interval candidates on a leave-one-section-out CV folder and apply the
declared rule (benchmarks/README.md, "Turn 5").

    python benchmarks/interval_candidates.py CV_DIR --out WORK [--candidates C0 C1 C2 C3] [--json out.json]

Each candidate is scored by ``trust_tables.fold_rows`` (calibration on each fold's inner-validation
section only); the rule: first the coverage lines (mean within ±5 points of nominal at 80 % and
90 %, every section within ±10); among the candidates that pass, the smallest mean width ratio
against a constant-width interval around ŷ at equal coverage; if none passes, the fewest sections
outside ±10, then the smallest mean distance to nominal.  A difference under 0.01 in width ratio
and 1 point of coverage goes to the simpler candidate (the order of ``--candidates``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trust_tables import cv_parser, fold_rows  # noqa: E402

LEVELS = (0.8, 0.9)


def figures(rows: list[dict]) -> dict:
    out: dict = {}
    for level in LEVELS:
        tag = round(level * 100)
        cov = np.array([r[f"coverage_{tag}"] for r in rows])
        out[f"mean_coverage_{tag}"] = float(cov.mean())
        out[f"sections_outside_10_{tag}"] = [r["fold"] for r, c in zip(rows, cov) if abs(c - level) > 0.10]
    out["passes_coverage"] = (all(abs(out[f"mean_coverage_{round(lv * 100)}"] - lv) <= 0.05 for lv in LEVELS)
                              and not any(out[f"sections_outside_10_{round(lv * 100)}"] for lv in LEVELS))
    out["outside"] = sum(len(out[f"sections_outside_10_{round(lv * 100)}"]) for lv in LEVELS)
    out["distance"] = float(np.mean([abs(out[f"mean_coverage_{round(lv * 100)}"] - lv) for lv in LEVELS]))
    out["width_ratio"] = float(np.mean([r["width_ratio_equal_coverage_90"] for r in rows]))
    out["width_ratio_centre"] = float(np.mean([r["width_ratio_equal_coverage_centre_90"] for r in rows]))
    out["rho"] = float(np.mean([r["spearman_width_abs_error"] for r in rows]))
    return out


def choose(scored: dict[str, dict]) -> str:
    """The declared rule over candidates in order of simplicity."""
    names = list(scored)
    passing = [n for n in names if scored[n]["passes_coverage"]]
    if passing:
        best = min(passing, key=lambda n: scored[n]["width_ratio"])
        for n in passing:  # the simplest within the tolerance of the best
            if (scored[n]["width_ratio"] - scored[best]["width_ratio"] < 0.01
                    and abs(scored[n]["distance"] - scored[best]["distance"]) < 0.01):
                return n
        return best
    best = min(names, key=lambda n: (scored[n]["outside"], scored[n]["distance"]))
    for n in names:
        if scored[n]["outside"] == scored[best]["outside"] and scored[n]["distance"] - scored[best]["distance"] < 0.01:
            return n
    return best


def markdown(name: str, rows: list[dict], f: dict) -> str:
    lines = [f"**{name}**", "",
             "| test section | coverage 80 % | coverage 90 % | width 90 % | width ÷ constant at equal coverage: around ŷ / around the centre | ρ(width, abs. error) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fold']} | {r['coverage_80']:.3f} | {r['coverage_90']:.3f} | {r['width_90']:.3f} | "
                     f"{r['width_ratio_equal_coverage_90']:.3f} / {r['width_ratio_equal_coverage_centre_90']:.3f} | "
                     f"{r['spearman_width_abs_error']:.3f} |")
    lines.append(f"| **mean** | {f['mean_coverage_80']:.3f} | {f['mean_coverage_90']:.3f} | "
                 f"{np.mean([r['width_90'] for r in rows]):.3f} | {f['width_ratio']:.3f} / {f['width_ratio_centre']:.3f} | "
                 f"{f['rho']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = cv_parser(__doc__.split("\n")[0], out_required=True)
    ap.add_argument("--candidates", nargs="+", default=["C0", "C1", "C2", "C3"])
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    scored, all_rows = {}, {}
    for c in args.candidates:
        rows, _ = fold_rows(args.cv_dir, args.data, args.device, args.out / c, candidate=c, with_foreign=False)
        all_rows[c], scored[c] = rows, figures(rows)
        print(markdown(c, rows, scored[c]) + "\n", flush=True)
    chosen = choose(scored)
    print("| candidate | passes coverage | sections outside ±10 (80 / 90 %) | mean width ratio (ŷ / centre) | ρ |")
    print("|---|---|---|---|---|")
    for c, f in scored.items():
        print(f"| {c}{' (chosen)' if c == chosen else ''} | {'yes' if f['passes_coverage'] else 'no'} | "
              f"{', '.join(f['sections_outside_10_80']) or '–'} / {', '.join(f['sections_outside_10_90']) or '–'} | "
              f"{f['width_ratio']:.3f} / {f['width_ratio_centre']:.3f} | {f['rho']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"chosen": chosen, "figures": scored, "folds": all_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
