"""Ensemble run folders: the weighted mean of their members, self-contained, refused when the
members cannot be averaged, with trust files of their own and no calibration on a member's
training section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_dkan.cli import main
from napari_dkan.engine.checkpoint import CheckpointError
from napari_dkan.engine.data import FeatureSpec
from napari_dkan.engine.runs import RunSpec, TrainedModel, prepare_sections, train_model
from napari_dkan.engine.trainer import TrainSettings
from napari_dkan.io.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FEATURES = FeatureSpec(encoder="tiny")


def _ridge(data, panel, train, val, out: Path) -> Path:  # noqa: ANN001
    spec = RunSpec(model="ridge", preset="tiny", features=FEATURES, settings=TrainSettings(device="cpu"))
    train_model(data, train, val, spec, panel, out)
    return out


@pytest.fixture(scope="module")
def members(tiny_run_dir, her2st_dataset, tmp_path_factory):  # noqa: ANN001, ANN201
    """The tests' tiny DKAN (trained and validated on C3) and two ridge runs on its panel:
    trained on C3 and validated on C4, and trained on C4 and validated on C3."""
    base = tmp_path_factory.mktemp("members")
    dkan = TrainedModel.load(tiny_run_dir)
    spec = RunSpec(model="ridge", preset="tiny", features=FEATURES)
    data = prepare_sections([her2st_dataset[n] for n in ("C3", "C4")], spec, dkan.panel)
    return {"dkan": Path(tiny_run_dir), "ridge_c3": _ridge(data, dkan.panel, ["C3"], ["C4"], base / "ridge-c3"),
            "ridge_c4": _ridge(data, dkan.panel, ["C4"], ["C3"], base / "ridge-c4"), "panel": dkan.panel}


def test_an_ensemble_predicts_the_weighted_mean_of_its_members_and_needs_nothing_outside(
        members, her2st_dataset, tmp_path):
    from napari_dkan.engine.ensemble import EnsembleModel, build_ensemble

    # members copied elsewhere first, then deleted: the ensemble must carry what it needs
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(members["dkan"], a)
    shutil.copytree(members["ridge_c3"], b)
    out = tmp_path / "ens"
    build_ensemble([a, b], out, weights=[1, 3])
    single = [TrainedModel.load(p) for p in (a, b)]
    data = single[0].section_data(her2st_dataset["C2"], device="cpu")
    parts = [m.predict(data, device="cpu") for m in single]
    shutil.rmtree(a)
    shutil.rmtree(b)

    model = TrainedModel.load(out)
    assert isinstance(model, EnsembleModel) and model.kind == "ensemble"
    np.testing.assert_allclose(model.weights, [0.25, 0.75])
    pred = model.predict(data, device="cpu")
    np.testing.assert_allclose(pred, 0.25 * parts[0] + 0.75 * parts[1], rtol=1e-5, atol=1e-6)
    # rows: the same spots' values as the full prediction
    rows = np.array([0, 5, 9])
    np.testing.assert_allclose(model.predict(data, device="cpu", rows=rows), pred[rows], rtol=1e-5, atol=1e-6)
    assert model.n_parameters == sum(m.n_parameters for m in single)
    assert model.panel == single[0].panel
    # progress runs once, 0 → total, over both members
    seen: list[tuple[int, int]] = []
    model.predict(data, device="cpu", progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1] and all(x <= y for (x, _), (y, _) in zip(seen, seen[1:]))
    assert {t for _, t in seen} == {len(pred)}  # it counts spots, not spot × member passes
    # the weights' identity changes with the member weights (cache keys)
    other = build_ensemble([members["dkan"], members["ridge_c3"]], tmp_path / "ens2")
    assert other.weights_sha256 != model.weights_sha256


def test_members_that_cannot_be_averaged_or_folders_that_were_tampered_with_are_refused(
        members, her2st_dataset, tmp_path):
    from napari_dkan.engine.ensemble import build_ensemble

    with pytest.raises(DataError, match="at least two"):
        build_ensemble([members["dkan"]], tmp_path / "one")
    spec = RunSpec(model="ridge", preset="tiny", features=FEATURES)
    data = prepare_sections([her2st_dataset["C3"]], spec, members["panel"][:-1])
    short = _ridge(data, members["panel"][:-1], ["C3"], ["C3"], tmp_path / "short")
    with pytest.raises(DataError, match="gene panel"):
        build_ensemble([members["dkan"], short], tmp_path / "mixed")
    with pytest.raises(DataError, match="positive"):
        build_ensemble([members["dkan"], members["ridge_c3"]], tmp_path / "w", weights=[1, 0])
    ens = build_ensemble([members["dkan"], members["ridge_c3"]], tmp_path / "ens")
    with pytest.raises(DataError, match="not empty"):
        build_ensemble([members["dkan"], members["ridge_c3"]], tmp_path / "ens")
    with pytest.raises(DataError, match="ensemble already"):
        build_ensemble([ens.run_dir, members["ridge_c3"]], tmp_path / "nested")

    # a member's weights replaced after the ensemble was built
    broken = tmp_path / "broken"
    shutil.copytree(ens.run_dir, broken)
    members_dirs = sorted((broken / "members").iterdir())
    shutil.copy2(members["ridge_c4"] / "model.safetensors", members_dirs[1] / "model.safetensors")
    cfg = json.loads((members_dirs[1] / "config.json").read_text())
    cfg["files"]["model.safetensors"] = TrainedModel.load(members["ridge_c4"]).weights_sha256
    (members_dirs[1] / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not the ones the ensemble was built with"):
        TrainedModel.load(broken)
    # a member folder outside the ensemble
    outside = tmp_path / "outside"
    shutil.copytree(ens.run_dir, outside)
    cfg = json.loads((outside / "config.json").read_text())
    cfg["members"][0]["dir"] = "../a"
    (outside / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="inside the ensemble"):
        TrainedModel.load(outside)


def test_an_ensemble_calibrates_only_on_sections_no_member_trained_on(members, her2st_dataset, tmp_path):
    from napari_dkan.engine.ensemble import build_ensemble
    from napari_dkan.engine.trust import attach_from_dataset

    # C4 validates ridge_c3 but trains ridge_c4 (and C3 the reverse): nothing is left to calibrate on
    crossed = build_ensemble([members["ridge_c3"], members["ridge_c4"]], tmp_path / "crossed")
    assert crossed.config["training"] == {"train_sections": ["C3", "C4"], "val_sections": []}
    assert crossed.seen_sections == {"C3": "training", "C4": "training"}
    # the tiny DKAN validated on its own training section: not a calibration section either
    assert build_ensemble([members["dkan"], members["ridge_c3"]],
                          tmp_path / "mixed").config["training"]["val_sections"] == []
    assert not (crossed.run_dir / "domain.safetensors").exists()  # the members' training data differ
    # a member fine-tuned from a base that trained on C4: C4 is no calibration section either
    tuned = tmp_path / "tuned"
    shutil.copytree(members["ridge_c3"], tuned)
    cfg = json.loads((tuned / "config.json").read_text())
    cfg["ancestry"] = [{"run": "base", "train_sections": ["C4"], "val_sections": ["C5"]}]
    (tuned / "config.json").write_text(json.dumps(cfg))
    with_base = build_ensemble([members["ridge_c3"], tuned], tmp_path / "with-base")
    assert with_base.config["training"]["val_sections"] == []
    assert with_base.seen_sections == {"C4": "training", "C3": "training", "C5": "validation"}
    # two members validated on C4, trained on C3: C4 calibrates the ensemble's own prediction
    twin = tmp_path / "twin"
    shutil.copytree(members["ridge_c3"], twin)
    ens = build_ensemble([members["ridge_c3"], twin], tmp_path / "ens")
    assert ens.config["training"] == {"train_sections": ["C3"], "val_sections": ["C4"]}
    # the files that depend only on the (shared) training data hold for the ensemble at once
    assert (members["ridge_c3"] / "domain.safetensors").is_file()
    for name in ("domain.safetensors", "stain.json"):
        if (members["ridge_c3"] / name).is_file():
            assert (ens.run_dir / name).read_bytes() == (members["ridge_c3"] / name).read_bytes(), name
    assert ens.trust.domain is not None and ens.trust.calibration is None
    trust = attach_from_dataset(ens, her2st_dataset, device="cpu")
    assert trust.calibration is not None and trust.calibration.sections == ["C4"]
    for name in ("calibration.safetensors", "reliability.json", "domain.safetensors"):
        assert (ens.run_dir / name).is_file(), name
        assert not list((ens.run_dir / "members").rglob(name)), f"{name} belongs to the ensemble"
    again = TrainedModel.load(ens.run_dir)
    assert again.trust.reliability is not None and again.trust.calibration is not None


def test_cli_builds_an_ensemble_and_its_cross_validation_and_refuses_leaky_folds(members, her2st, tmp_path, capsys):
    from napari_dkan.engine.trust import reliability_from_cv

    out = tmp_path / "ens"
    assert main(["ensemble", str(members["dkan"]), str(members["ridge_c3"]), "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [m["model"] for m in info["members"]] == ["dkan", "ridge"] and info["model"] == "ensemble"
    assert main(["evaluate", str(her2st), "--model", str(out), "--sections", "C2", "--device", "cpu", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["folds"][0]

    # two "cross-validations" with one fold each: C2, held out by every member
    cvs = []
    for key in ("dkan", "ridge_c3"):
        cv = tmp_path / f"cv-{key}"
        shutil.copytree(members[key], cv / "fold-C2")
        cvs.append(str(cv))
    ens_cv = tmp_path / "cv-ens"
    assert main(["ensemble", "--cv", *cvs, "-o", str(ens_cv), "--dataset", str(her2st), "--device", "cpu",
                 "--json"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["folds"][0]["fold"] == "C2"
    assert scored["folds"][0]["PCC-ALL"] == pytest.approx(evaluated["PCC-ALL"], abs=1e-6)
    recorded = json.loads((ens_cv / "cv.json").read_text())
    assert [f["fold"] for f in recorded["folds"]] == ["C2"] and len(recorded["folds"][0]["gene_pcc"]) == len(members["panel"])
    from napari_dkan.io.errors import DataError

    with pytest.raises(DataError, match="at least two"):  # one fold: no spread, no reliability
        reliability_from_cv(ens_cv)

    # a fold whose models trained on the section it should hold out is refused
    leaky = []
    for key in ("dkan", "ridge_c3"):
        cv = tmp_path / f"leaky-{key}"
        shutil.copytree(members[key], cv / "fold-C3")
        leaky.append(str(cv))
    assert main(["ensemble", "--cv", *leaky, "-o", str(tmp_path / "leaky"), "--dataset", str(her2st),
                 "--device", "cpu"]) == 2
    assert "the section it should hold out" in capsys.readouterr().err
    assert not (tmp_path / "leaky").exists()  # refused before anything was written: nothing blocks a retry
    # a scoring that fails after the folds were built leaves nothing behind either
    assert main(["ensemble", "--cv", *cvs, "-o", str(tmp_path / "unscored"), "--dataset", str(tmp_path / "nowhere"),
                 "--device", "cpu"]) != 0
    capsys.readouterr()
    assert not (tmp_path / "unscored").exists()
    (tmp_path / "existing").mkdir()  # a folder that was there: kept, less the folds written into it
    assert main(["ensemble", "--cv", *cvs, "-o", str(tmp_path / "existing"), "--dataset", str(tmp_path / "nowhere"),
                 "--device", "cpu"]) != 0
    capsys.readouterr()
    assert (tmp_path / "existing").is_dir() and not any((tmp_path / "existing").iterdir())


def test_fine_tuning_an_ensemble_starts_from_its_dkan_member(members, tmp_path):
    from napari_dkan._widgets.training_plan import run_training_settings
    from napari_dkan.engine.ensemble import build_ensemble
    from napari_dkan.engine.ensemble_folder import fine_tune_member

    ens = build_ensemble([members["ridge_c3"], members["dkan"]], tmp_path / "ens")
    member = fine_tune_member(ens.run_dir)
    assert member is not None and TrainedModel.load(member).kind == "dkan"
    assert run_training_settings(ens.run_dir)["lr"] == TrainedModel.load(members["dkan"]).config["training"]["lr"]
    assert fine_tune_member(members["dkan"]) is None
    with pytest.raises(DataError, match="fine-tune a member"):
        ens.state_dict()


def test_the_dock_names_an_ensemble_and_its_networks(members, tmp_path):
    from napari_dkan._widgets.dock import describe_model
    from napari_dkan.engine.ensemble import build_ensemble

    ens = build_ensemble([members["dkan"], members["ridge_c3"]], tmp_path / "ens", weights=[3, 1])
    text, tooltip = describe_model(ens.describe())
    assert text.startswith("ensemble of DKAN + ridge · ") and "learned from sections C3" in text
    assert "dkan (tiny preset), weight 0.75" in tooltip and "ridge, weight 0.25" in tooltip
    assert "text encoder" in tooltip  # the DKAN member reads gene texts
    info = ens.describe()
    info["members"] = info["members"] * 3  # six networks, three of each family: counted, not listed
    assert describe_model(info)[0].startswith("ensemble of 3 DKAN + 3 ridge · ")
