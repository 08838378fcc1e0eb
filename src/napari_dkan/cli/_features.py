"""``napari-dkan features``, ``napari-dkan encoders`` and ``napari-dkan bench features``."""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

from napari_dkan.cli._output import add_json_flag, emit, progress_bar
from napari_dkan.features.runtimes import RUNTIME_CHOICES

_FIGURES = ("tiles_per_s", "spots_per_s", "encoder_passes_per_spot", "seconds")


def _extraction_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="dataset folder (HER2ST-style root, Visium folder), .h5ad or a slide")
    p.add_argument("--sections", nargs="+", metavar="NAME", help="only these sections (default: all with an image)")
    p.add_argument("--image", help="full-resolution image of a Visium folder / single-library .h5ad")
    p.add_argument("--mpp", type=float, help="µm per pixel of the slide, when it carries none")
    p.add_argument("--encoder", default="efficientnet-lite0-imagenet",
                   help="NAME[@WEIGHTS]; see `napari-dkan encoders` (default efficientnet-lite0-imagenet)")
    p.add_argument("--tile-px", type=int, default=224, help="tile and patch side in pixels (default 224)")
    p.add_argument("--target-mpp", type=float, help="resample tiles to this µm/px (default: the slide's own)")
    p.add_argument("--tokens", action="store_true", help="also keep each patch's 7×7 token grid")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--batch-size", type=int, help="tiles per batch (default: chosen for the device)")
    p.add_argument("--workers", type=int, default=2, help="tile-reading threads (default 2)")
    p.add_argument("--no-cache", action="store_true", help="recompute and do not write the cache")
    p.add_argument("--max-spots", type=int, metavar="N", help="only the first N spots of each section (trials)")
    p.add_argument("--runtime", default="auto", choices=RUNTIME_CHOICES,
                   help="image encoder's inference runtime on a CPU: auto (default: OpenVINO or ONNX Runtime "
                   "when installed, torch on a GPU), torch, onnxruntime or openvino")
    p.add_argument("--cpu-threads", type=int, metavar="N",
                   help="torch threads on the CPU (default: torch's choice; fewer can be faster "
                   "on a machine shared with other jobs)")
    add_json_flag(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "features",
        help="extract and cache frozen image features of a dataset's sections",
        description="Encode every spot's patch and 5×5 region tiles with a frozen encoder and "
        "cache them on disk, so training and prediction start at once.",
    )
    _extraction_options(p)
    p.add_argument("--mode", choices=["shared", "exact"], default="shared",
                   help="shared: encode each grid tile once (default); exact: the paper's 25 tiles per spot")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("encoders", help="list the frozen image encoders and compute devices")
    add_json_flag(p)
    p.set_defaults(func=cmd_encoders)

    # `bench` is a command group; other groups may add their own benchmarks beside `features`.
    bench = sub.add_parser("bench", help="measure throughput (not part of the tests)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    p = bench_sub.add_parser(
        "features",
        help="time feature extraction: tiles/s, spots/s, encoder passes per spot",
        description="Time feature extraction on a dataset or slide. With two modes (or "
        "--compare) it also reports the mean cosine similarity of their region features. Run it "
        "twice to time the cached path.",
    )
    _extraction_options(p)
    p.add_argument("--mode", nargs="+", choices=["shared", "exact"], default=["shared"],
                   help="one or both region modes (default shared)")
    p.add_argument("--compare", action="store_true", help="run both modes and compare them")
    p.set_defaults(func=cmd_bench_features)


def _sections(args: argparse.Namespace) -> tuple[list, list[str]]:
    """The sections to extract (those with an image) and the names of those skipped."""
    from napari_dkan.features import with_spots
    from napari_dkan.io.errors import DataError
    from napari_dkan.io.formats import open_dataset

    if args.cpu_threads:
        import torch

        torch.set_num_threads(args.cpu_threads)
    ds = open_dataset(args.dataset, image=args.image, mpp=args.mpp).select(args.sections)
    sections = [s for s in ds.sections if s.has_image]
    skipped = [s.name for s in ds.sections if not s.has_image]
    if not sections:
        raise DataError(f"no section of {ds.name} has an image to extract features from")
    if args.max_spots:
        sections = [with_spots(s, slice(0, args.max_spots)) for s in sections]
    return sections, skipped


def _extract(args: argparse.Namespace, section: Any, encoder: Any, mode: str) -> Any:
    from napari_dkan.features import extract_section_features

    with progress_bar(f"{section.name} {mode}", unit="tile", enabled=not args.json) as progress:
        return extract_section_features(
            section, encoder, mode=mode, tile_px=args.tile_px, target_mpp=args.target_mpp,
            tokens=args.tokens, device=args.device, batch_size=args.batch_size,
            num_workers=args.workers, cache=not args.no_cache, progress=progress,
        )


def cmd_features(args: argparse.Namespace) -> int:
    from napari_dkan.features import lazy_encoder

    sections, skipped = _sections(args)
    encoder = lazy_encoder(args.encoder, args.runtime)  # built once, at the first section not yet cached
    spec = encoder.spec
    rows, lines = [], []
    for section in sections:
        feats = _extract(args, section, encoder, args.mode)
        m = feats.meta
        rows.append({"section": section.name, "n_spots": feats.n_spots, "width": feats.width,
                     **{k: m.get(k) for k in (*_FIGURES, "cache_hit", "cache_path", "masked_fraction")}})
        rows[-1]["runtime"] = m.get("runtime")
        lines.append(f"{section.name}: {feats.n_spots} spots, {feats.width}-d, "
                     f"{m['encoder_passes_per_spot']:.2f} passes/spot, {m['seconds']:.1f} s"
                     f"{' (cached)' if m['cache_hit'] else ''}")
    if skipped:
        lines.append(f"skipped (no image): {', '.join(skipped)}")
    emit(args, {"encoder": spec.name, "mode": args.mode, "sections": rows, "skipped": skipped},
         "\n".join(lines))
    return 0


