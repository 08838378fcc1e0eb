"""The paper's metrics on small hand-computed cases (method.md §7)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dkan.engine.metrics import (
    FoldScores,
    heg_genes,
    hpg_genes,
    hvg_genes,
    pearson_per_gene,
    report,
    score_slide,
)


def test_pearson_by_hand_and_constant_gene_is_nan():
    truth = np.array([[1.0, 2.0, 5.0], [2.0, 2.0, 5.0], [3.0, 2.0, 5.0]])
    pred = np.array([[1.0, 0.0, 1.0], [2.0, 1.0, 2.0], [4.0, 2.0, 3.0]])
    r = pearson_per_gene(pred, truth)
    # gene 0: x = (1,2,4), y = (1,2,3): r = 3 / sqrt(14/3 · 2)
    assert r[0] == pytest.approx(3 / np.sqrt(14 / 3 * 2))
    assert np.isnan(r[1]) and np.isnan(r[2])  # constant truth → NaN


def test_slide_mae_mse_by_hand():
    s = score_slide("a", np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 2.0], [3.0, 6.0]]))
    assert s.mae == pytest.approx((1 + 0 + 0 + 2) / 4)
    assert s.mse == pytest.approx((1 + 0 + 0 + 4) / 4)


def test_fold_is_nan_mean_over_its_slides():
    s1 = score_slide("a", np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]]), np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]))
    s2 = score_slide("b", np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]]), np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 2.0]]))
    f = FoldScores("P", [s1, s2])
    # gene 1 is constant in slide a's prediction (NaN), so the fold's value is slide b's alone
    assert f.pcc[1] == pytest.approx(s2.pcc[1])
    assert f.pcc[0] == pytest.approx((1.0 + -1.0) / 2)
    assert f.mae == pytest.approx((s1.mae + s2.mae) / 2)


def test_heg_hvg_by_hand():
    t = [np.array([[1.0, 10.0, 0.0], [3.0, 10.0, 0.0]]), np.array([[5.0, 0.0, 1.0]])]
    assert list(heg_genes(t, 2)) == [1, 0]  # means 4.0, 6.67, 0.33
    # normalised rows: (1/11, 10/11, 0), (3/13, 10/13, 0), (5/6, 0, 1/6)
    rows = np.array([[1 / 11, 10 / 11, 0], [3 / 13, 10 / 13, 0], [5 / 6, 0, 1 / 6]])
    assert list(hvg_genes(t, 3)) == list(np.argsort(-rows.var(axis=0)))


def test_hpg_sums_within_fold_ranks():
    folds = [np.array([0.9, 0.1, 0.5, np.nan]), np.array([0.2, 0.3, 0.8, 0.1])]
    # ranks fold 1: g3(nan)=0, g1=1, g2=2, g0=3; fold 2: g3=0, g0=1, g1=2, g2=3
    # sums: g0=4, g1=3, g2=5, g3=0
    assert list(hpg_genes(folds, 2)) == [2, 0]


def test_report_mean_and_population_std_over_folds():
    rng = np.random.default_rng(0)
    truths, folds = [], []
    for name in ("A", "B", "C"):
        t = rng.random((20, 60))
        p = t + rng.normal(0, 0.3, t.shape)
        truths.append(t)
        folds.append(FoldScores(name, [score_slide(name, p, t)]))
    panel = [f"G{i}" for i in range(60)]
    rep = report(folds, truths, panel)
    maes = [f.mae for f in folds]
    assert rep.mean["MAE"] == pytest.approx(np.mean(maes))
    assert rep.std["MAE"] == pytest.approx(np.std(maes, ddof=0))
    assert rep.folds[0]["PCC-ALL"] == pytest.approx(np.nanmean(folds[0].pcc))
    assert len(rep.genes["PCC-HEG"]) == 50 and set(rep.folds[0]) == {
        "fold", "MAE", "MSE", "PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG", "genes_with_r"}
    assert [r["genes_with_r"] for r in rep.folds] == [60, 60, 60]
    # a gene constant in a fold's measured values has no r there: counted, so outputs can say so
    flat = truths[0].copy()
    flat[:, :2] = 0.0
    one = report([FoldScores("A", [score_slide("A", flat + 0.1, flat)])], [flat], panel)
    assert one.folds[0]["genes_with_r"] == 58
    hpg = [panel.index(g) for g in rep.genes["PCC-HPG"]]
    assert rep.folds[1]["PCC-HPG"] == pytest.approx(np.nanmean(folds[1].pcc[hpg]))
