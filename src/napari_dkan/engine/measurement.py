"""How a measured target depends on the sequencing depth of its section (method.md §4).

A measured target is a noisy reading: the panel counts c of a spot, scaled by the spot's panel
total N, ``log10(1 + 10⁴·c/N)``, then averaged over the spot and its grid neighbours.  At a
shallow depth (HER2ST B4: median panel total 150 against ≈3,000 on patient C) most counts are
0 or 1, so the reading is far noisier and, on average, lower than at the depth the model
learned from.  This module turns a prediction ŷ into the mean and variance of the reading at a
given depth:

- the rate of gene g at a spot is p = (10^ŷ − 1)/10⁴, renormalised over the panel;
- counts are Poisson with mean N·p, N drawn from the section's **depth profile** (quantiles of
  its per-spot panel totals, a property of the assay; per-spot totals are not used: they carry
  cellularity, and a section without measurements has none);
- the depth is shared by a spot and its neighbours (it varies smoothly across tissue), so the
  mixture over depth is taken after the neighbour average;
- counts are over-dispersed relative to Poisson: the variance is multiplied by a factor
  estimated on the calibration sections from how much single spots scatter around their
  neighbours (≈1.4 on HER2ST at either depth).

The expectations and variances of one count's reading are tabulated once per depth on a grid of
rates, so a 10,000-spot × 250-gene slide takes seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from napari_dkan.io.expression import TARGET_SUM

N_QUANTILES = 9
_GRID = np.exp(np.linspace(np.log(1e-4), np.log(5e3), 300))
_GENE_CHUNK = 64
SPOT_DEPTH_BINS = 16


@dataclass(frozen=True)
class DepthProfile:
    """A section's sequencing depth: quantiles of its spots' panel totals, and optionally each
    spot's own (:meth:`of_spots`: the reading of a spot is then taken at its own depth)."""

    quantiles: np.ndarray  # (K,) panel totals at the mid-quantiles (k + ½)/K
    source: str  # "measured", "measured per spot", "calibration" or "given"
    #: (N,) each spot's depth, shared with its grid neighbours; None: the profile's mixture
    per_spot: np.ndarray | None = None

    @classmethod
    def of_spots(cls, panel_counts: np.ndarray, neighbours: np.ndarray) -> DepthProfile:
        """Each spot at its own depth: the geometric mean of the panel totals over the spot and
        its grid neighbours (``neighbours`` as in :func:`grid_neighbours`; depth varies smoothly
        across tissue, and the target is a neighbourhood average)."""
        profile = cls.of_counts(panel_counts, "measured per spot")
        totals = np.maximum(np.asarray(panel_counts, dtype=np.float64).sum(axis=1), 1.0)
        valid = neighbours >= 0
        log_mean = (np.log(totals)[np.where(valid, neighbours, 0)] * valid).sum(axis=1) / valid.sum(axis=1)
        return cls(profile.quantiles, profile.source, np.exp(log_mean))

    @classmethod
    def of_counts(cls, panel_counts: np.ndarray, source: str = "measured") -> DepthProfile:
        totals = np.asarray(panel_counts, dtype=np.float64).sum(axis=1)
        if len(totals) == 0:
            raise ValueError("a depth profile needs at least one spot with counts")
        return cls(np.quantile(totals, (np.arange(N_QUANTILES) + 0.5) / N_QUANTILES), source)

    @property
    def median(self) -> float:
        return float(np.median(self.quantiles))

    def scaled_to(self, median: float) -> DepthProfile:
        """The same shape of profile at another median panel total (a user's ``--depth``)."""
        if not median > 0:
            raise ValueError(f"a depth is a positive panel total per spot, got {median}")
        return DepthProfile(self.quantiles * (median / max(self.median, 1e-9)), "given")


@lru_cache(maxsize=1)
def _poisson_grid() -> tuple[np.ndarray, np.ndarray]:
    """Counts 0…C and their Poisson probabilities at each rate of the grid (grid × counts)."""
    from scipy.stats import poisson

    top = _GRID.max()
    counts = np.arange(int(top + 12 * np.sqrt(top) + 30) + 1, dtype=np.float64)
    return counts, poisson.pmf(counts[None, :], _GRID[:, None])


