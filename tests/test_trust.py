"""The trust layer: reliability files, conformal intervals, out-of-domain score, seen sections."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from napari_dkan.engine.conformal import calibrate, coverage_and_width
from napari_dkan.engine.domain import fit_summary, fit_with_threshold
from napari_dkan.engine.reliability import GeneReliability, from_folds, verdict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- conformal intervals on a synthetic case with known truth ---------------------------------
def _heteroscedastic(n: int, genes: int, rng: np.random.Generator):
    """Spots with an image feature u; each gene's noise sd grows with u (known), mean known."""
    u = rng.uniform(0, 1, n)
    features = np.column_stack([u, rng.normal(size=(n, 5))])
    pred = rng.uniform(0.5, 2.0, (n, genes)) + u[:, None]
    sd = 0.02 + 0.8 * u[:, None] ** 2 * np.linspace(0.5, 1.5, genes)[None, :]
    truth = pred + sd * rng.standard_normal((n, genes))
    return features, pred, truth, sd


def test_conformal_intervals_cover_at_nominal_level_and_follow_the_noise() -> None:
    rng = np.random.default_rng(3)
    f_cal, p_cal, t_cal, _ = _heteroscedastic(1200, 6, rng)
    f_test, p_test, t_test, sd_test = _heteroscedastic(20000, 6, rng)
    cal = calibrate(p_cal, t_cal, f_cal, [f"g{i}" for i in range(6)])
    for level in (0.8, 0.9):
        half = cal.interval_halfwidth(p_test, f_test, level)
        cov, width = coverage_and_width(t_test, p_test - half, p_test + half)
        assert abs(cov - level) < 0.025, (level, cov)
        # every gene, not only on average
        per_gene = (np.abs(t_test - p_test) <= half).mean(axis=0)
        assert np.all(np.abs(per_gene - level) < 0.04), per_gene
        # at 90 %, a constant width per gene reaching the same coverage is clearly wider (at
        # 80 % even the true noise sd narrows normal intervals by only ~4 %: not asserted)
        err = np.abs(t_test - p_test)
        const = np.array([np.quantile(err[:, g], per_gene[g]) for g in range(6)])
        if level == 0.9:
            assert width < 0.9 * 2 * const.mean()
    # the width tracks the true noise and the realised error
    half = cal.interval_halfwidth(p_test, f_test, 0.9)
    assert spearmanr(half[:, 0], sd_test[:, 0]).statistic > 0.9
    assert spearmanr(half[:, 0], np.abs(t_test - p_test)[:, 0]).statistic > 0.3


def test_calibration_round_trip_and_any_level(tmp_path: Path) -> None:
    from napari_dkan.engine.conformal import Calibration

    rng = np.random.default_rng(0)
    f, p, t, _ = _heteroscedastic(300, 3, rng)
    cal = calibrate(p, t, f, ["A", "B", "C"], ["C4"])
    cal.save(tmp_path / "c.safetensors")
    back = Calibration.load(tmp_path / "c.safetensors")
    assert back.sections == ["C4"] and back.genes == ["A", "B", "C"]
    np.testing.assert_allclose(back.interval_halfwidth(p, f, 0.7), cal.interval_halfwidth(p, f, 0.7), rtol=1e-5)
    assert np.all(back.quantile(0.95) > back.quantile(0.5))
    assert np.all(np.isinf(back.quantile(0.999)))  # 150 scores cannot certify 99.9 %
    with pytest.raises(ValueError, match="between 0 and 1"):
        back.quantile(90)
    with pytest.raises(ValueError, match="at least 20 held-out spots"):
        calibrate(p[:10], t[:10], f[:10], ["A", "B", "C"])


# -- depth-aware intervals: a synthetic Poisson section at two depths ------------------------
def _poisson_section(name: str, depth: float, rng: np.random.Generator, side: int = 24, genes: int = 40,
                     smoothing: bool = True, gradient: float = 0.0):
    """A square grid of spots whose panel proportions are known (a smooth field per gene), with
    Poisson counts at a section depth (spots spread ×/÷ 2 around it); the model's prediction is
    the deep-depth target of the true proportions plus a spatially smooth error of known size."""
    from napari_dkan.engine.data import SectionData
    from napari_dkan.io.expression import normalize, smooth
    from napari_dkan.io.spots import SpotTable

    rows, cols = np.divmod(np.arange(side * side), side)
    panel = np.random.default_rng(0)  # the same genes in every section
    base = panel.uniform(-7.5, -2.5, genes)  # log proportions from rare to abundant genes
    phase = panel.uniform(0, 6, genes)
    shift = rng.uniform(0, 6)  # each section its own tissue layout
    wave = np.sin(rows[:, None] / 4.0 + phase + shift) + np.cos(cols[:, None] / 5.0 + shift)
    share = np.exp(base[None, :] + 0.6 * wave)
    share /= share.sum(axis=1, keepdims=True)
    # ``gradient``: the depth also drifts smoothly across the section (× e^gradient top to bottom)
    totals = depth * np.exp(rng.uniform(-0.7, 0.7, len(rows)) + gradient * (rows / (side - 1) - 0.5))
    counts = rng.poisson(totals[:, None] * share).astype(np.float32)
    spots = SpotTable(np.array([f"{name}-{i}" for i in range(len(rows))]), rows, cols, cols * 10.0, rows * 10.0,
                      np.ones(len(rows), bool), None, "square", 200.0, 100.0)
    truth = smooth(normalize(counts), spots) if smoothing else normalize(counts)
    deep_target = np.log10(1.0 + 1e4 * share)
    model_error = 0.08 * np.sin(rows[:, None] / 3.0 + rng.uniform(0, 6, genes))
    pred = deep_target + model_error
    n = len(rows)
    data = SectionData(name, "P", spots.spot_id, np.column_stack([rows, cols]), spots.xy,
                       rng.normal(size=(n, 4)).astype(np.float32), np.zeros((n, 25, 4), np.float16),
                       np.zeros((n, 25), bool), y=truth, panel_counts=counts)
    return data, pred