def cmd_encoders(args: argparse.Namespace) -> int:
    from napari_dkan.devices import available_devices
    from napari_dkan.features import list_encoders
    from napari_dkan.features.registry import SYNTAX_HELP

    encoders = list_encoders()
    devices = available_devices()
    text = "\n".join([*(f"{k:<30}{v}" for k, v in encoders.items()), "", SYNTAX_HELP,
                      f"devices: {', '.join(devices)}"])
    emit(args, {"encoders": encoders, "devices": devices}, text)
    return 0


def _machine(device: Any) -> dict[str, Any]:
    import torch

    from napari_dkan.devices import describe

    return {"device": describe(device), "cpu_count": os.cpu_count(), "torch_threads":
            torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()}


def cmd_bench_features(args: argparse.Namespace) -> int:
    from napari_dkan.devices import resolve_device
    from napari_dkan.features import region_cosine_similarity, resolve_encoder
    from napari_dkan.features.encoders import load_encoder

    modes = ["shared", "exact"] if args.compare else list(dict.fromkeys(args.mode))
    sections, _ = _sections(args)
    device = resolve_device(args.device)
    spec = resolve_encoder(args.encoder)
    t = time.perf_counter()
    encoder = load_encoder(spec, device, args.runtime)  # outside the timings: once per process
    load_s = time.perf_counter() - t
    for s in sections:  # plain images decode fully at the first read: keep that out as well
        s.open_slide().read_region(0, 0, 0, 1, 1)
    results: dict[str, dict[str, Any]] = {}
    per_section: dict[str, dict[str, Any]] = {m: {} for m in modes}
    for mode in modes:
        runs = [_extract(args, s, encoder, mode) for s in sections]
        per_section[mode] = {s.name: r for s, r in zip(sections, runs)}
        seconds = sum(r.meta["seconds"] for r in runs)
        spots = sum(r.n_spots for r in runs)
        tiles = sum(r.meta["tiles_encoded"] for r in runs)
        results[mode] = {
            "seconds": seconds,
            "n_spots": spots,
            "tiles_encoded": tiles,
            "tiles_per_s": tiles / seconds if seconds else 0.0,
            "spots_per_s": spots / seconds if seconds else 0.0,
            "encoder_passes_per_spot": tiles / spots,
            "cache_hit": all(r.meta["cache_hit"] for r in runs),
            "read_wait_s": sum(r.meta.get("read_wait_s", 0.0) for r in runs if not r.meta["cache_hit"]),
            "encode_s": sum(r.meta.get("encode_s", 0.0) for r in runs if not r.meta["cache_hit"]),
            "masked_fraction": sum(r.meta["masked_fraction"] * r.n_spots for r in runs) / spots,
        }
        if results[mode]["cache_hit"]:  # how much the cache saved over building the features
            built = sum(r.meta.get("built_seconds") or 0.0 for r in runs)
            results[mode]["built_seconds"] = built
            results[mode]["speedup_vs_build"] = built / seconds if seconds else None
    payload: dict[str, Any] = {
        "dataset": str(args.dataset),
        "sections": [s.name for s in sections],
        "encoder": spec.name,
        "runtime": encoder.runtime,
        "runtime_note": encoder.runtime_note,
        "width": encoder.width,
        "tile_px": args.tile_px,
        "target_mpp": args.target_mpp,
        "batch_size": runs[0].meta.get("batch_size"),
        "workers": args.workers,
        "encoder_load_s": load_s,
        **results[modes[0]],
        "mode": modes[0],
        "modes": results,
        "machine": _machine(device),
    }
    lines = [f"{spec.name} on {payload['machine']['device']} with {encoder.runtime}"
             f"{' (' + encoder.runtime_note + ')' if encoder.runtime_note else ''}, {len(sections)} section(s), "
             f"{results[modes[0]]['n_spots']} spots"]
    for mode, r in results.items():
        hit = f"  (cache hit, {r['speedup_vs_build']:.0f}× faster than building)" if r["cache_hit"] else ""
        lines.append(f"  {mode:<7} {r['encoder_passes_per_spot']:6.2f} passes/spot  "
                     f"{r['tiles_per_s']:8.1f} tiles/s  {r['spots_per_s']:8.1f} spots/s  "
                     f"{r['seconds']:8.2f} s{hit}")
    if len(modes) == 2:
        sims = [region_cosine_similarity(per_section["shared"][n], per_section["exact"][n])
                for n in per_section["shared"]]
        payload["mean_cosine_similarity"] = sum(sims) / len(sims)
        payload["passes_ratio_shared_to_exact"] = (
            results["shared"]["encoder_passes_per_spot"] / results["exact"]["encoder_passes_per_spot"]
            if results["exact"]["encoder_passes_per_spot"] else None)
        lines.append(f"  mean cosine similarity of region features (shared vs exact): "
                     f"{payload['mean_cosine_similarity']:.4f}")
    emit(args, payload, "\n".join(lines))
    return 0
