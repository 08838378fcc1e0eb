"""Frozen-encoder runtimes on a CPU, end to end, interleaved in one run (issue 16).

Extracts the features of one section (HER2ST C2 by default: 187 spots, 692 tiles in shared
mode) again and again, without the cache, each time with another way of running the encoder —
torch as today, torch with channels-last / one thread, ONNX Runtime, OpenVINO, ONNX Runtime int8
— first in one order and then in the reverse order, so a machine whose load changes during the
run (a shared one) favours no variant.  Each run counts everything a prediction pays: reading,
resizing and normalising the tiles, encoding, copying the features out.  It prints tiles/s per
run, the load average around it, and each variant's mean cosine similarity to torch's features
(patch features and every unmasked region tile).

    python benchmarks/cpu_runtimes.py ../shared/data/her2st --section C2 --json out.json

Loading the encoder and exporting / compiling it happen before each timed run and are reported
apart (``load_s``): the export is cached on disk, so only a first use pays it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

#: name → (runtime, torch threads or None for the default, channels-last)
VARIANTS = {
    "torch": ("torch", None, False),
    "torch-channels-last": ("torch", None, True),
    "torch-1-thread": ("torch", 1, False),
    "onnxruntime": ("onnxruntime", None, False),
    "onnxruntime-1-thread": ("onnxruntime", 1, False),
    "openvino": ("openvino", None, False),
    "openvino-1-thread": ("openvino", 1, False),
    "onnxruntime-int8": ("onnxruntime-int8", None, False),
}


def _int8_session(encoder, calibration: np.ndarray, threads: int):  # noqa: ANN001, ANN202
    """ONNX Runtime with a statically quantised (QDQ, per-channel int8) copy of the export,
    calibrated on tiles of another section."""
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from napari_dkan.features.runtimes import export_onnx

    src = export_onnx(encoder.model, encoder.spec)
    out = src.with_name(src.stem + "-int8.onnx")
    if not out.is_file():
        pre = src.with_name(src.stem + "-pre.onnx")
        quant_pre_process(str(src), str(pre))
        mean = torch.tensor(encoder.spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(encoder.spec.std).view(1, 3, 1, 1)
        batches = [((torch.from_numpy(calibration[i:i + 8]).permute(0, 3, 1, 2).float() / 255 - mean) / std).numpy()
                   for i in range(0, len(calibration), 8)]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter({"x": b} for b in batches)

            def get_next(self):  # noqa: ANN202
                return next(self.it, None)

        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    return lambda x: tuple(session.run(["pooled", "features"], {"x": x}))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(1)
    return float(np.mean(num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--section", default="C2")
    ap.add_argument("--calibration-section", default="C3", help="int8 calibration tiles (not the timed section)")
    ap.add_argument("--encoder", default="efficientnet-lite0-imagenet")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=2, help="torch / runtime threads by default (default 2)")
    ap.add_argument("--rounds", type=int, default=1, help="forward + reverse rounds (default 1)")
    ap.add_argument("--json", type=Path, help="write every run and the summary here")
    args = ap.parse_args(argv)

    import torch

    from napari_dkan.features import extract_section_features, section_patches
    from napari_dkan.features.encoders import load_encoder
    from napari_dkan.io.formats import open_dataset

    ds = open_dataset(args.dataset)
    section = ds.select([args.section]).sections[0]
    section.open_slide().read_region(0, 0, 0, 1, 1)  # a plain JPEG decodes once: not timed
    calibration = None
    if "onnxruntime-int8" in args.variants:
        calib = ds.select([args.calibration_section]).sections[0]
        calibration = section_patches(calib, cache=False)[:64]

    def run(name: str) -> dict:
        runtime, threads, channels_last = VARIANTS[name]
        torch.set_num_threads(threads or args.threads)
        t = time.perf_counter()
        if runtime == "onnxruntime-int8":
            enc = load_encoder(args.encoder, "cpu", "onnxruntime")
            enc._session = _int8_session(enc, calibration, torch.get_num_threads())  # noqa: SLF001
        else:
            enc = load_encoder(args.encoder, "cpu", runtime)
        enc.set_channels_last(channels_last) if channels_last else None
        load_s = time.perf_counter() - t
        load_before = os.getloadavg()[0]
        feats = extract_section_features(section, enc, mode="shared", device="cpu", cache=False)
        m = feats.meta
        row = {"variant": name, "runtime": enc.runtime, "threads": torch.get_num_threads(),
               "channels_last": channels_last, "tiles": m["tiles_encoded"], "seconds": m["seconds"],
               "tiles_per_s": m["tiles_per_s"], "spots_per_s": m["spots_per_s"],
               "read_wait_s": m["read_wait_s"], "encode_s": m["encode_s"], "load_s": load_s,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()[0]}
        keep = ~feats.region_mask
        row["_patch"], row["_region"] = feats.patch, feats.region[keep].astype(np.float32)
        print(f"{name:<22} {row['tiles_per_s']:7.1f} tiles/s  {row['seconds']:6.1f} s  "
              f"load {load_before:4.1f}→{row['loadavg_after']:4.1f}  (load/export {load_s:.1f} s)",
              flush=True)
        return row

    order = list(args.variants)
    runs = []
    for _ in range(args.rounds):
        runs += [run(v) for v in order]
        runs += [run(v) for v in reversed(order)]
    ref = [r for r in runs if r["variant"] == "torch"]
    summary = {}
    print(f"\n{'variant':<22} {'tiles/s (runs)':<24} {'mean':>6} {'× torch':>8} {'cos patch':>10} {'cos region':>11}")
    torch_mean = statistics.mean(r["tiles_per_s"] for r in ref) if ref else float("nan")
    for v in args.variants:
        rows = [r for r in runs if r["variant"] == v]
        speeds = [r["tiles_per_s"] for r in rows]
        cos_p = _cosine(rows[0]["_patch"], ref[0]["_patch"]) if ref else float("nan")
        cos_r = _cosine(rows[0]["_region"], ref[0]["_region"]) if ref else float("nan")
        # same run, both orders: the ratio to torch in each order separately
        ratios = [r["tiles_per_s"] / t["tiles_per_s"] for r, t in zip(rows, ref)]
        summary[v] = {"tiles_per_s": speeds, "mean_tiles_per_s": statistics.mean(speeds),
                      "ratio_to_torch_per_order": ratios, "cosine_patch": cos_p, "cosine_region": cos_r,
                      "runtime": rows[0]["runtime"], "threads": rows[0]["threads"]}
        print(f"{v:<22} {', '.join(f'{s:.1f}' for s in speeds):<24} {statistics.mean(speeds):6.1f} "
              f"{statistics.mean(speeds) / torch_mean:8.2f} {cos_p:10.5f} {cos_r:11.5f}   "
              f"(per order: {', '.join(f'{x:.2f}×' for x in ratios)})")
    loads = [r["loadavg_before"] for r in runs] + [r["loadavg_after"] for r in runs]
    print(f"\nload average (1 min) during the runs: {min(loads):.1f}–{max(loads):.1f} on {os.cpu_count()} cores; "
          f"torch {torch.__version__}")
    if args.json:
        out = {"section": args.section, "encoder": args.encoder, "orders": [order, order[::-1]],
               "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
               "summary": summary, "loadavg_range": [min(loads), max(loads)],
               "cpu_count": os.cpu_count(), "torch": torch.__version__}
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
