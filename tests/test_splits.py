"""Fold and validation splits, and the no-pickle optimizer checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dkan.engine.checkpoint import (
    join_optimizer_state,
    load_tensors,
    save_tensors,
    split_optimizer_state,
)
from napari_dkan.engine.data import SectionData
from napari_dkan.engine.splits import inner_validation, make_folds
from napari_dkan.io.errors import DataError


def _sd(name, patient, n=40):
    rows, cols = np.divmod(np.arange(n), 8)
    return SectionData(name, patient, np.array([f"{name}{i}" for i in range(n)]),
                       np.column_stack([rows, cols]), np.column_stack([cols * 10.0, rows * 10.0]),
                       np.zeros((n, 4), np.float32), np.zeros((n, 25, 4), np.float16),
                       np.zeros((n, 25), bool), y=np.zeros((n, 3), np.float32))


def test_section_patient_and_kfold_folds():
    names = ["B4", "C2", "C3", "C4", "C5"]
    patients = {n: n[0] for n in names}
    by_sec = make_folds(names, patients, "sections")
    assert [f.test for f in by_sec] == [[n] for n in names]
    assert by_sec[0].train == ["C2", "C3", "C4", "C5"]
    by_pat = make_folds(names, patients, "patients")
    assert [f.test for f in by_pat] == [["B4"], ["C2", "C3", "C4", "C5"]]
    kf = make_folds(names, patients, "kfold:2", seed=2021)
    assert sorted(n for f in kf for n in f.test) == sorted(names)
    assert make_folds(names, patients, "kfold:2", seed=2021)[0].test == kf[0].test  # seeded
    with pytest.raises(DataError, match="3 folds need at least 3 patients"):
        make_folds(names, patients, "kfold:3")
    with pytest.raises(DataError, match="unknown fold scheme"):
        make_folds(names, patients, "random")


def test_inner_validation_never_uses_other_sections_and_is_seeded():
    train = [_sd("C3", "C"), _sd("C4", "C"), _sd("C5", "C")]
    fit_a, val_a = inner_validation(train, seed=2021)
    fit_b, val_b = inner_validation(train, seed=2021)
    assert [s.name for s in val_a] == [s.name for s in val_b] and len(val_a) == 1
    assert {s.name for s in fit_a} | {s.name for s in val_a} == {"C3", "C4", "C5"}
    fit_p, val_p = inner_validation([*train, _sd("B4", "B")], by="patients", seed=1)
    assert len({s.patient for s in val_p}) == 1 and not {s.patient for s in val_p} & {s.patient for s in fit_p}


def test_single_section_holds_out_a_spatial_block():
    (fit_part,), (val_part,) = inner_validation([_sd("C2", "C", n=80)])
    assert len(val_part) >= 10 and len(fit_part) + len(val_part) == 60  # a guard band of 2 × 10 spots
    # a band of columns, one column apart on this square grid: no shared neighbour, so no
    # smoothed target on one side averages a spot of the other
    assert val_part.positions[:, 1].min() - fit_part.positions[:, 1].max() == 3
    assert val_part.name == "C2[val]"
    with pytest.raises(DataError, match="too few to hold out"):
        inner_validation([_sd("tiny", "T", n=12)])


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    tensors, rest = split_optimizer_state(opt.state_dict())
    save_tensors(tmp_path / "o.safetensors", tensors)
    back = join_optimizer_state(load_tensors(tmp_path / "o.safetensors"), rest)
    opt2 = torch.optim.Adam(torch.nn.Linear(4, 3).parameters(), lr=1e-3)
    opt2.load_state_dict(back)
    for k in (0, 1):
        torch.testing.assert_close(opt2.state_dict()["state"][k]["exp_avg"], opt.state_dict()["state"][k]["exp_avg"])
    assert float(opt2.state_dict()["state"][0]["step"]) == 1.0
