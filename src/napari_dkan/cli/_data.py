"""``napari-dkan panel`` and ``napari-dkan inspect``: look at data before using it."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_dkan.cli._output import add_json_flag, emit, progress_bar


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "panel",
        help="choose a gene panel from a dataset's counts",
        description="Print the gene panel of a dataset, one symbol per line: the N genes with "
        "the highest mean raw count over all spots, among genes present in every section.",
    )
    p.add_argument("dataset", help="dataset folder (HER2ST-style root, Visium folder) or .h5ad")
    p.add_argument("--n", type=int, default=250, help="panel size (default 250)")
    p.add_argument("--method", choices=["mean", "hvg"], default="mean",
                   help="mean: top mean raw count (the paper's); hvg: highly variable genes")
    p.add_argument("--sections", nargs="+", metavar="NAME", help="use only these sections")
    p.add_argument("-o", "--output", type=Path, help="also write the panel to this file")
    add_json_flag(p)
    p.set_defaults(func=cmd_panel)

    p = sub.add_parser(
        "inspect",
        help="summarise a slide or a dataset",
        description="Describe a slide (levels, size, µm per pixel) or a dataset (sections, "
        "patients, spots, which sections have images and counts).",
    )
    p.add_argument("path", help="slide file, dataset folder or .h5ad")
    p.add_argument("--image", help="full-resolution image of a Visium folder")
    p.add_argument("--mpp", type=float, help="µm per pixel, when the image carries none")
    add_json_flag(p)
    p.set_defaults(func=cmd_inspect)


def cmd_panel(args: argparse.Namespace) -> int:
    from napari_dkan.io.expression import select_panel
    from napari_dkan.io.formats import open_dataset

    ds = open_dataset(args.dataset).select(args.sections)
    with progress_bar("reading counts", unit="section", enabled=not args.json) as progress:
        genes = select_panel(ds.sections, n=args.n, method=args.method, progress=progress)
    if args.output:
        from napari_dkan.storage import atomic_write

        atomic_write(args.output, ("\n".join(genes) + "\n").encode())
    emit(
        args,
        {"dataset": str(ds.root), "method": args.method, "n": len(genes),
         "sections": ds.section_names, "genes": genes},
        "\n".join(genes),
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from napari_dkan.io.formats import open_dataset
    from napari_dkan.io.slides import is_slide_file, open_slide

    path = Path(args.path)
    if path.is_file() and path.suffix.lower() != ".h5ad" and is_slide_file(path):
        with open_slide(path, mpp=args.mpp) as slide:
            info = {"type": "slide", **slide.summary()}
        mpp = f"{info['mpp']:.4f} µm/px ({info['mpp_source']})" if info["mpp"] else "unknown µm/px"
        dims = ", ".join(f"{w}×{h}" for w, h in info["level_dimensions"])
        text = (f"{path.name}: {info['format']} slide, {info['levels']} level(s) [{dims}] px, "
                f"{mpp}, tiles {info['tile_size']} px")
        emit(args, info, text)
        return 0
    ds = open_dataset(path, image=args.image, mpp=args.mpp)
    info = {"type": "dataset", **ds.summary()}
    if len(ds) == 1:  # what the reader assumed: notes fill as counts and images are read
        section = ds.sections[0]
        _ = section.preview
        if section.has_counts:
            _ = section.counts
        info["sections"][0]["notes"] = list(section.notes)
    lines = [
        f"{ds.name}: {ds.kind} dataset, {info['n_sections']} section(s) from "
        f"{len(info['patients'])} patient(s); {info['n_with_counts']} with counts, "
        f"{info['n_with_images']} with images, {info['n_trainable']} usable for training",
        f"{'section':<12}{'patient':<10}{'spots':>7}  {'counts':<7}{'image':<6}{'µm/px':>8}",
    ]
    for s in info["sections"]:
        mpp = f"{s['mpp']:.4f}" if s.get("mpp") else "-"
        lines.append(
            f"{s['name']:<12}{s['patient']:<10}{s.get('spots', '-'):>7}  "
            f"{'yes' if s['has_counts'] else 'no':<7}{'yes' if s['has_image'] else 'no':<6}{mpp:>8}"
        )
    for s in info["sections"]:
        lines.extend(f"note: {n}" for n in s.get("notes", []))
    emit(args, info, "\n".join(lines))
    return 0
