"""Screenshot of the prediction dock with measured and predicted side by side (for the README).

    xvfb-run -a -s "-screen 0 1920x1200x24" python scripts/dock_screenshot.py \\
        --model RUN_DIR [--section C2] [--gene ERBB2] [-o docs/prediction-dock.png]

Opens a HER2ST section with the plugin's reader, opens the dock through napari's plugin
manager, loads the model, predicts every spot, picks the gene, switches to side-by-side view
and saves the whole window.  Without ``--model`` a tiny DKAN is trained first (as in the tests),
whose predictions are nearly flat: pass a real run to show a real map.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_DKAN_SHARED", ROOT.parent / "shared")) / "data"


def wait_for(dock, app) -> None:
    while dock.busy:
        app.processEvents()
        time.sleep(0.01)
    for _ in range(30):  # let the canvas draw what arrived
        app.processEvents()
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--section", default="C2")
    parser.add_argument("--gene", default="ERBB2")
    parser.add_argument("--size", type=int, nargs=2, default=(1700, 1000), metavar=("W", "H"))
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "prediction-dock.png")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_dir = args.model
    if run_dir is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from napari_dkan.io import open_dataset
        from plugin_support import tiny_run

        run_dir = tiny_run(open_dataset(DATA / "her2st"), DATA / "gene_panels",
                           Path(tempfile.mkdtemp(prefix="dock-shot-")))

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-dkan")
    viewer.window.resize(*args.size)
    patient = args.section.rstrip("0123456789")
    viewer.open(str(DATA / "her2st" / "ST-imgs" / patient / args.section), plugin="napari-dkan")
    _, dock = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    app = QApplication.instance()
    dock.models.set_devices(["cpu"])
    dock.choose_model(str(run_dir))
    wait_for(dock, app)
    dock.predict()
    wait_for(dock, app)
    dock.set_gene(args.gene)
    dock.display.grid.setChecked(True)
    wait_for(dock, app)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image = viewer.screenshot(canvas_only=False, flash=False)
    from PIL import Image

    Image.fromarray(image).save(args.output)
    print(f"{args.output}: {image.shape[1]}×{image.shape[0]} · {dock.scores.text()}")
    viewer.close()


if __name__ == "__main__":
    main()
