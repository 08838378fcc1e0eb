"""``napari-dkan demo``: the whole product on a real sample, offline once the sample is cached.

Opens napari with a HER2ST section (slide + measured spots), loads the bundled default model,
predicts every spot and shows ERBB2 predicted and measured side by side, with the docks ready.
``--screenshot FILE`` renders the same view to a PNG and exits; on a machine without a display a
virtual X server (Xvfb) is started for it.

The sample comes from a small registry of public files — the section's H&E image, counts and
spot file from the HER2ST authors' public repository, checked by SHA-256 and cached in the
user's cache folder — or from a local HER2ST-layout copy (``--data-dir``), which is what the
tests and CI use.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_dkan.io.errors import DataError
from napari_dkan.paths import cache_dir

HER2ST_REPOSITORY = "https://raw.githubusercontent.com/almaan/her2st/master/data"


@dataclass(frozen=True)
class SampleFile:
    path: str  # relative to the HER2ST root
    sha256: str

    @property
    def url(self) -> str:
        return f"{HER2ST_REPOSITORY}/{self.path}"


#: public sample sections (Andersson et al. 2021, github.com/almaan/her2st; cite the paper)
SAMPLES: dict[str, tuple[SampleFile, ...]] = {
    "C2": (
        SampleFile("ST-cnts/C2.tsv.gz", "c1c59ea6cffae36b9ecb561b8e2a97e3aa5f4085f748e991a0e330ed9d09773d"),
        SampleFile("ST-spotfiles/C2_selection.tsv", "235b5f4306b3b57c628ffc82c98c7109602474fbcc79a917b9c50517f99b6b1c"),
        SampleFile("ST-imgs/C/C2/5714_HE_BT_C2.jpg", "26e2f73ae840cdd46c5bba405aae181f13a56a376b9848dff23f7a9c5de7f19e"),
    ),
    "C3": (
        SampleFile("ST-cnts/C3.tsv.gz", "e00c55a3eb9caac5d9c71b8906aae8be8b38f93e23938f4a0ebee17683ef6a2a"),
        SampleFile("ST-spotfiles/C3_selection.tsv", "7fd76c13370b7804ac3bb377b846d22485cf9223f9dd8dfc25be06e5aaf65755"),
        SampleFile("ST-imgs/C/C3/5714_HE_BT_D1.jpg", "0005a92674014d473040a28f0afca89ce5fa5c44019b479b638ceb3272ceb568"),
    ),
}


def fetch_sample(section: str = "C2", data_dir: str | Path | None = None) -> Path:
    """A HER2ST-layout root holding ``section``: ``data_dir`` itself, or the cached download."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not (root / "ST-cnts").is_dir():
            raise DataError(f"{root} is not a HER2ST-layout folder (no ST-cnts/ in it)")
        return root
    if section not in SAMPLES:
        raise DataError(f"no public sample {section!r}; available: {', '.join(SAMPLES)}")
    import pooch

    root = cache_dir("samples", "her2st")
    for f in SAMPLES[section]:
        target = root / f.path
        if target.is_file() and pooch.file_hash(str(target)) == f.sha256:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            pooch.retrieve(f.url, known_hash=f"sha256:{f.sha256}", fname=target.name,
                           path=str(target.parent), progressbar=False)
        except Exception as exc:  # noqa: BLE001 - network and checksum failures alike
            raise DataError(
                f"could not download the demo sample file {f.path} ({exc}). Without network, "
                "run the demo on a local copy: napari-dkan demo --data-dir PATH/TO/her2st"
            ) from exc
    return root


#: where ``napari-dkan demo`` renders its view on a machine with no display
HEADLESS_SCREENSHOT = "napari-dkan-demo.png"


