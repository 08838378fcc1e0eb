"""README picture of the trust layer: the prediction dock with a reliable and an unreliable gene
and the uncertainty layer (bundled model, HER2ST section C4).

    xvfb-run -a python scripts/trust_screenshot.py --data ../shared/data/her2st -o docs/trust.png

Left: COX6C (reliable), its prediction over the slide.  Right: COL1A1 (unreliable: its layer is
faded and the canvas says so) with the uncertainty layer (90 % interval width) shown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/her2st"))
    ap.add_argument("--section", default="C4")
    ap.add_argument("--genes", nargs=2, default=["COX6C", "COL1A1"])
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/trust.png"))
    args = ap.parse_args()

    import napari
    from PIL import Image

    from napari_dkan._widgets.jobs import run_to_end  # noqa: F401 - the dock's own modules load

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    _, dock = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    viewer.open(str(args.data / "ST-imgs" / args.section[0] / args.section), plugin="napari-dkan")

    from napari_dkan.demo import wait_for  # Qt's event loop, not a processEvents loop

    wait_for(lambda: not dock.busy and dock.model is not None, 100)
    dock.predict()
    # up to ~15 min on a busy CPU
    wait_for(lambda: not dock.busy and dock.session.predicted is not None, 1000)
    good, bad = args.genes
    shots = []
    for gene, uncertainty in ((good, False), (bad, True)):
        dock.set_gene(gene)
        dock.set_uncertainty_visible(uncertainty)
        measured = dock.builder.layer("measured")
        if measured is not None:
            measured.visible = False
        wait_for(lambda: False, 0.05)
        dock.builder.fit_to_spots()
        wait_for(lambda: False, 0.05)
        shots.append(np.asarray(viewer.screenshot(canvas_only=False, flash=False)))
    h = min(s.shape[0] for s in shots)
    both = np.concatenate([s[:h, :, :3] for s in shots], axis=1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(both)
    img.thumbnail((2400, 2400))
    img.save(args.output)
    print(f"wrote {args.output} ({img.size[0]}×{img.size[1]})")
    viewer.close()


if __name__ == "__main__":
    main()
