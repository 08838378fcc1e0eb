"""``napari-dkan train / cv / evaluate / predict`` end to end on real HER2ST sections (tiny sizes)."""

from __future__ import annotations

import json

import anndata
import numpy as np
import pytest

from napari_dkan.cli import main
from napari_dkan.engine.collapse import COLLAPSE_KEYS

TINY = ["--preset", "tiny", "--encoder", "tiny", "--device", "cpu", "--epochs", "2"]
METRICS = ("MAE", "MSE", "PCC-ALL", "PCC-HPG", "PCC-HEG", "PCC-HVG")


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def panel_file(tmp_path_factory, panels_dir):
    f = tmp_path_factory.mktemp("panel") / "panel.txt"
    f.write_text("\n".join((panels_dir / "her2st.txt").read_text().split()[:12]) + "\n")
    return f


@pytest.mark.parametrize("model", ["dkan", "ridge"])
def test_train_then_evaluate_matches_the_cv_fold(model, her2st, panel_file, tmp_path, capsys):
    common = [str(her2st), "--model", model, *TINY, "--panel", str(panel_file)]
    assert main(["cv", *common, "--sections", "C2", "C3", "C4", "--json"]) == 0
    cv = _json(capsys)
    assert set(METRICS) | set(COLLAPSE_KEYS) <= set(cv["mean"]) == set(cv["std"])
    assert [f["fold"] for f in cv["folds"]] == ["C2", "C3", "C4"]
    assert "inner validation" in cv["protocol"]
    run = tmp_path / "run"
    assert main(["train", *common, "--sections", "C2", "C3", "-o", str(run), "--json"]) == 0
    trained = _json(capsys)
    assert trained["val_sections"] == cv["folds"][2]["val_sections"]
    # the parameter count is reported, and is the trained network's own
    from napari_dkan.engine.runs import TrainedModel

    net = TrainedModel.load(run)
    assert trained["parameters"] == cv["folds"][2]["parameters"] == net.n_parameters > 0
    if model == "ridge":
        assert net.n_parameters == 12 * (net._net.coef.shape[0] + 1)
    else:
        assert net.n_parameters == sum(p.numel() for p in net._net.parameters())
    assert main(["evaluate", str(her2st), "--model", str(run), "--sections", "C4", "--device", "cpu",
                 "--reference-sections", "C2", "C3", "C4", "--json"]) == 0
    ev = _json(capsys)
    fold = cv["folds"][2]
    # HPG is ranked within folds, so one fold alone picks its own genes; every other metric matches
    for key in ("MAE", "MSE", "PCC-ALL", "PCC-HEG", "PCC-HVG", *COLLAPSE_KEYS):
        assert ev["folds"][0][key] == pytest.approx(fold[key], rel=1e-5, abs=1e-6), key


