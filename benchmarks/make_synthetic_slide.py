"""Build a large pyramidal TIFF from real HER2ST H&E, plus a Visium-like spot lattice for it.

For GPU throughput runs of ``napari-dkan bench features``: a 40,000×40,000 px slide (default)
read lazily through OpenSlide, like a real whole-slide image, with ~46,000 spots.

The level-0 image tiles a square crop of a real H&E section (HER2ST C2 by default) with
mirroring, so there are no seams: pixel u maps to crop pixel m = u mod 2T, or 2T−1−m past T.
The crop side T is a power of two, so every pyramid level is the same mirror-tiling of the crop
reduced by 2^k and the levels agree exactly with box-averaging level 0, without ever holding
level 0 in memory.  Pages are written one level after another, JPEG-compressed 256-px tiles,
reduced levels marked ``subfiletype=1`` and resolution tags set: the layout OpenSlide opens as a
multi-level ``generic-tiff`` with µm/px.

Spots are a hexagonal lattice (55 µm spots, 100 µm apart) over the whole slide, written as a
scanpy-convention ``.h5ad`` whose ``source_image_path`` points at the TIFF, so
``napari-dkan bench features OUT/synthetic-40000.h5ad`` finds both.

    python benchmarks/make_synthetic_slide.py /tmp/synth --size 40000

Takes ~2–4 minutes and ~1–2 GB of disk at 40,000 px on a few cores; needs tifffile and
imagecodecs (both dependencies of napari-dkan's environment).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

TILE = 256
DEFAULT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "her2st"


def _mirror(u: np.ndarray, period: int) -> np.ndarray:
    m = u % (2 * period)
    return np.where(m < period, m, 2 * period - 1 - m)


def source_crop(source: Path, section: str, side: int) -> np.ndarray:
    """A side×side crop centred on the tissue of a HER2ST section's H&E image."""
    from napari_dkan.io import open_dataset

    sec = open_dataset(source)[section]
    slide = sec.open_slide()
    w, h = slide.dimensions
    if side > min(w, h):
        raise SystemExit(f"crop side {side} is larger than the {w}×{h} source image")
    cx, cy = float(np.median(sec.spots.x)), float(np.median(sec.spots.y))
    x0 = int(min(max(cx - side / 2, 0), w - side))
    y0 = int(min(max(cy - side / 2, 0), h - side))
    return slide.read_region(0, x0, y0, side, side)


def reduce(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-average by ``factor`` (the crop side is a multiple of it)."""
    if factor == 1:
        return img
    h, w, c = img.shape
    blocks = img.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return blocks.mean(axis=(1, 3)).round().astype(np.uint8)


def level_shapes(size: int, smallest: int = 1024) -> list[tuple[int, int]]:
    shapes = [(size, size)]
    while max(shapes[-1]) > smallest:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def tiles(crop: np.ndarray, shape: tuple[int, int]):  # noqa: ANN201 - a generator of tiles
    period = crop.shape[0]
    h, w = shape
    for r0 in range(0, h, TILE):
        rows = _mirror(np.arange(r0, r0 + TILE), period)
        for c0 in range(0, w, TILE):
            cols = _mirror(np.arange(c0, c0 + TILE), period)
            yield crop[rows[:, None], cols[None, :]]


def write_pyramid(path: Path, crop: np.ndarray, size: int, mpp: float, quality: int) -> list[tuple[int, int]]:
    import tifffile

    shapes = level_shapes(size)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k, shape in enumerate(shapes):
            t = time.perf_counter()
            level_crop = reduce(crop, 2**k)
            px_per_cm = 1e4 / (mpp * 2**k)
            tif.write(
                tiles(level_crop, shape),
                shape=(*shape, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=0 if k == 0 else 1,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
            print(f"  level {k}: {shape[1]}×{shape[0]} px in {time.perf_counter() - t:.1f} s",
                  file=sys.stderr)
    return shapes


def write_spots(path: Path, image: Path, size: int, mpp: float, pitch_um: float, diameter_um: float) -> int:
    import scipy.sparse as sp

    from napari_dkan.io.anndata_io import write_spatial_h5ad
    from napari_dkan.io.counts import Counts
    from napari_dkan.io.spots import GridLayout, SpotTable, hex_lattice

    pitch_px = pitch_um / mpp
    margin = pitch_px / 2
    rows, cols, xs, ys = hex_lattice(margin, margin, size - 2 * margin, size - 2 * margin, pitch_px)
    keep = (xs < size) & (ys < size)
    rows, cols, xs, ys = rows[keep], cols[keep], xs[keep], ys[keep]
    ids = np.array([f"r{r}c{c}" for r, c in zip(rows, cols)])
    spots = SpotTable(spot_id=ids, array_row=rows, array_col=cols, x=xs, y=ys,
                      in_tissue=np.ones(len(ids), bool), diameter_px=diameter_um / mpp,
                      layout=GridLayout.HEX, pitch_um=pitch_um, diameter_um=diameter_um,
                      source="synthetic lattice")
    # no expression: one all-zero placeholder gene keeps the file a valid AnnData
    counts = Counts(sp.csr_matrix((len(ids), 1), dtype=np.float32), np.array(["NONE"]), ids)
    write_spatial_h5ad(path, counts, spots, library_id=image.stem, image_path=image.resolve())
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--size", type=int, default=40_000, help="slide side in pixels (default 40000)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="HER2ST root")
    p.add_argument("--section", default="C2", help="source section (default C2)")
    p.add_argument("--crop", type=int, default=8192, help="source crop side, a power of two")
    p.add_argument("--mpp", type=float, default=0.5, help="µm per pixel written in the TIFF")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality (default 85)")
    p.add_argument("--pitch-um", type=float, default=100.0, help="spot pitch (Visium: 100)")
    p.add_argument("--diameter-um", type=float, default=55.0, help="spot diameter (Visium: 55)")
    args = p.parse_args(argv)
    if args.crop & (args.crop - 1):
        raise SystemExit("--crop must be a power of two (so every level tiles the crop exactly)")
    args.out.mkdir(parents=True, exist_ok=True)
    tif = args.out / f"synthetic-{args.size}.tif"
    h5ad = args.out / f"synthetic-{args.size}.h5ad"
    t0 = time.perf_counter()
    crop = source_crop(args.source, args.section, args.crop)
    shapes = write_pyramid(tif, crop, args.size, args.mpp, args.quality)
    n = write_spots(h5ad, tif, args.size, args.mpp, args.pitch_um, args.diameter_um)

    import openslide

    with openslide.OpenSlide(str(tif)) as s:  # check that OpenSlide sees what was meant
        levels, vendor = s.level_count, s.properties.get("openslide.vendor", "?")
        mpp = float(s.properties.get("openslide.mpp-x", "nan"))
    if levels != len(shapes) or not math.isfinite(mpp):
        raise SystemExit(f"OpenSlide sees {levels} level(s) and µm/px {mpp}: the pyramid is wrong")
    print(f"{tif} ({tif.stat().st_size / 2**20:.0f} MiB, {vendor}, {levels} levels, "
          f"{mpp:.3f} µm/px) and {h5ad} ({n} spots) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
