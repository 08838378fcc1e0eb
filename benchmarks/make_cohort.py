"""Build a cohort of small pyramidal slides from real HER2ST H&E, and its manifest.

For throughput runs of ``napari-dkan predict-cohort``: slide *i* mirror-tiles a crop of HER2ST
section ``SECTIONS[i % 5]``, rotated by 90° × (i // 5) so no two slides are alike, into a
JPEG-tiled pyramidal TIFF that OpenSlide opens with its µm/px (the same writer as
``make_synthetic_slide.py``).  The manifest asks for a spot lattice over the detected tissue.

    python benchmarks/make_cohort.py /tmp/cohort --slides 12 --size 3000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_synthetic_slide import DEFAULT_SOURCE, source_crop, write_pyramid  # noqa: E402

SECTIONS = ("C2", "C3", "C4", "C5", "B4")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder (slides, manifest.csv)")
    p.add_argument("--slides", type=int, default=12, help="number of slides (default 12)")
    p.add_argument("--size", type=int, default=3000, help="slide side in pixels (default 3000)")
    p.add_argument("--crop", type=int, default=2048, help="source crop side, a power of two")
    p.add_argument("--mpp", type=float, default=0.5, help="µm per pixel written in the TIFFs")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="HER2ST root")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    crops = {s: source_crop(args.source, s, args.crop) for s in SECTIONS[: min(args.slides, len(SECTIONS))]}
    rows = ["slide,spots,name"]
    for i in range(args.slides):
        crop = np.ascontiguousarray(np.rot90(crops[SECTIONS[i % len(SECTIONS)]], k=i // len(SECTIONS)))
        name = f"slide-{i:03d}"
        write_pyramid(args.out / f"{name}.tif", crop, args.size, args.mpp, quality=85)
        rows.append(f"{name}.tif,lattice,{name}")
    (args.out / "manifest.csv").write_text("\n".join(rows) + "\n")
    print(f"{args.slides} slides of {args.size}² px and {args.out / 'manifest.csv'} in "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