def _coverage(trust, pred, data, level, **kw) -> float:
    from napari_dkan.engine.trust import assess

    lower, upper = assess(trust, pred, data, level, **kw).lower_upper()
    return float(((lower <= data.y) & (data.y <= upper)).mean())


def test_depth_aware_intervals_calibrated_deep_cover_a_shallow_section() -> None:
    from napari_dkan.engine.conformal import spot_context
    from napari_dkan.engine.trust import Trust, depth_of_calibration

    rng = np.random.default_rng(7)
    cal, p_cal = _poisson_section("deep-cal", 3000.0, rng)
    deep, p_deep = _poisson_section("deep-test", 3000.0, rng)
    shallow, p_shallow = _poisson_section("shallow", 150.0, rng)
    genes = [f"g{i}" for i in range(p_cal.shape[1])]
    measurement, var = depth_of_calibration([cal], [p_cal])
    assert 0.9 < measurement.overdispersion < 1.3  # Poisson counts: (almost) no over-dispersion
    assert measurement.reference.median == pytest.approx(3000.0, rel=0.15)
    ctx = spot_context(p_cal, None, None)
    aware = Trust(calibration=calibrate(p_cal, cal.y, ctx, genes, ["deep-cal"], measurement=measurement,
                                        reading_var=var))
    blind = Trust(calibration=calibrate(p_cal, cal.y, ctx, genes, ["deep-cal"]))
    for level in (0.8, 0.9):
        assert abs(_coverage(aware, p_deep, deep, level) - level) < 0.05
        assert abs(_coverage(aware, p_shallow, shallow, level) - level) < 0.05
        assert _coverage(blind, p_shallow, shallow, level) < level - 0.2  # the depth-blind method fails
    # without its counts the shallow section is taken at the calibration depth (too narrow), and
    # a given depth restores the coverage
    counts = shallow.panel_counts
    shallow.panel_counts = None
    assert _coverage(aware, p_shallow, shallow, 0.9) < 0.8
    assert abs(_coverage(aware, p_shallow, shallow, 0.9, depth=float(np.median(counts.sum(axis=1)))) - 0.9) < 0.05


def _depth_aware_case(seed: int):  # noqa: ANN202 - (Trust, SectionData, prediction)
    """A depth-aware calibration on one Poisson section at depth 3,000, and a second section."""
    from napari_dkan.engine.conformal import spot_context
    from napari_dkan.engine.trust import Trust, depth_of_calibration

    rng = np.random.default_rng(seed)
    cal, p_cal = _poisson_section("deep-cal", 3000.0, rng)
    test, p_test = _poisson_section("test", 3000.0, rng)
    measurement, var = depth_of_calibration([cal], [p_cal])
    trust = Trust(calibration=calibrate(p_cal, cal.y, spot_context(p_cal, None, None),
                                        [f"g{i}" for i in range(p_cal.shape[1])],
                                        measurement=measurement, reading_var=var))
    return trust, test, p_test


def test_depth_aware_bounds_are_never_upside_down_nor_beyond_the_target_range() -> None:
    """A prediction far below 0 (the networks write some) gives [0, 0], not an upper bound under
    the lower one (the clip at 0 once applied to the lower bound only); nor is an upper bound
    ever above the largest target value."""
    from napari_dkan.engine.conformal import spot_context
    from napari_dkan.engine.trust import assess, reading_of, section_depth

    trust, test, p_test = _depth_aware_case(3)
    p_test = p_test.copy()
    p_test[:5, 0] = -5.0  # far below any interval's half-width
    lower, upper = assess(trust, p_test, test, 0.9).lower_upper()
    assert (upper >= lower).all() and (lower >= 0).all()
    assert (upper[:5, 0] == 0).all() and (lower[:5, 0] == 0).all()
    # a far-off slide's widened intervals stop at the largest value a target can take
    from napari_dkan.io.expression import TARGET_MAX

    ctx = spot_context(p_test, None, None)
    reading = reading_of(trust.calibration, p_test, test, section_depth(trust.calibration, test))
    lo_wide, up_wide = trust.calibration.bounds(p_test, ctx, 0.9, reading, inflation=200.0)
    assert up_wide.max() == pytest.approx(TARGET_MAX) and (lo_wide >= 0).all() and (up_wide >= lo_wide).all()


