"""The README's picture of the fine-tuning dock: the bundled model fine-tuned on HER2ST C2.

Opens C2 in napari with both docks (tabs of one dock area), fine-tunes the bundled model
through the dock for a few epochs (validation on C3), and saves the window with the dock's
curves when the run ends:

    xvfb-run -a python scripts/screenshot_training_dock.py --data ../shared/data/her2st \
        --out docs/fine-tune.png [--epochs 4] [--device cpu]

On a CPU the image features of C2 and C3 are extracted first (minutes, cached afterwards).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a HER2ST-layout root (with C2 and C3)")
    parser.add_argument("--out", default="docs/fine-tune.png")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="1600x1000", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args()

    import napari
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-dkan — fine-tuning")
    viewer.window.resize(*(int(v) for v in args.size.split("x")))
    viewer.open(str(Path(args.data) / "ST-imgs" / "C" / "C2"), plugin="napari-dkan")
    viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    _, train = viewer.window.add_plugin_dock_widget("napari-dkan", "Fine-tune a model")
    app = QApplication.instance()

    def settle(until=lambda: True, timeout: float = 3600.0) -> None:
        t0 = time.monotonic()
        while not until() or train.busy:
            app.processEvents()
            time.sleep(0.02)
            if time.monotonic() - t0 > timeout:
                raise SystemExit("timed out")
        for _ in range(50):
            app.processEvents()
            time.sleep(0.01)

    settle()  # devices, presets and the sections of the prefilled dataset
    form = train.form
    form.choose(form.validation, "C3")
    form.epochs.setValue(args.epochs)
    form.device.setCurrentText(args.device)
    form.output.edit.setText(str(Path(tempfile.mkdtemp()) / "C2-fine-tuned"))
    form.advanced_toggle.setChecked(False)
    train.train()
    settle(lambda: train.outcome is not None)
    image = viewer.screenshot(canvas_only=False, flash=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out)
    print(f"{train.status.text()} → {out}")
    viewer.close()


if __name__ == "__main__":
    main()
