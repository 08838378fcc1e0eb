"""Genes outside the trained panel, predicted from their text: measured honestly (issue 17).

Neither the gene nor the section is seen in training.  For a test section T (leave-one-section-
out over the five HER2ST sections with images) and a gene fold F (the 250-gene panel shuffled
with seed 2021 into five folds of 50; test section i of ``--tests`` takes fold i):

- train the ``dkan-improved`` compact model on the other four sections (one of them held out as
  inner validation, which alone chooses the checkpoint and stops training) and on the 200 panel
  genes outside F, with their gene-text embeddings;
- on T, predict through their text (``DKAN.predict_queries``) two sets of unseen genes: the 50
  panel genes of F, and the genes ranked 251-1,000 by mean raw count over all 36 HER2ST sections
  (among genes present in every section) that the knowledge table describes;
- score per-gene Pearson r against the measured targets (the panel's normalisation: counts
  scaled by each spot's 250-panel total to 10,000, log10(1 + x), 3x3 grid smoothing; the trained
  genes' targets are exactly those of ``napari-dkan cv``), and the same for three baselines:
  (a) the mean of the trained genes' predicted maps, (b) the trained gene whose text embedding is
  nearest (cosine), (c) the model queried with another unseen gene's text (a seeded derangement
  within the set; three draws, medians averaged).

Text sources: ``minilm`` (the package's offline texts, MiniLM) and ``gpt4o`` (the DKAN authors'
GPT-4o texts for the her2st/stnet/skin panels, embedded with the same MiniLM; benchmark only:
these texts are never shipped).  With ``gpt4o`` the unseen genes are those the files cover.

Usage (resumable: a finished run is not retrained, an interrupted one resumes)::

    python benchmarks/unseen_genes.py prepare --out /work/exp/i17
    python benchmarks/unseen_genes.py run --out /work/exp/i17 --tests B4 C3 --texts minilm
    python benchmarks/unseen_genes.py report --out /work/exp/i17
    python benchmarks/unseen_genes.py diagnose --out /work/exp/i17 --tests B4 C3 C5 C2 C4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SECTIONS = ("B4", "C2", "C3", "C4", "C5")
FOLD_OF = {"B4": 0, "C3": 1, "C5": 2, "C2": 3, "C4": 4}
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def log(*a: object) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# -- preparation -------------------------------------------------------------------------------
def prepare(out: Path, data: Path) -> None:
    from napari_dkan.io.expression import read_panel_file, select_panel, smooth
    from napari_dkan.io.formats import open_dataset
    from napari_dkan.knowledge import embed_texts, gene_texts, read_text_tsv

    out.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(data / "her2st")
    panel = read_panel_file(str(data / "gene_panels" / "her2st.txt"))
    top = select_panel(ds.sections, n=1000)
    if top[:250] != panel:
        log("warning: the top-250 by mean count differ from the published panel; using the panel")
    extra = [g for g in top if g not in set(panel)][:750]
    genes = panel + extra
    records = gene_texts(genes)
    described = [r.status == "ok" for r in records]
    minilm, info = embed_texts([r.text for r in records])
    gpt: dict[str, str] = {}
    for name in ("her2st", "stnet", "skin"):
        for k, v in read_text_tsv(data / "gene_texts" / f"{name}_gpt4o.tsv").items():
            gpt.setdefault(k, v)
    has_gpt = np.array([g in gpt for g in genes])
    gpt_mat = np.zeros_like(minilm)
    if has_gpt.any():
        m, _ = embed_texts([gpt[g] for g, h in zip(genes, has_gpt) if h])
        gpt_mat[has_gpt] = m
    targets = {}
    for sec in ds.sections:
        if sec.name not in SECTIONS:
            continue
        raw = sec.counts.take_genes(genes).astype(np.float64)
        lib = raw[:, :250].sum(axis=1, keepdims=True)
        y = np.log10(1.0 + np.divide(raw * 1e4, lib, out=np.zeros_like(raw), where=lib > 0))
        targets[sec.name] = smooth(y.astype(np.float32), sec.spots)
    np.savez_compressed(out / "prep.npz", minilm=minilm, gpt4o=gpt_mat, has_gpt=has_gpt,
                        described=np.array(described), **{f"y_{k}": v for k, v in targets.items()})
    rng = np.random.default_rng(2021)
    perm = rng.permutation(250)
    folds = [sorted(perm[i * 50:(i + 1) * 50].tolist()) for i in range(5)]
    meta = {"panel": panel, "extra": extra, "folds": folds, "encoder": info,
            "texts_minilm": [r.text for r in records],
            "n_described_extra": int(sum(described[250:])), "n_gpt4o_extra": int(has_gpt[250:].sum()),
            "n_gpt4o_panel": int(has_gpt[:250].sum())}
    (out / "prep.json").write_text(json.dumps(meta, indent=1))
    log(f"prepared: {len(extra)} extra genes, {meta['n_described_extra']} described, "
        f"gpt4o covers {meta['n_gpt4o_panel']} panel + {meta['n_gpt4o_extra']} extra")


def load_prep(out: Path) -> tuple[dict, dict]:
    meta = json.loads((out / "prep.json").read_text())
    arrays = dict(np.load(out / "prep.npz"))
    return meta, arrays


def section_data(data: Path, names: list[str], y: dict[str, np.ndarray]) -> dict:
    from napari_dkan.engine.data import FeatureSpec, Needs, load_section_data
    from napari_dkan.io.formats import open_dataset

    ds = open_dataset(data / "her2st")
    out = {}
    for n in names:
        d = load_section_data(ds[n], FeatureSpec(), None, Needs(patch_tokens=True), device="cpu")
        d.y = y[n]
        out[n] = d
    return out


# -- training with gene dropout ------------------------------------------------------------------
def make_family(variant_name: str, genes_per_step: int):
    from napari_dkan.engine.families import DKANFamily
    from napari_dkan.model import preset, variant
    from napari_dkan.model.losses import dkan_loss

    cfg = variant(preset("compact"), "dkan-improved")
    if variant_name == "plain":
        return DKANFamily("dkan-improved", cfg)

    class GeneDropFamily(DKANFamily):
        """Each step trains on a random subset of the panel's genes (their texts, targets and
        auxiliary-head columns): the text transformer sees ever-changing gene sets."""

        def loss(self, model, inputs, gene_text, contrastive_genes, gen):  # noqa: ANN001
            import torch

            g = inputs.y.shape[1]
            pick = torch.randperm(g, generator=gen)[:genes_per_step]
            cpick = torch.randperm(len(pick), generator=gen)[:contrastive_genes]
            out = model(inputs, gene_text[pick], contrastive_genes=cpick)
            out.aux = [a[:, pick] for a in out.aux]
            terms = dkan_loss(out, inputs.y[:, pick], self.cfg.alpha, self.cfg.tau,
                              self.cfg.detach_distillation, adaptive=self.cfg.adaptive_weights)
            logs = {"loss": float(terms.total.detach()), "supervised": terms.supervised}
            return terms.total, logs

    return GeneDropFamily("dkan-improved", cfg)


def run_one(out: Path, data: Path, test: str, texts: str, variant_name: str, epochs: int,
            patience: int, genes_per_step: int, reeval: bool = False, eval_only: bool = False) -> dict:
    import torch

    from napari_dkan.engine import checkpoint as ckpt
    from napari_dkan.engine.families import Dims
    from napari_dkan.engine.runs import PRESET_TRAINING
    from napari_dkan.engine.splits import inner_validation
    from napari_dkan.engine.trainer import TrainSettings, fit

    meta, arr = load_prep(out)
    name = f"{test}-{texts}-{variant_name}"
    res_path = out / "results" / f"{name}.json"
    if res_path.is_file() and not (reeval or eval_only):
        log(f"{name}: done already")
        return json.loads(res_path.read_text())
    fold = meta["folds"][FOLD_OF[test]]
    held = set(fold)
    train_idx = np.array([i for i in range(250) if i not in held])
    emb = arr["minilm"] if texts == "minilm" else arr["gpt4o"]
    y = {s: arr[f"y_{s}"] for s in SECTIONS}
    secs = section_data(data, list(SECTIONS), y)
    trainable = {s: secs[s] for s in SECTIONS if s != test}
    for d in trainable.values():
        d.y = d.y[:, train_idx]
    fit_part, val_part = inner_validation(list(trainable.values()), "sections", 2021)
    family = make_family(variant_name, genes_per_step)
    dims = Dims(len(train_idx), secs[test].patch_feat.shape[1], secs[test].patch_tokens.shape[2], emb.shape[1])
    settings = TrainSettings(**{**PRESET_TRAINING["compact"], "epochs": epochs, "patience": patience,
                                "device": "cpu"})
    run_dir = out / "runs" / name
    text = emb[train_idx].astype(np.float32)
    fp = {"test": test, "texts": texts, "variant": variant_name, "fold": fold, "epochs": epochs,
          "patience": patience, "genes_per_step": genes_per_step}
    t0 = time.perf_counter()
    if eval_only:  # score the best checkpoint so far of an unfinished run (labelled as such)
        from types import SimpleNamespace

        state = json.loads((run_dir / "state.json").read_text())
        res = SimpleNamespace(status=f"stopped by the deadline ({state['status']})", best_epoch=state["best_epoch"],
                              epochs_run=state["epoch"], best_val_pcc=state["best_val_pcc"],
                              history=state["history"])
    else:
            res = fit(family, dims, fit_part, val_part, settings, run_dir, gene_text=text, fingerprint=fp,
                  on_event=lambda e: log(name, f"epoch {e.epoch} val {e.val_pcc} best {e.best_pcc} "
                                         f"{e.logs.get('seconds')} s") if e.phase == "epoch" else None)
    train_s = time.perf_counter() - t0
    log(f"{name}: {res.status}, best epoch {res.best_epoch}/{res.epochs_run}, val {res.best_val_pcc}")
    torch.manual_seed(0)
    net = family.build(dims)
    net.load_state_dict(ckpt.load_tensors(run_dir / "model.safetensors"))
    net.eval()
    scores = evaluate(net, family, secs[test], text, emb, train_idx, fold, meta, arr, texts)
    result = {"name": name, "test": test, "texts": texts, "variant": variant_name, "status": res.status,
              "train_sections": [s.name for s in fit_part], "val_sections": [s.name for s in val_part],
              "best_epoch": res.best_epoch, "epochs_run": res.epochs_run, "best_val_pcc": res.best_val_pcc,
              "train_seconds_this_call": round(train_s, 1),
              "seconds_per_epoch": float(np.median([h["seconds"] for h in res.history])),
              **scores}
    res_path.parent.mkdir(parents=True, exist_ok=True)
    res_path.write_text(json.dumps(result))
    return result


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        p = rng.permutation(n)
        if n < 2 or not (p == np.arange(n)).any():
            return p


def evaluate(net, family, sec, text, emb, train_idx, fold, meta, arr, texts) -> dict:  # noqa: ANN001
    import torch

    from napari_dkan.engine.families import SpotStore
    from napari_dkan.engine.metrics import pearson_per_gene

    truth = sec.y  # N×1000
    covered = arr["described"] if texts == "minilm" else arr["has_gpt"]
    sets = {"panel_fold": [i for i in fold if covered[i]],
            "extra": [i for i in range(250, len(covered)) if covered[i]]}
    store = SpotStore([sec], torch.device("cpu"))
    t = torch.as_tensor(text)
    n = len(store)
    with torch.no_grad():
        batches = [torch.arange(a, min(a + 128, n)) for a in range(0, n, 128)]
        inputs = [family.inputs(store, b, None) for b in batches]
        p_train = np.concatenate([net(x, t).pred.numpy() for x in inputs])

        def query(rows: np.ndarray) -> np.ndarray:
            q = torch.as_tensor(rows.astype(np.float32))
            return np.concatenate([net.predict_queries(x, t, q).numpy() for x in inputs])

        out: dict = {"trained_r": _summary(pearson_per_gene(p_train, truth[:, train_idx]))}
        mean_map = p_train.mean(axis=1, keepdims=True)
        # how far each predicted map is from the tissue axis (1: the same map up to scale)
        out["trained_axis_r"] = _summary(pearson_per_gene(p_train, np.repeat(mean_map, p_train.shape[1], 1)))
        tn = emb[train_idx] / np.linalg.norm(emb[train_idx], axis=1, keepdims=True)
        for key, idx in sets.items():
            idx = np.array(idx)
            y = truth[:, idx]
            p_query = query(emb[idx])
            model_r = pearson_per_gene(p_query, y)
            axis_r = pearson_per_gene(p_query, np.repeat(mean_map, len(idx), axis=1))
            mean_r = pearson_per_gene(np.repeat(mean_map, len(idx), axis=1), y)
            qn = emb[idx] / np.linalg.norm(emb[idx], axis=1, keepdims=True)
            nearest = (qn @ tn.T).argmax(axis=1)
            near_r = pearson_per_gene(p_train[:, nearest], y)
            rng = np.random.default_rng(2021)
            shuf = [pearson_per_gene(query(emb[idx][derangement(len(idx), rng)]), y) for _ in range(3)]
            out[key] = {"genes": [(meta["panel"] + meta["extra"])[i] for i in idx],
                        "model": model_r.tolist(), "mean_map": mean_r.tolist(), "nearest": near_r.tolist(),
                        "nearest_gene": [(meta["panel"])[train_idx[j]] for j in nearest],
                        "shuffled": [s.tolist() for s in shuf],
                        "summary": {"model": _summary(model_r), "mean_map": _summary(mean_r),
                                    "nearest": _summary(near_r),
                                    "shuffled": {"median": float(np.mean([np.nanmedian(s) for s in shuf]))},
                                    "axis_r": _summary(axis_r),
                                    "model_beats_mean_map": float(np.nanmean(model_r > mean_r)),
                                    "model_beats_nearest": float(np.nanmean(model_r > near_r))}}
    return out


def _summary(r: np.ndarray) -> dict:
    r = np.asarray(r, dtype=float)
    q1, med, q3 = np.nanpercentile(r, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "mean": float(np.nanmean(r)),
            "n": int(np.isfinite(r).sum())}


# -- what the texts could carry: measured maps only, no model ---------------------------------------
def diagnose(out: Path, tests: list[str]) -> None:
    """How much of a gene's map its text neighbours' *measured* maps explain.

    For each test section and unseen set: median r between an unseen gene's measured map and
    (i) the measured map of the trained gene nearest in text embedding, (ii) a random trained
    gene's, (iii) the mean of all trained genes' measured maps.  And over all pairs of panel
    genes: the Spearman correlation between text cosine similarity and expression correlation
    (all five sections' spots pooled).  If (i) is no better than (ii), the text neighbourhood
    carries no spatial information a model could transfer.
    """
    from scipy.stats import spearmanr

    from napari_dkan.engine.metrics import pearson_per_gene

    meta, arr = load_prep(out)
    rng = np.random.default_rng(2021)
    print("| texts | test | set | n | r(nearest-text gene's measured map) | r(random trained gene's) | "
          "r(mean of trained genes' measured maps) | residual r, nearest-text | residual r, random |")
    print("|---|---|---|---|---|---|---|---|---|")
    for texts in ("minilm", "gpt4o"):
        emb = arr["minilm"] if texts == "minilm" else arr["gpt4o"]
        covered = arr["described"] if texts == "minilm" else arr["has_gpt"]
        for test in tests:
            fold = meta["folds"][FOLD_OF[test]]
            train_idx = np.array([i for i in range(250) if i not in set(fold)])
            y = arr[f"y_{test}"]
            tn = emb[train_idx] / np.linalg.norm(emb[train_idx], axis=1, keepdims=True)
            for key, idx in (("panel_fold", [i for i in fold if covered[i]]),
                             ("extra", [i for i in range(250, len(covered)) if covered[i]])):
                idx = np.array(idx)
                qn = emb[idx] / np.linalg.norm(emb[idx], axis=1, keepdims=True)
                near = train_idx[(qn @ tn.T).argmax(axis=1)]
                rand = rng.choice(train_idx, size=len(idx))
                r_near = pearson_per_gene(y[:, near], y[:, idx])
                r_rand = pearson_per_gene(y[:, rand], y[:, idx])
                mean_map = np.repeat(y[:, train_idx].mean(axis=1, keepdims=True), len(idx), axis=1)
                r_mean = pearson_per_gene(mean_map, y[:, idx])
                res = _residual(y, y[:, train_idx].mean(axis=1))
                rr_near = pearson_per_gene(res[:, near], res[:, idx])
                rr_rand = np.nanmedian([pearson_per_gene(res[:, rng.choice(train_idx, size=len(idx))], res[:, idx])
                                        for _ in range(20)], axis=1)
                print(f"| {texts} | {test} | {key} | {len(idx)} | {np.nanmedian(r_near):.3f} | "
                      f"{np.nanmedian(r_rand):.3f} | {np.nanmedian(r_mean):.3f} | {np.nanmedian(rr_near):.3f} | "
                      f"{np.mean(rr_rand):.3f} |")
    pooled = np.concatenate([arr[f"y_{s}"][:, :250] for s in SECTIONS])
    expr_corr = np.corrcoef(pooled.T)
    iu = np.triu_indices(250, 1)
    print()
    for texts in ("minilm", "gpt4o"):
        e = arr[texts][:250]
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        cos = e @ e.T
        rho = spearmanr(cos[iu], expr_corr[iu]).statistic
        top = np.argsort(-cos[iu])[: len(iu[0]) // 100]  # the 1% most similar text pairs
        print(f"{texts}: Spearman(text cosine, expression r) over {len(iu[0])} panel gene pairs = {rho:.3f}; "
              f"mean expression r of the 1% most text-similar pairs {expr_corr[iu][top].mean():.3f} "
              f"vs all pairs {expr_corr[iu].mean():.3f}")


def _residual(y: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Each column of ``y`` minus its least-squares fit on ``axis`` (and an intercept)."""
    x = np.column_stack([np.ones_like(axis), axis])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return y - x @ coef


# -- report -------------------------------------------------------------------------------------
def report(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]
    fmt = lambda s: f"{s['median']:.3f} [{s['q1']:.3f}, {s['q3']:.3f}]"  # noqa: E731
    print("| run | set | n | model (text) | (a) mean map | (b) nearest text | (c) shuffled text | "
          "model − (a) | model − (b) | model − (c) | model map vs tissue axis |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    agg: dict = {}
    for r in rows:
        for key in ("panel_fold", "extra"):
            s = r[key]["summary"]
            d = (s["model"]["median"] - s["mean_map"]["median"], s["model"]["median"] - s["nearest"]["median"],
                 s["model"]["median"] - s["shuffled"]["median"])
            agg.setdefault((r["texts"], r["variant"], key), []).append(
                (s["model"]["median"], s["mean_map"]["median"], s["nearest"]["median"], s["shuffled"]["median"]))
            cut = " ¹" if "deadline" in r.get("status", "") else ""
            print(f"| {r['name']} (epoch {r['best_epoch']}/{r['epochs_run']}{cut}) | {key} | {s['model']['n']} | "
                  f"{fmt(s['model'])} | {fmt(s['mean_map'])} | {fmt(s['nearest'])} | "
                  f"{s['shuffled']['median']:.3f} | {d[0]:+.3f} | {d[1]:+.3f} | {d[2]:+.3f} | "
                  f"{s['axis_r']['median'] if 'axis_r' in s else float('nan'):.3f} |")
    print("\nMean over test sections of the median per-gene r:\n")
    print("| texts | variant | set | sections | model | (a) | (b) | (c) | model − (a) | model − (b) | model − (c) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (texts, var, key), vals in sorted(agg.items()):
        m = np.mean(vals, axis=0)
        print(f"| {texts} | {var} | {key} | {len(vals)} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[3]:.3f} | "
              f"{m[0]-m[1]:+.3f} | {m[0]-m[2]:+.3f} | {m[0]-m[3]:+.3f} |")
    print("\nTrained genes on the test section (context):")
    for r in rows:
        axis = r.get("trained_axis_r", {}).get("median", float("nan"))
        print(f"  {r['name']}: median r {r['trained_r']['median']:.3f}, mean {r['trained_r']['mean']:.3f}, "
              f"map vs tissue axis {axis:.3f}, "
              f"{r['seconds_per_epoch']:.1f} s/epoch")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["prepare", "run", "report", "diagnose"])
    ap.add_argument("--out", type=Path, default=Path("/work/exp/i17"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tests", nargs="+", default=["B4", "C3"])
    ap.add_argument("--texts", nargs="+", default=["minilm"], choices=["minilm", "gpt4o"])
    ap.add_argument("--variants", nargs="+", default=["plain"], choices=["plain", "genedrop"])
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--genes-per-step", type=int, default=64)
    ap.add_argument("--reeval", action="store_true", help="score finished runs again (no training)")
    ap.add_argument("--eval-only", action="store_true",
                    help="score the best checkpoint of an unfinished run without training on")
    a = ap.parse_args(argv)
    if a.step == "prepare":
        prepare(a.out, a.data)
    elif a.step == "run":
        for var in a.variants:
            for texts in a.texts:
                for test in a.tests:
                    run_one(a.out, a.data, test, texts, var, a.epochs, a.patience, a.genes_per_step,
                            a.reeval, a.eval_only)
    elif a.step == "diagnose":
        diagnose(a.out, a.tests)
    else:
        report(a.out)


if __name__ == "__main__":
    sys.exit(main())
