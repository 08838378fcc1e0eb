"""Cohort prediction on a real 2-worker LocalCluster: worker loss, failures, resume, pinning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest

from napari_dkan.cohort import predict_cohort, read_manifest
from napari_dkan.io.errors import DataError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def panel(panels_dir):
    return (panels_dir / "her2st.txt").read_text().split()[:12]


@pytest.fixture(scope="module")
def model(her2st_dataset, panel, tmp_path_factory):
    """A tiny DKAN (text and all) trained for one epoch on C3."""
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec, gene_text_for, prepare_sections, train_model
    from napari_dkan.engine.trainer import TrainSettings

    settings = TrainSettings(epochs=1, lr=1e-3, batch_size=32, contrastive_genes=8, device="cpu")
    spec = RunSpec(model="dkan", preset="tiny", features=FeatureSpec(encoder="tiny"), settings=settings)
    data = prepare_sections([her2st_dataset["C3"], her2st_dataset["C4"]], spec, panel)
    return train_model(data, ["C3"], ["C4"], spec, panel, tmp_path_factory.mktemp("cohort") / "run",
                       gene_text=gene_text_for(spec, panel))


@pytest.fixture(scope="module")
def crops(wsi_dir, tmp_path_factory):
    """Six 900-px crops of a real H&E slide (CMU-1-Small-Region, 0.499 µm/px) as PNG files."""
    from PIL import Image

    from napari_dkan.io.slides import open_slide

    folder = tmp_path_factory.mktemp("crops")
    slide = open_slide(wsi_dir / "CMU-1-Small-Region.svs")
    w, h = slide.dimensions
    img = slide.read_region(0, 0, 0, w, h)
    k = 0
    for y in range(0, h - 900 + 1, 900):
        for x in range(0, w - 900 + 1, 900):
            Image.fromarray(img[y : y + 900, x : x + 900]).save(folder / f"cmu-{k}.png")
            k += 1
    return folder


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def _manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("slide,section,spots,mpp,name\n" + "\n".join(rows) + "\n")
    return path


def _check_output(path: Path, model, panel) -> anndata.AnnData:  # noqa: ANN001
    ad = anndata.read_h5ad(path)
    assert list(ad.var_names) == panel and ad.n_obs > 0 and np.isfinite(ad.X).all()
    assert ad.uns["napari_dkan"]["weights_sha256"] == model.config["files"]["model.safetensors"]
    return ad


def test_a_worker_killed_mid_run_loses_no_slide_and_a_rerun_skips_them_all(
        her2st, crops, model, panel, client, tmp_path):
    from napari_dkan.cohort.cluster import from_client

    manifest = _manifest(tmp_path / "cohort.csv", [
        f"{her2st},C2,,,", f"{her2st},C4,,,",  # measured spots of two HER2ST sections
        *(f"{crops}/cmu-{i}.png,,lattice,0.499," for i in range(1, 6)),  # lattices on real H&E crops
    ])
    entries = read_manifest(manifest)
    out = tmp_path / "out"
    killed: dict = {}

    def kill_a_busy_worker(outcome, finished, total):  # noqa: ANN001
        if killed:
            return
        busy = {w: keys for w, keys in client.processing().items() if keys}
        victim = next(iter(busy))
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        killed.update(pid=pid, finished=finished, held=[k.split("-predict-")[1].rsplit("-", 1)[0] for k in busy[victim]])

    summary = predict_cohort(entries, model, out, connect=lambda: from_client(client),
                             on_outcome=kill_a_busy_worker)
    assert killed and killed["finished"] < len(entries) and killed["held"]  # mid-run, slides in hand
    # every slide ends done; a slide the killed worker had already written, but whose result died
    # with it before it was gathered, is re-run elsewhere and found complete ("skipped"): nothing
    # lost, nothing predicted twice (every output is checked below)
    assert summary.counts["failed"] == 0 and summary.counts["done"] + summary.counts["skipped"] == 7
    by_name = {o.name: o for o in summary.outcomes}
    for name in killed["held"]:  # what the killed worker held was finished by another process
        assert not by_name[name].worker.endswith(f":{killed['pid']}")
    # the model was loaded once per worker process, not once per slide
    from collections import Counter

    loads = Counter(o.worker for o in summary.outcomes if o.loaded_model)
    assert set(loads.values()) == {1} and sum(loads.values()) < len(entries)
    for e in entries:
        _check_output(out / f"{e.name}.h5ad", model, panel)
    assert _check_output(out / "C2.h5ad", model, panel).n_obs == 187
    assert not list(out.glob(".*"))  # no temporary file left behind

    def no_cluster():
        raise AssertionError("a rerun with every output present must not start a cluster")

    again = predict_cohort(entries, model, out, connect=no_cluster)
    assert again.counts == {"done": 0, "skipped": 7, "failed": 0}


def test_failing_slides_are_reported_and_do_not_stop_the_others(crops, model, panel, client, wsi_dir,
                                                                tmp_path, capsys):
    from napari_dkan.cli import main

    manifest = _manifest(tmp_path / "cohort.csv", [
        f"{crops}/cmu-1.png,,lattice,0.499,good",
        f"{wsi_dir}/openslide-fixtures/unreadable.svs,,,,",
        "no-such-slide.png,,,0.5,",
        f"{crops}/cmu-2.png,,lattice,0.499,also-good",
    ])
    out = tmp_path / "out"
    code = main(["predict-cohort", str(manifest), "--model", str(model.run_dir), "--out", str(out),
                 "--scheduler", client.scheduler.address, "--json"])
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 1  # some slide failed
    assert (payload["done"], payload["failed"], payload["skipped"]) == (2, 2, 0)
    errors = {s["name"]: s.get("error", "") for s in payload["slides"]}
    assert "unreadable.svs" in errors["unreadable"] and "does not exist" in errors["no-such-slide"]
    assert [s["name"] for s in payload["slides"]] == ["good", "unreadable", "no-such-slide", "also-good"]
    for name in ("good", "also-good"):
        _check_output(out / f"{name}.h5ad", model, panel)
    assert not (out / "unreadable.h5ad").exists()
    # for people: a progress bar on stderr, a summary naming each failure on stdout
    assert main(["predict-cohort", str(manifest), "--model", str(model.run_dir), "--out", str(out),
                 "--scheduler", client.scheduler.address]) == 1
    printed = capsys.readouterr()
    assert "0 done, 2 skipped, 2 failed" in printed.out and "failed unreadable: " in printed.out
    assert "slides" in printed.err and "failed=2" in printed.err


def test_outputs_of_another_model_are_never_overwritten(crops, model, panel, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    other = anndata.AnnData(np.zeros((3, len(panel)), np.float32))
    other.var_names = panel
    other.uns["napari_dkan"] = {"weights_sha256": "0" * 64}
    other.write_h5ad(out / "cmu-1.h5ad")
    manifest = _manifest(tmp_path / "m.csv", [f"{crops}/cmu-1.png,,lattice,0.499,"])
    with pytest.raises(DataError, match="another model"):
        predict_cohort(read_manifest(manifest), model, out, connect=lambda: pytest.fail("no cluster"))


def test_gpu_workers_are_pinned_one_per_device_even_after_a_restart():
    """The pinning mechanism, on CPU: each worker process sees only its own device number."""
    from distributed import Client

    from napari_dkan.cohort.cluster import PinnedGPUCluster, from_client

    with PinnedGPUCluster(["3", "5"], 2, dashboard_address=":0") as cluster, Client(cluster) as c:
        c.wait_for_workers(2)
        seen = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == ["3", "5"]
        info = c.scheduler_info()["workers"]
        assert all(w["resources"] == {"GPU": 1} for w in info.values())
        assert from_client(c).resources == {"GPU": 1}  # tasks then ask for one GPU each
        victim, device = next(iter(seen.items()))
        name = info[victim]["name"]
        os.kill(c.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
        c.wait_for_workers(2)
        for _ in range(100):  # the nanny brings up a new process under the same name
            after = {w["name"]: a for a, w in c.scheduler_info()["workers"].items()}
            if name in after and after[name] != victim:
                break
            import time

            time.sleep(0.1)
        restarted = after[name]
        assert c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"), workers=[restarted])[restarted] == device


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("path,mpp\nx.svs,0.5\n", "must name a 'slide' column"),
    ("slide,colour\nx.svs,red\n", "unknown: colour"),
    ("slide\n", "lists no slides"),
    ("slide,mpp\nx.svs,-1\n", "line 2: mpp must be a positive number"),
    ("slide,mpp\nx.svs,abc\n", "line 2: mpp must be a positive number"),
    ("slide\na/x.svs\nb/x.svs\n", "lines 2 and 3 both write x.h5ad"),
    ("slide,name\nx.svs,../up\n", "cannot name an output file"),
    ("slide,name\nx.svs,y,z\n", "3 values for 2 columns"),
])
def test_manifest_mistakes_are_reported_by_line(text, message, tmp_path, capsys):
    from napari_dkan.cli import main

    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_manifest(path)
    assert main(["predict-cohort", str(path), "--model", "x", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_manifest_rows_resolve_paths_and_names(tmp_path):
    (tmp_path / "m.tsv").write_text(
        "# a comment\nname\tslide\tspots\tsection\tmpp\n"
        "\tslides/a.svs\t\t\t\n"
        "mine\t/abs/b.tiff\tLATTICE\t\t0.25\n"
        "\tdata/her2st\t\tC2\t\n"
        "\tslides/c.tif\tspots/c.h5ad\t\t\n"
    )
    a, b, c, d = read_manifest(tmp_path / "m.tsv")
    assert (a.name, a.slide, a.spots, a.mpp, a.line) == ("a", tmp_path / "slides/a.svs", None, None, 3)
    assert (b.name, b.slide, b.spots, b.mpp) == ("mine", Path("/abs/b.tiff"), "lattice", 0.25)
    assert (c.name, c.section) == ("C2", "C2")
    assert (d.name, d.spots) == ("c", str(tmp_path / "spots/c.h5ad"))


def test_the_cli_loads_neither_torch_nor_dask_distributed():
    code = "import sys, napari_dkan.cli\nprint([m for m in ('torch', 'distributed') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_truncated_slide_reports_its_own_error_not_dasks(model, client, her2st, tmp_path, capfd):
    """A truncated 9,300-px JPEG: reading its overview computes a dask pyramid inside the task.
    That must run in the task, not be shipped to the cluster (where it failed as "deserialization
    of the task graph", or deadlocked a one-thread worker)."""
    from napari_dkan.cli import main

    src = next((her2st / "ST-imgs" / "C" / "C2").glob("*.jpg"))
    data = src.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
    manifest = _manifest(tmp_path / "cohort.csv", ["cut.jpg,,lattice,1.0,cut"])
    code = main(["predict-cohort", str(manifest), "--model", str(model.run_dir), "--out",
                 str(tmp_path / "out"), "--scheduler", client.scheduler.address, "--json"])
    printed = capfd.readouterr()
    payload = json.loads(printed.out.strip().splitlines()[-1])
    assert code == 1 and payload["failed"] == 1
    error = payload["slides"][0]["error"]
    assert error.startswith("SlideError: cut.jpg could not be decoded") and "truncated" in error
    assert "Traceback" not in printed.err and "deserialization" not in printed.err