def test_a_very_deep_section_gets_intervals_around_the_prediction() -> None:
    """Above the Poisson table's top rate the reading is its large-count limit: clipping the
    rate there once moved a 10⁸-deep section's every interval off the prediction."""
    from napari_dkan.engine.trust import assess

    trust, test, p_test = _depth_aware_case(5)
    widths, centres = [], []
    for depth in (3e3, 1e5, 1e8):
        spot = assess(trust, p_test, test, 0.9, depth=depth)
        # before: at 10⁸ the centre sat 1.8 below the prediction and 99 % of the intervals lay under it
        assert (spot.upper < p_test).mean() < 0.01, depth
        widths.append(float((spot.upper - spot.lower).mean()))
        centres.append(float(((spot.lower + spot.upper) / 2 - p_test).mean()))
    assert widths[0] >= widths[1] >= widths[2] > 0  # narrower with depth, down to the model's error
    assert abs(centres[2]) < 0.05 and widths[2] == pytest.approx(widths[1], rel=0.02)  # a limit, no drift
    with pytest.raises(ValueError, match="positive number"):
        assess(trust, p_test, test, 0.9, depth=float("inf"))


def test_depth_aware_intervals_for_unsmoothed_targets() -> None:
    from napari_dkan.engine.conformal import spot_context
    from napari_dkan.engine.trust import Trust, depth_of_calibration

    rng = np.random.default_rng(11)
    cal, p_cal = _poisson_section("deep-cal", 3000.0, rng, smoothing=False)
    shallow, p_shallow = _poisson_section("shallow", 300.0, rng, smoothing=False)
    measurement, var = depth_of_calibration([cal], [p_cal], smoothed=False)
    trust = Trust(calibration=calibrate(p_cal, cal.y, spot_context(p_cal, None, None),
                                        [f"g{i}" for i in range(p_cal.shape[1])],
                                        measurement=measurement, reading_var=var))
    for level in (0.8, 0.9):
        # single-spot readings at a shallow depth are discrete (mostly 0, 1 or 2 counts): the
        # Gaussian reading errs on the wide side
        assert level - 0.03 < _coverage(trust, p_shallow, shallow, level, smoothed=False) < level + 0.08
    # read as if smoothed, the single-spot noise is taken 9× too small: far under nominal
    assert _coverage(trust, p_shallow, shallow, 0.9, smoothed=True) < 0.8