def test_interrupted_train_resumes(her2st, panel_file, tmp_path, capsys, monkeypatch):
    from napari_dkan.engine import trainer

    run = tmp_path / "run"
    args = ["train", str(her2st), "--model", "triplex", *TINY[:-1], "4", "--panel", str(panel_file),
            "--sections", "C2", "C3", "-o", str(run), "--json"]
    real_save = trainer._save_state
    calls = {"n": 0}

    def interrupting(*a, **kw):
        real_save(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second epoch was saved

    monkeypatch.setattr(trainer, "_save_state", interrupting)
    assert main(args) == 130
    capsys.readouterr()
    monkeypatch.setattr(trainer, "_save_state", real_save)
    assert main(args) == 0
    out = _json(capsys)
    assert out["epochs_run"] == 4 and out["status"] == "finished"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["result"]["resumed_from"] == 2


def test_corrupted_checkpoint_is_reported(her2st, panel_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(her2st), "--model", "ridge", *TINY, "--panel", str(panel_file),
                 "--sections", "C2", "C3", "-o", str(run)]) == 0
    (run / "model.safetensors").write_bytes(b"\x00" * 64)
    capsys.readouterr()
    assert main(["evaluate", str(her2st), "--model", str(run), "--sections", "C4"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_predict_section_and_lattice_to_h5ad(her2st, wsi_dir, panel_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(her2st), "--model", "dkan", *TINY, "--panel", str(panel_file),
                 "--sections", "C3", "-o", str(run)]) == 0
    out = tmp_path / "c2.h5ad"
    assert main(["predict", str(her2st), "--sections", "C2", "--model", str(run), "--device", "cpu",
                 "-o", str(out), "--json"]) == 0
    info = _json(capsys)
    ad = anndata.read_h5ad(out)
    assert info["spots"] == ad.n_obs == 187 and list(ad.var_names) == panel_file.read_text().split()
    assert ad.obsm["spatial"].shape == (187, 2) and "measured" in ad.layers
    assert np.isfinite(ad.X).all() and json.loads(ad.uns["napari_dkan"]["model"])["model"] == "dkan"
    assert (ad.X >= 0).all() and info["raised_to_0"] == ad.uns["napari_dkan"]["raised_to_0"]
    # a prediction below 0 means "not detected": written as 0 (as the dock exports it), and counted
    from napari_dkan.engine.predict import predict_section
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io import open_dataset

    model = TrainedModel.load(run)
    raw = model.predict(model.section_data(open_dataset(her2st)["C2"], device="cpu"), device="cpu")
    model.predict = lambda *a, **k: raw - 1.0  # undershoots wherever a value is under 1
    low = predict_section(model, open_dataset(her2st)["C2"], device="cpu")
    assert low.uns["napari_dkan"]["raised_to_0"] == int((raw < 1.0).sum()) > 0
    np.testing.assert_allclose(low.X, np.maximum(raw - 1.0, 0.0), rtol=1e-6)
    model.predict = lambda *a, **k: raw + 3.0  # overshoots past the largest value a gene can take
    high = predict_section(model, open_dataset(her2st)["C2"], device="cpu")
    assert high.uns["napari_dkan"]["lowered_to_max"] == int((raw + 3.0 > np.log10(1e4 + 1)).sum()) > 0
    assert high.X.max() == pytest.approx(np.log10(1e4 + 1))
    lat = tmp_path / "cmu.h5ad"
    assert main(["predict", str(wsi_dir / "CMU-1-Small-Region.svs"), "--model", str(run),
                 "--device", "cpu", "-o", str(lat)]) == 0
    ad2 = anndata.read_h5ad(lat)
    assert ad2.n_obs > 50 and "measured" not in ad2.layers
    assert ad2.uns["spatial"]["CMU-1-Small-Region"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(55 / 0.499)


def test_paper_protocol_needs_and_labels_a_test_fold(her2st, panel_file, tmp_path, capsys):
    base = ["train", str(her2st), "--model", "ridge", *TINY, "--panel", str(panel_file),
            "--sections", "C2", "-o", str(tmp_path / "r"), "--paper-protocol"]
    assert main(base) == 2
    assert "--test-sections" in capsys.readouterr().err
    assert main([*base, "--test-sections", "C3", "--json"]) == 0
    assert "leaky" in _json(capsys)["protocol"]


def test_cv_reruns_chosen_folds_identically(her2st, panel_file):
    """What ``scripts/train_default_model.py --verify`` relies on: a fold re-run alone is the same fold."""
    from napari_dkan.engine.cv import cross_validate
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec
    from napari_dkan.io import open_dataset
    from napari_dkan.io.errors import DataError

    ds = open_dataset(her2st)
    panel = panel_file.read_text().split()
    spec = RunSpec.for_preset("dkan", "tiny", features=FeatureSpec(encoder="tiny"))
    spec.settings.epochs, spec.settings.device = 2, "cpu"
    full = cross_validate(ds, spec, "sections", ["C2", "C3", "C4"], panel=panel).to_dict()
    one = cross_validate(ds, spec, "sections", ["C2", "C3", "C4"], panel=panel, only_folds=["C3"]).to_dict()
    assert [f["fold"] for f in one["folds"]] == ["C3"]
    for key in ("MAE", "MSE", "PCC-ALL"):
        assert one["folds"][0][key] == pytest.approx(full["folds"][1][key], rel=1e-6), key
    with pytest.raises(DataError, match="no fold named B9"):
        cross_validate(ds, spec, "sections", ["C2", "C3"], panel=panel, only_folds=["B9"])


def test_cv_folds_run_apart_into_one_folder_keep_one_full_record(her2st, panel_file, tmp_path, caplog):
    """Processes sharing a folder with ``only_folds`` each rewrite cv.json: the record must cover
    every finished fold of the run (it once held the last process's folds only, and reliability
    read from it lost the others), and never a fold of another run left in the folder."""
    import json

    from napari_dkan.engine.cv import CV_FILE, cross_validate
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec
    from napari_dkan.io import open_dataset

    ds = open_dataset(her2st)
    panel = panel_file.read_text().split()
    spec = RunSpec.for_preset("ridge", "paper", features=FeatureSpec(encoder="tiny"))
    spec.settings.device = "cpu"
    sections, out = ["C2", "C3", "C4"], tmp_path / "cv"
    full = cross_validate(ds, spec, "sections", sections, panel=panel).to_dict()
    cross_validate(ds, spec, "sections", sections, panel=panel, out_dir=out, only_folds=["C3"])
    second = cross_validate(ds, spec, "sections", sections, panel=panel, out_dir=out, only_folds=["C2"]).to_dict()
    recorded = json.loads((out / CV_FILE).read_text())
    for result in (second, recorded):
        assert [f["fold"] for f in result["folds"]] == ["C2", "C3"]  # plan order; C4 never ran
        for got, want in zip(result["folds"], full["folds"][:2]):
            assert got["PCC-ALL"] == pytest.approx(want["PCC-ALL"], rel=1e-6)
            assert got["val_sections"] == want["val_sections"] and got["train_sections"] == want["train_sections"]
    assert len(recorded["folds"][1]["gene_pcc"]) == len(panel)
    # a fold of another run (another seed) in the folder is not taken into this run's record
    other = RunSpec.for_preset("ridge", "paper", features=FeatureSpec(encoder="tiny"))
    other.settings.device, other.settings.seed = "cpu", spec.settings.seed + 1
    cross_validate(ds, other, "sections", sections, panel=panel, out_dir=tmp_path / "cv2", only_folds=["C4"])
    (tmp_path / "cv2" / "fold-C4").rename(out / "fold-C4")
    again = cross_validate(ds, spec, "sections", sections, panel=panel, out_dir=out, only_folds=["C2"]).to_dict()
    assert [f["fold"] for f in again["folds"]] == ["C2", "C3"]
    # nor a fold of another design (the same name, other sections): a 4-section run's C5 fold
    # beside this 3-section run's folds
    wider = tmp_path / "cv4"
    cross_validate(ds, spec, "sections", [*sections, "C5"], panel=panel, out_dir=wider, only_folds=["C3"])
    (out / "fold-C3").rename(tmp_path / "c3-kept")
    (wider / "fold-C3").rename(out / "fold-C3")
    mixed = cross_validate(ds, spec, "sections", sections, panel=panel, out_dir=out, only_folds=["C2"]).to_dict()
    assert [f["fold"] for f in mixed["folds"]] == ["C2"]
    # two sections: each fold trains on one, selected on a spatial block of it ("C3[val]")
    pair = tmp_path / "pair"
    cross_validate(ds, spec, "sections", ["C2", "C3"], panel=panel, out_dir=pair, only_folds=["C2"])
    both = cross_validate(ds, spec, "sections", ["C2", "C3"], panel=panel, out_dir=pair, only_folds=["C3"]).to_dict()
    assert [f["fold"] for f in both["folds"]] == ["C2", "C3"] and both["folds"][0]["val_sections"] == ["C3[val]"]
    # nor a fold selected on another inner seed's draw
    reseeded = tmp_path / "reseeded"
    cross_validate(ds, spec, "sections", [*sections, "C5"], panel=panel, out_dir=reseeded, only_folds=["C2"])
    def draw(seed: int | None) -> list[str]:
        return cross_validate(ds, spec, "sections", [*sections, "C5"], panel=panel, only_folds=["C3"],
                              inner_seed=seed).to_dict()["folds"][0]["val_sections"]

    own = draw(None)
    other_seed = next(seed for seed in range(20) if draw(seed) != own)
    alone = cross_validate(ds, spec, "sections", [*sections, "C5"], panel=panel, out_dir=reseeded,
                           only_folds=["C3"], inner_seed=other_seed).to_dict()
    assert [f["fold"] for f in alone["folds"]] == ["C3"]
    # a finished fold that cannot be scored as asked (an older one without a stain reference) is
    # left out with a warning, not the end of the run after its own folds trained
    (pair / "fold-C2" / "stain.json").unlink()
    (pair / "fold-C3").rename(tmp_path / "pair-c3")
    import logging

    with caplog.at_level(logging.WARNING, logger="napari_dkan.engine.cv"):
        normalised = cross_validate(ds, spec, "sections", ["C2", "C3"], panel=panel, out_dir=pair,
                                    only_folds=["C3"], stain_normalise=True).to_dict()
    assert [f["fold"] for f in normalised["folds"]] == ["C3"]
    assert "fold C2" in caplog.text and "left out of cv.json" in caplog.text


def test_cv_inner_seed_shares_validation_sections_across_seeds(her2st, panel_file, capsys):
    """Members of a seed ensemble must share each fold's validation section (the ensemble is
    calibrated on it): ``--inner-seed`` draws it independently of the training seed."""
    common = [str(her2st), "--model", "ridge", *TINY, "--panel", str(panel_file),
              "--sections", "C2", "C3", "C4", "C5", "--json"]

    def vals(*extra: str) -> list[list[str]]:
        assert main(["cv", *common, *extra]) == 0
        return [f["val_sections"] for f in _json(capsys)["folds"]]

    own_1, own_2021 = vals("--seed", "1"), vals("--seed", "2021")
    assert own_1 != own_2021  # each seed draws its own
    assert vals("--seed", "1", "--inner-seed", "2021") == own_2021


def test_a_folder_being_trained_by_another_process_is_refused_in_words(her2st, panel_file, tmp_path, capsys):
    """Two processes training one folder (two ``cv --only-folds`` of the same fold) wrote the
    same checkpoints; one died on a file the other had renamed. The second is now refused while
    the first holds the folder, and the folder is free again the moment that process is gone."""
    import subprocess
    import sys

    from napari_dkan.engine.runs import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    holder = ("import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
              "f.write(str(os.getpid())); f.flush(); print('held', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", holder, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    args = ["train", str(her2st), "--model", "ridge", *TINY, "--panel", str(panel_file),
            "--sections", "C3", "C4", "-o", str(run)]
    try:
        assert other.stdout.readline().strip() == "held"
        assert main(args) == 2
        assert f"being trained by another process (pid {other.pid})" in capsys.readouterr().err
        assert not (run / "model.safetensors").exists()
    finally:
        other.kill()
        other.wait()
    assert main(args) == 0  # its process is gone, and with it the lock
    assert (run / "model.safetensors").is_file()
    # the same folder trained twice at once in one process is refused too
    from napari_dkan.engine.runs import run_lock
    from napari_dkan.io.errors import DataError

    with run_lock(run), pytest.raises(DataError, match="being trained"):
        with run_lock(run):
            pass