def _ensure_display() -> Any:
    """Start a virtual X display when there is none (headless machines); None otherwise."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    if shutil.which("Xvfb") is None:
        raise DataError(
            "no display and no Xvfb: install it (apt-get install xvfb) to render screenshots "
            "on a headless machine"
        )
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(2560, 1440), color_depth=24)
    display.start()
    return display


def _settle(app: Any, dock: Any, timeout: float = 600.0) -> None:
    """Let Qt's event loop run until the dock's job is done, then a moment more for drawing.

    One event loop waits (``QEventLoop.exec``), not a Python loop of ``processEvents`` calls:
    each Python call into Qt costs a reference to ``None`` on PySide6 6.12.0, and a few
    thousand of them abort the process (tests/test_qt_binding.py).
    """
    if not wait_for(lambda: not dock.busy, timeout):
        raise DataError("the demo's prediction did not finish in time")
    wait_for(lambda: False, 0.3)  # let the canvas draw what arrived


def wait_for(condition: Callable[[], bool], timeout: float, poll_ms: int = 20) -> bool:
    """Run the Qt event loop until ``condition()`` holds or ``timeout`` seconds pass."""
    from qtpy.QtCore import QEventLoop, QTimer

    if condition():
        return True
    loop = QEventLoop()
    poll, deadline = QTimer(), QTimer()
    poll.setInterval(poll_ms)
    poll.timeout.connect(lambda: loop.quit() if condition() else None)
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    poll.start()
    deadline.start(int(timeout * 1000))
    loop.exec()
    poll.stop()
    deadline.stop()
    return condition()


def run_demo(data_dir: str | Path | None = None, section: str = "C2", gene: str = "ERBB2",
             screenshot: str | Path | None = None, model: str | Path | None = None,
             device: str = "auto", size: tuple[int, int] = (2000, 1000)) -> dict[str, Any]:
    """Open the demo; with ``screenshot``, save the view and return instead of blocking."""
    from napari_dkan.bundled import default_model_path

    model_path = Path(model) if model is not None else default_model_path()
    if model_path is None:
        raise DataError("no model to demonstrate: this installation ships no bundled model")
    root = fetch_sample(section, data_dir)
    patient = section.rstrip("0123456789")
    section_dir = root / "ST-imgs" / patient / section
    if not section_dir.is_dir():
        raise DataError(f"section {section} has no image folder under {root / 'ST-imgs'}")
    display = _ensure_display() if screenshot is not None else None
    try:
        import napari
        from qtpy.QtWidgets import QApplication

        viewer = napari.Viewer(show=True, title=f"napari-dkan demo — HER2ST {section}")
        viewer.window.resize(*size)
        viewer.open(str(section_dir), plugin="napari-dkan")
        predict_dock, dock = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
        _add_training_dock(viewer)
        app = QApplication.instance()
        if device != "auto":
            dock.models.set_devices([device])
        _settle(app, dock)  # the dock may be loading the bundled model already
        if dock.model is None or Path(dock.model.run_dir).resolve() != Path(model_path).resolve():
            dock.choose_model(str(model_path))
            _settle(app, dock)
        if dock.model is None:
            raise DataError(f"the model {model_path} could not be loaded (see the notification)")
        dock.predict()
        _settle(app, dock)
        if gene not in dock.session.genes:
            raise DataError(f"{gene} is not in the model's gene panel")
        dock.set_gene(gene)
        dock.display.grid.setChecked(True)
        predict_dock.raise_()  # the prediction dock in front, the training dock a tab away
        _settle(app, dock)
        info = {"section": section, "gene": gene, "model": str(model_path), "scores": dock.scores.text(),
                "spots": dock.session.n_spots}
        if screenshot is None:
            napari.run()
            return info
        out = Path(screenshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = viewer.screenshot(canvas_only=False, flash=False)
        from PIL import Image

        Image.fromarray(image).save(out)
        viewer.close()
        return {**info, "screenshot": str(out), "width": int(image.shape[1]), "height": int(image.shape[0])}
    finally:
        if display is not None:
            display.stop()


def _add_training_dock(viewer: Any) -> None:
    """The fine-tuning dock, when this build has it (tabified beside the prediction dock)."""
    try:
        viewer.window.add_plugin_dock_widget("napari-dkan", "Fine-tune a model", tabify=True)
    except Exception:  # noqa: BLE001 - a build without the training dock still demonstrates prediction
        pass
