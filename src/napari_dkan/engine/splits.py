"""Fold and validation splits: which sections train, which select, which test.

Selection never looks at the test fold (unlike the reference code): the inner validation set is
taken from the training sections — one section (or one patient's sections) drawn with the run's
seed.  With a single training section, a spatial block of it is held out instead: the spots in
the last ~20% of array columns, a contiguous band.  Targets are smoothed over each spot's grid
neighbours (io/expression.py), so a guard band is left out between the two sides: a spot is kept
only when no spot of the other side is among the neighbours it is smoothed with.  No validation
target then averages a training spot's counts, and no training target a validation spot's.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_dkan.engine.data import SectionData
from napari_dkan.io.errors import DataError

VAL_FRACTION = 0.2
MIN_VAL_SPOTS = 10
#: larger validation blocks tried, in turn, when the guard band leaves too few validation spots
_FALLBACK_FRACTIONS = (0.25, 0.3, 0.35, 0.4)


@dataclass
class Fold:
    name: str
    test: list[str]
    train: list[str]


def make_folds(names: Sequence[str], patients: dict[str, str], by: str = "sections", seed: int = 2021) -> list[Fold]:
    """Leave-one-section-out, leave-one-patient-out, or ``kfold:K`` seeded folds of patients."""
    names = list(names)
    if by == "sections":
        return [Fold(n, [n], [m for m in names if m != n]) for n in names]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(patients[n], []).append(n)
    if by == "patients":
        return [Fold(p, secs, [m for m in names if m not in secs]) for p, secs in groups.items()]
    if by.startswith("kfold:"):
        from sklearn.model_selection import KFold

        k = int(by.split(":", 1)[1])
        pats = list(groups)
        if k > len(pats):
            raise DataError(f"{k} folds need at least {k} patients; there are {len(pats)}")
        folds = []
        for i, (_, test_idx) in enumerate(KFold(k, shuffle=True, random_state=seed).split(pats)):
            test = [s for j in test_idx for s in groups[pats[j]]]
            folds.append(Fold(f"fold{i + 1}", test, [m for m in names if m not in test]))
        return folds
    raise DataError(f"unknown fold scheme {by!r}: use sections, patients or kfold:K")


def inner_validation(
    train: Sequence[SectionData], by: str = "sections", seed: int = 2021
) -> tuple[list[SectionData], list[SectionData]]:
    """Split training sections into (fit, validation) without touching any test data."""
    train = list(train)
    if not train:
        raise DataError("no training sections")
    if len(train) == 1:
        return _spatial_holdout(train[0])
    rng = random.Random(seed)
    if by == "patients":
        patients = sorted({s.patient for s in train})
        if len(patients) > 1:
            held = rng.choice(patients)
            return [s for s in train if s.patient != held], [s for s in train if s.patient == held]
    held_name = rng.choice(sorted(s.name for s in train))
    return [s for s in train if s.name != held_name], [s for s in train if s.name == held_name]


def _spatial_holdout(section: SectionData) -> tuple[list[SectionData], list[SectionData]]:
    fit_idx, val_idx = spatial_holdout_index(section.name, section.positions)
    fit_part = section.subset(fit_idx)
    val_part = section.subset(val_idx)
    fit_part.name, val_part.name = f"{section.name}[fit]", f"{section.name}[val]"
    return [fit_part], [val_part]


def spatial_holdout_index(name: str, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) spot indices of a single section's spatial hold-out, guard band left out;
    raises :class:`DataError` when the section is too small for one."""
    n = len(positions)
    if n < 2 * MIN_VAL_SPOTS:
        raise DataError(
            f"section {name} has only {n} spots: too few to hold out a validation block "
            f"(need at least {2 * MIN_VAL_SPOTS}); add a second section for validation"
        )
    cols = positions[:, 1]
    for fraction in (VAL_FRACTION, *_FALLBACK_FRACTIONS):
        cut = np.quantile(cols, 1 - fraction)
        side = cols > cut
        if side.sum() < MIN_VAL_SPOTS:
            side = cols >= cut
        fit_idx, val_idx = guarded_sides(positions, side)
        if len(val_idx) >= MIN_VAL_SPOTS and len(fit_idx) >= MIN_VAL_SPOTS:
            return fit_idx, val_idx
    raise DataError(
        f"section {name}: a validation block with a guard band against target smoothing "
        f"leaves fewer than {MIN_VAL_SPOTS} spots on a side; add a second section for validation"
    )


def guarded_sides(positions: np.ndarray, side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (``~side``, ``side``) spots that have no spot of the other side within the
    smoothing reach of their grid — the guard band between them is dropped."""
    from napari_dkan.io.spots import layout_of, neighbour_reach

    reach_r, reach_c = neighbour_reach(layout_of(positions[:, 0], positions[:, 1]))
    where = {(int(r), int(c)): bool(s) for (r, c), s in zip(positions, side)}
    touches = np.zeros(len(positions), dtype=bool)
    for i, (r, c) in enumerate(positions):
        mine = bool(side[i])
        touches[i] = any(where.get((int(r) + dr, int(c) + dc), mine) != mine
                         for dr in range(-reach_r, reach_r + 1) for dc in range(-reach_c, reach_c + 1))
    return np.flatnonzero(~side & ~touches), np.flatnonzero(side & ~touches)