def test_depth_aware_calibration_round_trip_and_old_files_still_load(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    from napari_dkan.engine import checkpoint as ckpt
    from napari_dkan.engine.conformal import Calibration, spot_context
    from napari_dkan.engine.trust import Trust, assess, depth_of_calibration

    rng = np.random.default_rng(2)
    cal, p_cal = _poisson_section("cal", 2000.0, rng, side=12, genes=6)
    measurement, var = depth_of_calibration([cal], [p_cal])
    genes = [f"g{i}" for i in range(6)]
    aware = calibrate(p_cal, cal.y, spot_context(p_cal, None, None), genes, ["cal"],
                      measurement=measurement, reading_var=var)
    aware.save(tmp_path / "v2.safetensors")
    back = Calibration.load(tmp_path / "v2.safetensors")
    assert back.version == 2 and back.measurement.overdispersion == pytest.approx(measurement.overdispersion)
    np.testing.assert_allclose(back.measurement.reference.quantiles, measurement.reference.quantiles, rtol=1e-5)
    first, again = (assess(Trust(calibration=c), p_cal, cal, 0.9) for c in (aware, back))
    np.testing.assert_allclose(first.upper, again.upper, rtol=1e-4)
    assert first.depth.source == "measured"
    with pytest.raises(ValueError, match="reading noise"):
        back.bounds(p_cal, spot_context(p_cal, None, None), 0.9)

    # a file written before versions existed: the depth-blind method, intervals ŷ ± q·σ
    blind = calibrate(p_cal, cal.y, spot_context(p_cal, None, None), genes, ["cal"])
    tensors = load_file(str(tmp_path / "v2.safetensors"))
    tensors.pop("reference_depth")
    old_meta = {"method": "normalised split-conformal", "sections": ["cal"], "genes": genes, "n_scores": 72}
    tensors["scores"] = blind.scores.astype(np.float32)
    for k, v in zip(("coef", "floor", "centre", "width"), (blind.scale_model.coef, blind.scale_model.floor,
                                                           blind.scale_model.centre, blind.scale_model.width)):
        tensors[k] = v.astype(np.float32)
    ckpt.save_tensors(tmp_path / "old.safetensors", tensors, metadata={"calibration": json.dumps(old_meta)})
    old = Calibration.load(tmp_path / "old.safetensors")
    assert old.version == 1 and old.measurement is None
    spot = assess(Trust(calibration=old), p_cal, cal, 0.9)
    assert spot.depth is None
    np.testing.assert_allclose(spot.upper - p_cal, p_cal - spot.lower, atol=1e-5)  # symmetric, as before
    from napari_dkan._widgets.trust_view import uncertainty_tip

    assert "`napari-dkan trust` recalibrates" in uncertainty_tip(old)  # the dock says the depth is ignored
    assert "median 2" in uncertainty_tip(back) and "own sequencing depth" in uncertainty_tip(back)
    from napari_dkan.engine.measurement import DepthProfile

    # after a prediction the tooltip names the depth its intervals are for, not only the rule
    own = uncertainty_tip(back, DepthProfile(np.array([100.0, 150.0, 200.0]), "measured"), "B4")
    assert "B4's own measured sequencing depth: median 150 panel counts per spot" in own
    bare = uncertainty_tip(back, DepthProfile(np.array([2.0, 3.0]), "calibration"), "CMU-1")
    assert "the calibration section's sequencing depth (this section has no counts)" in bare
    ckpt.save_tensors(tmp_path / "v9.safetensors", tensors,
                      metadata={"calibration": json.dumps({**old_meta, "version": 9})})
    with pytest.raises(ValueError, match="version 9"):
        Calibration.load(tmp_path / "v9.safetensors")


def test_spot_depth_intervals_follow_each_spots_own_depth(tmp_path: Path) -> None:
    """Depth drifting 20-fold across a section: read at the section's profile, the shallow third
    is under-covered and the deep third over-covered; read at each spot's own depth (version 3)
    both hold, the width ranks the errors better, and the option survives a save and load."""
    from napari_dkan.engine.conformal import Calibration, spot_context
    from napari_dkan.engine.measurement import DepthProfile, grid_neighbours, reading_moments
    from napari_dkan.engine.trust import Trust, assess, depth_of_calibration

    rng = np.random.default_rng(3)
    cal, p_cal = _poisson_section("cal", 600.0, rng, gradient=3.0)
    test, p_test = _poisson_section("test", 600.0, rng, gradient=3.0)
    # a model trained at this depth: no average bias on its calibration section (the synthetic
    # prediction is the infinite-depth target)
    bias = (p_cal - cal.y).mean(axis=0)
    p_cal, p_test = p_cal - bias, p_test - bias
    genes = [f"g{i}" for i in range(p_cal.shape[1])]
    ctx = spot_context(p_cal, None, None)
    trusts = {}
    for own in (False, True):
        measurement, var = depth_of_calibration([cal], [p_cal], spot_depth=own)
        assert measurement.spot_depth is own
        trusts[own] = Trust(calibration=calibrate(p_cal, cal.y, ctx, genes, ["cal"], measurement=measurement,
                                                  reading_var=var))
    assert trusts[False].calibration.version == 2 and trusts[True].calibration.version == 3
    rows = test.positions[:, 0]
    shallow, deep = rows < 8, rows >= 16
    err = np.abs(test.y - p_test)
    rho = {}
    for own, trust in trusts.items():
        spot = assess(trust, p_test, test, 0.9)
        assert spot.depth.source == ("measured per spot" if own else "measured")
        inside = (spot.lower <= test.y) & (test.y <= spot.upper)
        cover = {"shallow": inside[shallow].mean(), "deep": inside[deep].mean()}
        if own:
            assert all(abs(c - 0.9) < 0.05 for c in cover.values()), cover
        else:
            assert cover["shallow"] < 0.82 and cover["deep"] > cover["shallow"] + 0.1, cover
        width = spot.upper - spot.lower
        rho[own] = np.mean([spearmanr(width[:, g], err[:, g]).statistic for g in range(err.shape[1])])
    assert rho[True] > rho[False] + 0.015, rho  # the width follows the depth, as the noise does

    # the per-spot reading equals reading every spot's depth bin at that bin's depth
    nbr = grid_neighbours(test.positions)
    profile = DepthProfile.of_spots(test.panel_counts, nbr)
    assert profile.per_spot.shape == (len(p_test),) and profile.median == DepthProfile.of_counts(test.panel_counts).median
    mean, var = reading_moments(p_test, nbr, profile, 1.3)
    deepest = profile.per_spot >= np.quantile(profile.per_spot, 1 - 1 / 16)
    at = DepthProfile(np.array([np.exp(np.median(np.log(profile.per_spot[deepest])))]), "given")
    m_bin, v_bin = reading_moments(p_test, nbr, at, 1.3)
    np.testing.assert_allclose(mean[deepest], m_bin[deepest], rtol=1e-9)
    np.testing.assert_allclose(var[deepest], v_bin[deepest], rtol=1e-9)

    trusts[True].calibration.save(tmp_path / "v3.safetensors")
    back = Calibration.load(tmp_path / "v3.safetensors")
    assert back.version == 3 and back.measurement.spot_depth and back.domain_reference is None
    assert "own depth" in back.method
    again = assess(Trust(calibration=back), p_test, test, 0.9)
    np.testing.assert_allclose(again.upper, assess(trusts[True], p_test, test, 0.9).upper, rtol=1e-4)
    from napari_dkan._widgets.trust_view import uncertainty_tip

    assert "each spot's own measured sequencing depth (test: median" in uncertainty_tip(back, again.depth, "test")
    assert "each spot's own sequencing depth" in uncertainty_tip(back)


def test_domain_scaled_intervals_widen_only_for_images_unlike_the_calibration(tmp_path: Path) -> None:
    """Version 3's domain scaling: the model error grows by the section's out-of-domain score over
    the calibration sections' (never shrinks); in-domain sections keep their intervals."""
    from napari_dkan.engine.conformal import Calibration, spot_context
    from napari_dkan.engine.trust import Trust, assess, depth_of_calibration

    rng = np.random.default_rng(4)
    cal, p_cal = _poisson_section("cal", 2000.0, rng)
    test, p_test = _poisson_section("test", 2000.0, rng)
    centre = rng.normal(size=4)
    train_feat = centre + rng.normal(size=(400, 4))
    cal.patch_feat = (centre + rng.normal(size=(len(p_cal), 4))).astype(np.float32)
    domain = fit_summary([train_feat])
    measurement, var = depth_of_calibration([cal], [p_cal])
    genes = [f"g{i}" for i in range(p_cal.shape[1])]
    reference = domain.slide_score(cal.patch_feat)
    scaled = calibrate(p_cal, cal.y, spot_context(p_cal, cal.patch_feat, domain), genes, ["cal"],
                       measurement=measurement, reading_var=var, domain_reference=reference)
    plain = calibrate(p_cal, cal.y, spot_context(p_cal, cal.patch_feat, domain), genes, ["cal"],
                      measurement=measurement, reading_var=var)
    assert scaled.version == 3 and plain.version == 2
    assert scaled.inflation(None) == 1.0 and scaled.inflation(reference / 2) == 1.0
    assert scaled.inflation(3 * reference) == pytest.approx(3.0)
    np.testing.assert_allclose(scaled.scores, plain.scores)  # the calibration spots' own factor is 1

    def widths(shift: float) -> tuple[float, float]:
        test.patch_feat = (centre + shift + rng.normal(size=(len(p_test), 4))).astype(np.float32)
        spots = [assess(Trust(calibration=c, domain=domain), p_test, test, 0.9) for c in (scaled, plain)]
        return tuple(float((s.upper - s.lower).mean()) for s in spots)

    near, near_plain = widths(0.0)
    assert near == pytest.approx(near_plain, rel=0.05)  # looks like the calibration section: as before
    far, far_plain = widths(4.0)
    assert far > 1.5 * far_plain  # far from every training image: wider
    from napari_dkan._widgets.trust_view import uncertainty_tip

    spot = assess(Trust(calibration=scaled, domain=domain), p_test, test, 0.9)
    assert spot.inflation > 1.5
    assert f"×{spot.inflation:.2f}" in uncertainty_tip(scaled, spot.depth, "test", spot.inflation)
    # the tip says what the width is not: a map of where the model errs
    assert "not as a map of where the model errs" in uncertainty_tip(scaled, spot.depth, "test", spot.inflation)
    scaled.save(tmp_path / "v3.safetensors")
    back = Calibration.load(tmp_path / "v3.safetensors")
    assert back.version == 3 and back.domain_reference == pytest.approx(reference, rel=1e-6)
    assert not back.measurement.spot_depth and "out-of-domain score" in back.method


def test_reading_moments_follow_poisson_simulation() -> None:
    """The tabulated mean and variance of a neighbour-averaged reading match a Monte-Carlo of
    the same Poisson model (one depth, no over-dispersion)."""
    from napari_dkan.engine.measurement import DepthProfile, grid_neighbours, reading_moments
    from napari_dkan.io.expression import normalize

    rng = np.random.default_rng(5)
    rows, cols = np.divmod(np.arange(36), 6)
    share = rng.dirichlet(np.full(30, 0.5), size=36)
    pred = np.log10(1 + 1e4 * share)
    nbr = grid_neighbours(np.column_stack([rows, cols]))
    assert nbr.shape == (36, 9) and (nbr[:, 0] == np.arange(36)).all()
    profile = DepthProfile(np.full(9, 200.0), "given")
    mean, var = reading_moments(pred, nbr, profile)
    draws = []
    for _ in range(3000):
        reading = normalize(rng.poisson(200.0 * share)).astype(np.float64)
        reading[rng.poisson(200.0 * share).sum(axis=1) < 0] = 0  # keep the shape
        valid = nbr >= 0
        draws.append((reading[np.where(valid, nbr, 0)] * valid[..., None]).sum(axis=1) / valid.sum(axis=1)[:, None])
    draws = np.array(draws)
    # normalising by the spot's own total instead of the depth moves the mean a little
    assert np.abs(mean - draws.mean(axis=0)).mean() < 0.05
    assert np.median(var / draws.var(axis=0)) == pytest.approx(1.0, abs=0.15)


# -- reliability --------------------------------------------------------------------------------
def test_reliability_file_is_written_and_read_back(tmp_path: Path) -> None:
    per = {"B4": np.array([0.6, 0.05, np.nan, 0.2]), "C2": np.array([0.5, -0.1, np.nan, 0.3])}
    rel = from_folds(["ERBB2", "TAPBP", "FLAT", "MUC1"], per, "leave-one-section-out test")
    rel.save(tmp_path / "reliability.json")
    back = GeneReliability.load(tmp_path / "reliability.json")
    assert back.protocol == "leave-one-section-out test" and back.sections == ["B4", "C2"]
    assert back.of("ERBB2") == pytest.approx(0.55) and back.of("FLAT") is None
    assert back.describe("ERBB2") == "ERBB2 — expected r 0.55 ± 0.05 on unseen sections: reliable"
    assert back.describe("TAPBP").endswith("unreliable") and "-0.03" in back.describe("TAPBP")
    assert back.describe("MUC1").endswith(": weak")
    assert back.describe("FLAT").endswith("not measurable on unseen sections: unreliable")
    assert back.order() == ["ERBB2", "MUC1", "TAPBP", "FLAT"]
    on_disk = json.loads((tmp_path / "reliability.json").read_text())
    assert on_disk["thresholds"] == {"reliable": 0.3, "unreliable": 0.1}
    assert on_disk["r"][2] is None  # NaN is written as null: the file stays valid JSON
    assert [verdict(x) for x in (0.31, 0.1, 0.09, None)] == ["reliable", "weak", "unreliable", "unreliable"]


# -- out-of-domain ------------------------------------------------------------------------------
def test_domain_threshold_comes_from_held_out_sections() -> None:
    rng = np.random.default_rng(1)
    centre = rng.normal(size=40)
    train = {n: centre + rng.normal(size=(300, 40)) for n in ("a", "b", "c")}
    summary = fit_with_threshold(train, {"v": centre + rng.normal(size=(200, 40))})
    assert set(summary.held_out) == {"a", "b", "c", "v"}
    assert summary.threshold == pytest.approx(max(summary.held_out.values()) * 2.0)
    new_in = centre + rng.normal(size=(200, 40))
    foreign = centre + 6 + rng.normal(size=(200, 40))
    assert summary.slide_score(new_in) < summary.threshold < summary.slide_score(foreign)
    assert fit_summary([train["a"]]).threshold == float("inf")  # nothing held out: never warns


def test_out_of_domain_score_ranks_a_foreign_image_above_a_her2st_section(her2st_dataset, wsi_dir) -> None:
    from napari_dkan.engine.data import FeatureSpec, load_section_data
    from napari_dkan.io.formats import open_section

    spec = FeatureSpec(encoder="tiny")
    feats = {n: load_section_data(her2st_dataset[n], spec, None, device="cpu").patch_feat
             for n in ("C3", "C4", "C5")}
    summary = fit_with_threshold({"C3": feats["C3"], "C4": feats["C4"]})
    skin = open_section(wsi_dir / "CMU-1-Small-Region.svs", None, "lattice")
    skin_feats = load_section_data(skin, spec, None, device="cpu").patch_feat
    held_out = summary.slide_score(feats["C5"])
    assert summary.slide_score(skin_feats) > 1.5 * held_out
    assert held_out < summary.threshold


# -- a run folder: files written by training, read by prediction -----------------------------
def test_training_writes_trust_files_and_prediction_uses_them(tiny_run_dir: Path, her2st_dataset) -> None:
    from napari_dkan.engine.predict import predict_section
    from napari_dkan.engine.runs import TrainedModel

    model = TrainedModel.load(tiny_run_dir)
    trust = model.trust
    assert trust.missing == []
    assert trust.reliability.protocol.startswith("per-gene Pearson r on this run's validation spots")
    assert trust.calibration.sections == ["C3"]
    adata = predict_section(model, her2st_dataset["C3"], device="cpu")
    uns = adata.uns["napari_dkan"]
    assert uns["interval_level"] == 0.9
    assert np.all(adata.layers["lower"] <= adata.X) and np.all(adata.X <= adata.layers["upper"])
    assert (adata.layers["upper"] >= adata.layers["lower"]).all()  # never upside down
    inside = (adata.layers["lower"] <= adata.layers["measured"]) & (adata.layers["measured"] <= adata.layers["upper"])
    assert 0.8 < inside.mean() < 0.99  # calibrated on C3 itself: about nominal
    assert uns["seen_by_model"] == "training"  # C3 trained this model
    assert "ood_score" in uns and isinstance(uns["out_of_domain"], bool)
    assert len(adata.obs["ood_score"]) == adata.n_obs


def test_a_run_without_trust_files_still_loads_and_predicts(tiny_run_dir: Path, her2st_dataset, tmp_path: Path) -> None:
    from napari_dkan.engine.predict import predict_section
    from napari_dkan.engine.runs import TrainedModel

    old = tmp_path / "old-run"
    shutil.copytree(tiny_run_dir, old)
    for name in ("reliability.json", "calibration.safetensors", "domain.safetensors"):
        (old / name).unlink()
    model = TrainedModel.load(old)
    assert model.trust.missing == ["per-gene reliability", "calibrated uncertainty", "out-of-domain check"]
    adata = predict_section(model, her2st_dataset["C4"], device="cpu")
    assert "lower" not in adata.layers and "ood_score" not in adata.uns["napari_dkan"]
    assert "seen_by_model" not in adata.uns["napari_dkan"]  # C4 never trained it


def test_fine_tuned_runs_record_their_ancestry(tiny_run_dir: Path, her2st_dataset) -> None:
    from napari_dkan.engine.runs import TrainedModel, ancestry_of

    base = TrainedModel.load(tiny_run_dir)
    lineage = ancestry_of(base)
    assert lineage[-1]["train_sections"] == ["C3"] and lineage[-1]["name"] == tiny_run_dir.name
    child = TrainedModel(tiny_run_dir, {**base.config, "ancestry": lineage,
                                        "training": {"train_sections": ["C5"], "val_sections": ["C4"]}})
    assert child.seen_sections == {"C3": "training", "C5": "training", "C4": "validation"}


# -- the command line ---------------------------------------------------------------------------
def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_reports_coverage_intervals_and_domain_and_attaches_trust_after_the_fact(
        her2st, panels_dir, tmp_path: Path, capsys) -> None:
    import anndata

    from napari_dkan.cli import main
    from napari_dkan.engine.trust import Trust, reliability_from_cv

    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join((panels_dir / "her2st.txt").read_text().split()[:12]) + "\n")
    common = [str(her2st), "--model", "ridge", "--encoder", "tiny", "--device", "cpu", "--panel", str(panel)]
    cv_dir = tmp_path / "cv"
    assert main(["cv", *common, "--sections", "C3", "C4", "C5", "-o", str(cv_dir), "--json"]) == 0
    cv = _last_json(capsys)
    recorded = json.loads((cv_dir / "cv.json").read_text())
    assert len(recorded["folds"][0]["gene_pcc"]) == 12 and len(recorded["panel"]) == 12
    rel = reliability_from_cv(cv_dir)
    assert rel.sections == ["C3", "C4", "C5"] and "leave-one-section-out" in rel.protocol
    fold_r = [f["PCC-ALL"] for f in cv["folds"]]
    assert float(np.nanmean(rel.r)) == pytest.approx(float(np.mean(fold_r)), abs=1e-6)

    run = cv_dir / "fold-C3"  # trained on one of C4, C5 and validated on the other: C3 unseen
    val = json.loads((run / "config.json").read_text())["training"]["val_sections"]
    assert Trust.load(run).missing == []  # written at the end of training
    assert main(["evaluate", str(her2st), "--model", str(run), "--sections", "C3", "--device", "cpu", "--json"]) == 0
    ev = _last_json(capsys)
    for where in (ev["folds"][0], ev["mean"]):
        assert 0.0 < where["COVERAGE-80"] < where["COVERAGE-90"] <= 1.0 and where["WIDTH-90"] > 0
    assert ev["folds"][0]["seen_by_model"] is None and ev["seen_by_model"] == {}  # C3: unseen
    assert main(["evaluate", str(her2st), "--model", str(run), "--sections", val[0], "--device", "cpu", "--json"]) == 0
    ev_seen = _last_json(capsys)  # the validation section: scripts are told, as the text says
    assert ev_seen["folds"][0]["seen_by_model"] == "validation" and ev_seen["seen_by_model"] == {val[0]: "validation"}
    # a level given in per cent is refused before any work, with the fraction to write instead
    with pytest.raises(SystemExit) as refused:
        main(["predict", str(her2st), "--sections", "C3", "--model", str(run), "-o", str(tmp_path / "x.h5ad"),
              "--level", "90"])
    assert refused.value.code == 2 and "write 0.9" in capsys.readouterr().err
    assert not (tmp_path / "x.h5ad").exists()
    # a level beyond what the calibration spots resolve is said, not silently [0, 4] everywhere
    assert main(["predict", str(her2st), "--sections", "C3", "--model", str(run), "--device", "cpu",
                 "-o", str(tmp_path / "y.h5ad"), "--level", "0.999999"]) == 0
    assert "asks for more than the" in capsys.readouterr().out
    out = tmp_path / "c3.h5ad"
    assert main(["predict", str(her2st), "--sections", "C3", "--model", str(run), "--device", "cpu",
                 "-o", str(out), "--level", "0.8", "--json"]) == 0
    pred = _last_json(capsys)
    assert isinstance(pred["ood_score"], float) and pred["out_of_domain"] is False
    adata = anndata.read_h5ad(out)
    assert adata.uns["napari_dkan"]["interval_level"] == 0.8
    assert (adata.layers["upper"] >= adata.layers["lower"]).all()  # never upside down
    inside = (adata.layers["lower"] <= adata.layers["measured"]) & (adata.layers["measured"] <= adata.layers["upper"])
    assert inside.mean() == pytest.approx(ev["folds"][0]["COVERAGE-80"], abs=1e-6)
    assert adata.uns["napari_dkan"]["interval_depth_source"] == "measured"  # C3's own counts
    assert pred["interval_depth"] == pytest.approx(adata.uns["napari_dkan"]["interval_depth"])
    # the same section asked for at a 20× shallower depth: wider intervals, the depth recorded
    shallow = tmp_path / "c3-shallow.h5ad"
    depth = adata.uns["napari_dkan"]["interval_depth"] / 20
    assert main(["predict", str(her2st), "--sections", "C3", "--model", str(run), "--device", "cpu",
                 "-o", str(shallow), "--level", "0.8", "--depth", str(depth), "--json"]) == 0
    assert _last_json(capsys)["interval_depth_source"] == "given"
    wide = anndata.read_h5ad(shallow)
    assert wide.uns["napari_dkan"]["interval_depth"] == pytest.approx(depth, rel=1e-6)
    assert np.mean(wide.layers["upper"] - wide.layers["lower"]) > 1.3 * np.mean(adata.layers["upper"] - adata.layers["lower"])
    assert main(["predict", str(her2st), "--sections", "C3", "--model", str(run), "--device", "cpu",
                 "-o", str(shallow), "--depth", "0"]) == 2
    assert "--depth is the median panel total per spot" in capsys.readouterr().err

    # after the fact: remove the files, attach them again with reliability from the CV folder
    for f in ("reliability.json", "calibration.safetensors", "domain.safetensors"):
        (run / f).unlink()
    assert main(["trust", str(her2st), "--model", str(run), "--cv", str(cv_dir), "--device", "cpu", "--json"]) == 0
    attached = _last_json(capsys)
    assert attached["calibration_sections"] == val
    # version 3: the model error scaled by the out-of-domain score (the default since turn 5)
    assert attached["calibration_version"] == 3 and attached["overdispersion"] >= 1.0
    assert attached["calibration_depth"] > 0
    assert "leave-one-section-out" in attached["reliability"]["protocol"]
    assert set(attached["ood_held_out"]) == set(val)  # one training section: the validation one is held out
    assert Trust.load(run).missing == []
    # recalibrating without the CV folder keeps the CV reliability when asked to
    before = (run / "reliability.json").read_bytes()
    (run / "calibration.safetensors").unlink()
    assert main(["trust", str(her2st), "--model", str(run), "--keep-reliability", "--device", "cpu", "--json"]) == 0
    assert "leave-one-section-out" in _last_json(capsys)["reliability"]["protocol"]
    assert (run / "reliability.json").read_bytes() == before and (run / "calibration.safetensors").is_file()
    assert main(["trust", str(her2st), "--model", str(run), "--keep-reliability", "--cv", str(cv_dir)]) == 2
    assert "choose one" in capsys.readouterr().err


