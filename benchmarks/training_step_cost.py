"""CPU seconds per training step of the compact ``dkan-improved`` network, by dropout kind.

Trains a few steps (batch 64, one torch thread) on the frozen features of C2, C3 and C4 and
prints the process CPU time per step for PyTorch's dropout, the uniform sampler and no dropout
at all (what dropout costs).  Features come from the feature cache (NAPARI_DKAN_CACHE).

    python benchmarks/training_step_cost.py            # torch, uniform, none
    python benchmarks/training_step_cost.py --profile  # plus torch.profiler's top operators
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_DKAN_SHARED", ROOT.parent / "shared")) / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--kinds", nargs="+", default=["torch", "uniform", "none"])
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from napari_dkan.engine.cv import dataset_panel
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.families import Dims, SpotStore, make_family
    from napari_dkan.engine.runs import RunSpec, gene_text_for, prepare_sections
    from napari_dkan.io import open_dataset
    from napari_dkan.model import preset, variant
    from napari_dkan.model.config import BlockSpec

    torch.set_num_threads(1)
    ds = open_dataset(DATA / "her2st")
    panel = dataset_panel(ds)
    names = ["C2", "C3", "C4"]
    spec = RunSpec.for_preset("dkan-improved", "compact", features=FeatureSpec(encoder="efficientnet-lite0-imagenet"))
    data = prepare_sections([ds[n] for n in names], spec, panel)
    text = gene_text_for(spec, panel)
    t = torch.as_tensor(np.asarray(text.matrix), dtype=torch.float32)
    store = SpotStore([data[n] for n in names], torch.device("cpu"))
    first = data[names[0]]
    dims = Dims(len(panel), first.patch_feat.shape[1], first.patch_tokens.shape[2], t.shape[1])
    runners = {}
    for kind in args.kinds:
        cfg = variant(preset("compact"), "dkan-improved")
        if kind == "none":
            zero = lambda b: BlockSpec(b.depth, b.heads, b.mlp_ratio, 0.0)  # noqa: E731
            cfg = replace(cfg, fusion=zero(cfg.fusion), slide=zero(cfg.slide), region=zero(cfg.region),
                          align_image=zero(cfg.align_image), align_expr=zero(cfg.align_expr),
                          text=zero(cfg.text), expr_dropout=0.0)
        else:
            cfg = replace(cfg, dropout_sampler=kind)
        runners[kind] = _runner(make_family("dkan-improved", cfg), dims, store, t)
        runners[kind]()  # warm-up
    # rounds interleave the kinds, so a change in the machine's load hits them alike
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for kind, step in runners.items():
            t0 = time.process_time()
            for _ in range(args.steps):
                step()
            times[kind].append((time.process_time() - t0) / args.steps)
    for kind, values in times.items():
        print(f"dropout {kind}: {min(values):.3f} CPU s/step at best, median {float(np.median(values)):.3f} "
              f"over {args.rounds} rounds of {args.steps} steps ({len(store)} spots, "
              f"{-(-len(store) // 64)} steps/epoch)", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                runners[args.kinds[0]]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def _runner(family, dims, store, text):  # noqa: ANN001, ANN202
    import torch

    torch.manual_seed(0)
    net = family.build(dims).train()
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        idx = torch.randperm(len(store), generator=gen)[:64]
        loss, _ = family.loss(net, family.inputs(store, idx, gen), text, 32, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


if __name__ == "__main__":
    main()
