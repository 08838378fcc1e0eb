"""Data-parallel training: sharding, the unused-parameter probe, and real 2-process gloo runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_dkan.engine.distributed import rank_shard, unused_parameters

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("n, world", [(12, 2), (11, 3), (2, 4), (7, 1)])
def test_each_step_of_the_ranks_together_is_one_global_batch(n, world):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shards = [rank_shard(perm, r, world) for r in range(world)]
    per_rank = -(-n // world)
    assert all(len(s) == per_rank for s in shards)  # equal steps and batch sizes on every rank
    padded = torch.cat([perm, perm.repeat(world)[: per_rank * world - n]])
    assert sorted(torch.cat(shards).tolist()) == sorted(padded.tolist())
    batch = 2
    for start in range(0, per_rank, batch):
        together = sorted(torch.cat([s[start : start + batch] for s in shards]).tolist())
        assert together == sorted(padded[start * world : (start + batch) * world].tolist())
    if world == 1:
        assert shards[0] is perm


def test_unused_parameters_are_found():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(3, 1), nn.Linear(3, 1)
            self.frozen = nn.Linear(3, 1).requires_grad_(False)
            self.norm = nn.BatchNorm1d(3)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.used(self.norm(x)) + self.frozen(x)

    net = Net().train()
    x = torch.randn(4, 3) + 5
    assert unused_parameters(net, lambda: net(x).sum()) == ["unused.weight", "unused.bias"]
    # the probe leaves no trace: no gradient, and batch-norm statistics as they were
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(net.norm.running_mean, torch.zeros(3)) and int(net.norm.num_batches_tracked) == 0


def _torchrun(script: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    import napari_dkan

    env = dict(os.environ)
    src = str(Path(napari_dkan.__file__).resolve().parents[1])  # the package this test imports
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_gloo_processes_follow_the_single_process_trajectory_and_resume_alone(
        her2st, panels_dir, tmp_path):
    sys.path.insert(0, str(HERE))
    from _ddp_train import train_case

    panel = (panels_dir / "her2st.txt").read_text().split()[:12]
    (tmp_path / "panel.txt").write_text("\n".join(panel) + "\n")
    # C3 + C4: 364 spots, even, so the last step splits evenly too (no padded duplicate).
    # Comparable trajectories need the same randomness: the tiny preset (no dropout) and no
    # augmentation (drawn per rank under DDP); the contrastive genes come from the shared
    # generator.  What is left, the global batch of each step, is the same by design.
    same = {"model": "triplex", "panel": panel, "train": ["C3", "C4"], "val": ["C2"], "epochs": 2,
            "augment": False, "her2st": str(her2st)}
    ref_losses: list[float] = []
    ref = train_case({**same, "batch_size": 32, "run_dir": str(tmp_path / "single")},
                     on_event=lambda e: ref_losses.append(e.loss) if e.phase == "step" else None)
    # DKAN too: every rank scores InfoNCE over the gathered global batch
    dkan = {**same, "model": "dkan"}
    dkan_losses: list[float] = []
    train_case({**dkan, "batch_size": 32, "run_dir": str(tmp_path / "dkan-single")},
               on_event=lambda e: dkan_losses.append(e.loss) if e.phase == "step" else None)
    cases = [
        {**same, "batch_size": 16, "run_dir": str(tmp_path / "ddp")},
        {**dkan, "batch_size": 16, "run_dir": str(tmp_path / "dkan-ddp")},
        # DKAN with augmentation; rank 1 alone is asked to stop at epoch 2, step 2
        {**same, "model": "dkan", "augment": True, "batch_size": 16, "run_dir": str(tmp_path / "cancelled"),
         "cancel_rank": 1, "cancel_at": [2, 2]},
        # the documented command: torchrun ... -m napari_dkan train ... --distributed
        {"cli": ["train", str(her2st), "--sections", "C3", "C4", "--val-sections", "C2", "--model", "dkan",
                 "--preset", "tiny", "--encoder", "tiny", "--device", "cpu", "--epochs", "1",
                 "--batch-size", "16", "--panel", str(tmp_path / "panel.txt"),
                 "-o", str(tmp_path / "cli"), "--distributed", "--json"]},
    ]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = _torchrun(HERE / "_ddp_train.py", str(tmp_path / "cases.json"))
    assert out.returncode == 0, out.stderr[-4000:]

    reports = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert len(reports) == 1  # rank 0 alone reports
    assert reports[0]["processes"] == 2 and reports[0]["status"] == "finished"
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["result"]["history"][0]["world_size"] == 2

    seen = json.loads((tmp_path / "ddp" / "seen.json").read_text())
    assert len(seen["losses"]) == len(ref_losses) == 2 * 12  # ceil(364 / (2 × 16)) steps per epoch
    np.testing.assert_allclose(seen["losses"], ref_losses, rtol=1e-5)  # measured: ~1e-7
    ddp_hist, ref_hist = seen["result"]["history"], ref.config["result"]["history"]
    np.testing.assert_allclose([h["val_pcc"] for h in ddp_hist], [h["val_pcc"] for h in ref_hist], atol=1e-5)
    assert [h["world_size"] for h in ddp_hist] == [2, 2] and "world_size" not in ref_hist[0]

    from safetensors.torch import load_file

    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io import open_dataset

    keys = load_file(tmp_path / "ddp" / "model.safetensors").keys()
    assert keys == load_file(tmp_path / "single" / "model.safetensors").keys()
    assert not any(k.startswith("module.") for k in keys)  # the plain network's weights
    # Same function learned.  (Weights are compared through predictions: a parameter whose true
    # gradient is zero, e.g. an attention key bias, is moved by Adam on rounding noise alone.)
    c2 = open_dataset(her2st)["C2"]
    single, ddp = TrainedModel.load(tmp_path / "single"), TrainedModel.load(tmp_path / "ddp")
    data = single.section_data(c2, device="cpu")
    np.testing.assert_allclose(ddp.predict(data, device="cpu"), single.predict(data, device="cpu"),
                               atol=1e-5)  # measured: ~1e-6 on predictions of magnitude ~1

    dkan_seen = json.loads((tmp_path / "dkan-ddp" / "seen.json").read_text())
    np.testing.assert_allclose(dkan_seen["losses"], dkan_losses, rtol=1e-4)

    # the cancel request on rank 1 stopped both ranks after the same step; rank 0 kept epoch 1
    cancelled = json.loads((tmp_path / "cancelled" / "seen.json").read_text())
    assert cancelled["status"] == "cancelled" and cancelled["result"]["epochs_run"] == 1
    assert len(cancelled["losses"]) == 12 + 2
    assert not list((tmp_path / "cancelled").glob(".*.tmp"))
    # ... and one process resumes the 2-process run from its last epoch
    resumed = train_case({**cases[2], "cancel_rank": None})
    res = resumed.config["result"]
    assert resumed.config["status"] == "finished" and res["resumed_from"] == 1 and res["epochs_run"] == 2
    assert [h.get("world_size", 1) for h in res["history"]] == [2, 1]


@pytest.mark.parametrize("model, env, message", [
    ("triplex", {}, "torchrun --nproc-per-node"),
    ("ridge", {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "x", "MASTER_PORT": "1"},
     "ridge regression has no training loop"),
])
def test_distributed_flag_errors_are_clear(model, env, message, her2st, tmp_path, capsys, monkeypatch):
    from napari_dkan.cli import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    code = main(["train", str(her2st), "--model", model, "--preset", "tiny", "--encoder", "tiny",
                 "--sections", "C2", "-o", str(tmp_path / "run"), "--distributed"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