def test_a_cross_validation_that_cannot_stand_for_a_runs_reliability_is_refused(tmp_path: Path) -> None:
    """``trust --cv`` took any folder: a leaky protocol, folds that trained on their own test
    section, another recipe's folds (another panel silently dropped genes), or a single fold
    (a spread of 0: falsely certain). Each is refused, in words."""
    from types import SimpleNamespace

    from napari_dkan.engine.trust import check_cv_folder
    from napari_dkan.io.errors import DataError

    panel = ["A", "B", "C"]

    def fold(cv: Path, name: str, train: list[str], val: list[str], **over: object) -> None:
        config = {"model": "ridge", "features": {"encoder": "tiny"}, "panel": panel, "status": "finished",
                  "training": {"train_sections": train, "val_sections": val}, **over}
        (cv / f"fold-{name}").mkdir(parents=True)
        (cv / f"fold-{name}" / "config.json").write_text(json.dumps(config))

    run = SimpleNamespace(config={"model": "ridge", "features": {"encoder": "tiny"}, "panel": panel},
                          run_dir=tmp_path / "run")
    good = tmp_path / "good"
    fold(good, "C2", ["C3"], ["C4"])
    fold(good, "C3", ["C2"], ["C4"])
    check_cv_folder(good, run)  # an honest two-fold CV of the same recipe: accepted

    single = tmp_path / "single"
    fold(single, "C2", ["C3"], ["C4"])
    fold(single, "C3", ["C2"], ["C4"], status="training")  # still training: not a fold yet
    with pytest.raises(DataError, match="at least two"):
        check_cv_folder(single, run)
    tuned = tmp_path / "tuned"  # fine-tuned folds whose base model saw the test sections
    fold(tuned, "C2", ["C3"], ["C4"], ancestry=[{"train_sections": ["C2", "C3"], "val_sections": ["C4"]}])
    fold(tuned, "C3", ["C2"], ["C4"])
    with pytest.raises(DataError, match="trained or selected on C2"):
        check_cv_folder(tuned, run)
    leaky = tmp_path / "leaky"
    fold(leaky, "C2", ["C3"], ["C2"])  # selected on its own test section
    fold(leaky, "C3", ["C2"], ["C4"])
    with pytest.raises(DataError, match="trained or selected on C2"):
        check_cv_folder(leaky, run)
    paper = tmp_path / "paper"
    fold(paper, "C2", ["C3"], ["C4"])
    fold(paper, "C3", ["C2"], ["C4"])
    (paper / "cv.json").write_text(json.dumps({"protocol": "paper (selected on the test fold: leaky)"}))
    with pytest.raises(DataError, match="leaky protocol"):
        check_cv_folder(paper, run)
    other = tmp_path / "other"
    fold(other, "C2", ["C3"], ["C4"], panel=panel[:2])
    fold(other, "C3", ["C2"], ["C4"], panel=panel[:2])
    with pytest.raises(DataError, match="gene panel differ"):
        check_cv_folder(other, run)
    encoder = tmp_path / "encoder"
    fold(encoder, "C2", ["C3"], ["C4"], features={"encoder": "uni"})
    fold(encoder, "C3", ["C2"], ["C4"], features={"encoder": "uni"})
    with pytest.raises(DataError, match="image encoder differ"):
        check_cv_folder(encoder, run)