def _reading_tables(depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E and Var of log10(1 + 10⁴·c/depth) for c ~ Poisson(λ), λ on the grid, per depth
    (depths × grid each); a spot without panel counts reads 0 everywhere."""
    counts, pmf = _poisson_grid()
    depths = np.asarray(depths, dtype=np.float64)
    scale = np.divide(TARGET_SUM, depths, out=np.zeros_like(depths), where=depths > 0)
    reading = np.log10(1.0 + counts[:, None] * scale[None, :])  # counts × depths
    mean = pmf @ reading
    return mean.T, np.maximum(pmf @ reading**2 - mean**2, 0.0).T


def rates(pred: np.ndarray) -> np.ndarray:
    """Per spot, the panel proportions a prediction in the target space stands for."""
    p = np.clip((10.0 ** np.asarray(pred, dtype=np.float64) - 1.0) / TARGET_SUM, 1e-7, None)
    return p / p.sum(axis=1, keepdims=True)


def reading_moments(pred: np.ndarray, neighbours: np.ndarray, profile: DepthProfile,
                    overdispersion: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance (N × G) of the measured, neighbour-averaged target at ``profile``'s
    depth for the rates of ``pred``; ``neighbours``: N × K grid neighbours with the spot itself,
    −1 where absent (one column: no smoothing)."""
    from scipy import sparse

    if profile.per_spot is not None:
        return _moments_per_spot(pred, neighbours, profile.per_spot, overdispersion)
    p = rates(pred)
    valid = neighbours >= 0
    count = valid.sum(axis=1).astype(np.float64)
    spot, slot = np.nonzero(valid)
    average = sparse.csr_matrix((1.0 / count[spot], (spot, neighbours[spot, slot])), shape=(len(p), len(p)))
    average_var = sparse.csr_matrix((1.0 / count[spot] ** 2, (spot, neighbours[spot, slot])), shape=(len(p), len(p)))
    e_tabs, v_tabs = _reading_tables(profile.quantiles)
    mean = np.zeros_like(p)
    second = np.zeros_like(p)
    for lo in range(0, p.shape[1], _GENE_CHUNK):
        cols = slice(lo, lo + _GENE_CHUNK)
        for e_tab, v_tab, depth in zip(e_tabs, v_tabs, profile.quantiles):
            e, v = _read_tables(e_tab, v_tab, depth * p[:, cols], depth)
            m = average @ e
            var = overdispersion * (average_var @ v)
            mean[:, cols] += m
            second[:, cols] += var + m**2
    k = len(profile.quantiles)
    mean /= k
    return mean, np.maximum(second / k - mean**2, 0.0)


def _read_tables(e_tab: np.ndarray, v_tab: np.ndarray, lam: np.ndarray,
                 depth: float) -> tuple[np.ndarray, np.ndarray]:
    """One count's reading mean and variance at Poisson rates ``lam`` (a section of ``depth``):
    linear interpolation of the depth's tables on the grid, uniform in log λ; above the grid
    (a very deep section) the large-count limit — the reading is log10(1 + λ·s), s = 10⁴/depth,
    with variance λ·(s / ((1 + λ·s)·ln 10))² — where clipping λ to the grid's top once moved
    deep sections' intervals away from the prediction."""
    log_grid = np.log(_GRID)
    at = (np.log(np.clip(lam, _GRID[0], _GRID[-1])) - log_grid[0]) / (log_grid[1] - log_grid[0])
    i = np.minimum(at.astype(np.int64), len(_GRID) - 2)
    w = at - i
    mean, var = e_tab[i] * (1.0 - w) + e_tab[i + 1] * w, v_tab[i] * (1.0 - w) + v_tab[i + 1] * w
    big = lam > _GRID[-1]
    if np.any(big) and depth > 0:
        x = lam * (TARGET_SUM / depth)
        mean = np.where(big, np.log10(1.0 + x), mean)
        var = np.where(big, lam * ((TARGET_SUM / depth) / ((1.0 + x) * np.log(10.0))) ** 2, var)
    return mean, var


def _moments_per_spot(pred: np.ndarray, neighbours: np.ndarray, depths: np.ndarray,
                      overdispersion: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reading_moments` with each spot at its own depth: spots are grouped into
    :data:`SPOT_DEPTH_BINS` equal-count bins of log depth, each read at its bin's geometric
    median depth (a spot's neighbours are read at the spot's depth, as in the profile case)."""
    depths = np.asarray(depths, dtype=np.float64)
    if len(depths) != len(pred):
        raise ValueError(f"{len(depths)} spot depths for {len(pred)} spots")
    p = rates(pred)
    log_d = np.log(np.maximum(depths, 1.0))
    edges = np.quantile(log_d, np.linspace(0.0, 1.0, SPOT_DEPTH_BINS + 1))
    which = np.clip(np.searchsorted(edges, log_d, side="right") - 1, 0, SPOT_DEPTH_BINS - 1)
    bins = np.unique(which)
    at = np.array([float(np.exp(np.median(log_d[which == b]))) for b in bins])
    e_tabs, v_tabs = _reading_tables(at)
    mean = np.zeros_like(p)
    var = np.zeros_like(p)
    for b, depth, e_tab, v_tab in zip(bins, at, e_tabs, v_tabs):
        rows = np.flatnonzero(which == b)
        nbr = neighbours[rows]
        valid = nbr >= 0
        sub, local = np.unique(np.where(valid, nbr, nbr[:, :1]), return_inverse=True)
        local = local.reshape(nbr.shape)
        e, v = _read_tables(e_tab, v_tab, depth * p[sub], depth)  # (S, G) one reading at this depth
        count = valid.sum(axis=1)[:, None].astype(np.float64)
        mask = valid[:, :, None]
        mean[rows] = (e[local] * mask).sum(axis=1) / count
        var[rows] = overdispersion * (v[local] * mask).sum(axis=1) / count**2
    return mean, var


def overdispersion(panel_counts: list[np.ndarray], neighbours: list[np.ndarray]) -> float:
    """How much single spots scatter around their neighbours' rate, relative to Poisson: the
    pooled ratio of the readings' squared deviation to the Poisson variance (at least 1)."""
    spread = poisson_var = 0.0
    for counts, nbr in zip(panel_counts, neighbours):
        counts = np.asarray(counts, dtype=np.float64)
        totals = counts.sum(axis=1)
        share = np.divide(counts, totals[:, None], out=np.zeros_like(counts), where=totals[:, None] > 0)
        others = nbr[:, 1:]  # column 0 is the spot itself
        valid = others >= 0
        n_valid = valid.sum(axis=1)
        keep = (totals > 0) & (n_valid >= 4)
        if not keep.any():
            continue
        around = (share[np.where(valid, others, 0)] * valid[..., None]).sum(axis=1) / np.maximum(n_valid, 1)[:, None]
        reading = np.log10(1.0 + TARGET_SUM * share)
        depths = np.unique(totals[keep])
        e_tabs, v_tabs = _reading_tables(depths)
        for depth, e_tab, v_tab in zip(depths, e_tabs, v_tabs):
            rows = keep & (totals == depth)
            lam = np.log(np.clip(depth * around[rows], _GRID[0], _GRID[-1]))
            spread += float(((reading[rows] - np.interp(lam, np.log(_GRID), e_tab)) ** 2).sum())
            poisson_var += float(np.interp(lam, np.log(_GRID), v_tab).sum())
    return max(1.0, spread / poisson_var) if poisson_var > 0 else 1.0


def grid_neighbours(positions: np.ndarray, smoothed: bool = True) -> np.ndarray:
    """Each spot with its existing grid neighbours (the targets' smoothing), from array
    (row, col) positions; only the spot itself when the targets are not smoothed."""
    from napari_dkan.io.spots import grid_neighbour_index, layout_of

    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    if not smoothed or len(positions) == 0:
        return np.arange(len(positions))[:, None]
    layout = layout_of(positions[:, 0], positions[:, 1])
    return grid_neighbour_index(positions[:, 0], positions[:, 1], layout, include_self=True)