def test_reliability_spread_is_unknown_where_fewer_than_two_folds_have_an_r() -> None:
    from napari_dkan.engine.reliability import from_folds

    rel = from_folds(["A", "B"], {"C2": np.array([0.5, np.nan]), "C3": np.array([0.3, 0.4])}, "cv")
    assert rel.spread[0] == pytest.approx(0.1) and np.isnan(rel.spread[1])  # B: one fold only
    assert rel.describe("B").startswith("B — expected r 0.40 on unseen sections")  # no "± 0.00"
    one = from_folds(["A"], {"C2": np.array([0.5])}, "cv")
    assert np.isnan(one.spread).all()


def test_depth_blind_intervals_are_clipped_to_the_target_range_too() -> None:
    """Version-1 calibrations (before depth) returned ŷ ± q·σ unclipped: below 0, and ±inf when
    the level asks for more than the calibration resolves."""
    from napari_dkan.engine.conformal import spot_context
    from napari_dkan.io.expression import TARGET_MAX

    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, (200, 3))
    y = np.clip(p + rng.normal(0, 0.3, p.shape), 0, None)
    cal = calibrate(p, y, spot_context(p, None, None), ["a", "b", "c"])
    lower, upper = cal.bounds(p, spot_context(p, None, None), 0.9)
    assert lower.min() >= 0 and (lower == 0).any() and upper.max() <= TARGET_MAX
    lower, upper = cal.bounds(p, spot_context(p, None, None), 0.9999)  # beyond 100 scores: unbounded
    assert (lower == 0).all() and (upper == pytest.approx(TARGET_MAX))
