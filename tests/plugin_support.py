"""Helpers shared by the napari plugin tests: one tiny DKAN model per test process.

Training takes a few seconds (plus loading the packaged MiniLM for the gene texts), so every
plugin test module reuses the same run directory.
"""

from __future__ import annotations

from pathlib import Path

PANEL_SIZE = 12
_RUNS: dict[str, Path] = {}


def tiny_panel(panels_dir: Path) -> list[str]:
    genes = (panels_dir / "her2st.txt").read_text().split()
    return genes[:PANEL_SIZE]


def tiny_run(her2st_dataset, panels_dir: Path, base: Path) -> Path:
    """A tiny DKAN trained on C3 (validation = training: a test model, not a result).

    On the random ``tiny`` encoder's features it learns little beyond each gene's level, but
    enough epochs put that level inside the measured range, so predicted and measured share a
    colour scale that shows both — which the screenshot tests rely on.
    """
    if "tiny" in _RUNS and (_RUNS["tiny"] / "config.json").is_file():
        return _RUNS["tiny"]
    from napari_dkan.engine.data import FeatureSpec
    from napari_dkan.engine.runs import RunSpec, gene_text_for, prepare_sections, train_model
    from napari_dkan.engine.trainer import TrainSettings

    spec = RunSpec(model="dkan", preset="tiny", features=FeatureSpec(encoder="tiny"),
                   settings=TrainSettings(epochs=12, batch_size=32, lr=1e-2, contrastive_genes=8,
                                          device="cpu"))
    panel = tiny_panel(panels_dir)
    data = prepare_sections([her2st_dataset["C3"]], spec, panel)
    run = base / "tiny-dkan"
    text = gene_text_for(spec, panel)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only contend (6× slower on 2 busy cores)
    try:
        train_model(data, ["C3"], ["C3"], spec, panel, run, gene_text=text)
    finally:
        torch.set_num_threads(threads)
    _RUNS["tiny"] = run
    return run


def prediction_dock(viewer, section_dir: Path):
    """The prediction dock as an installation without a bundled model starts it (no model
    chosen: the tests drive the tiny model), added through napari's plugin manager as a user's
    Plugins menu does, then the section opened — so the dock must notice the reader's layers."""
    import pytest

    from napari_dkan import bundled
    from napari_dkan.demo import wait_for

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bundled, "default_model_path", lambda: None)
        _, widget = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    viewer.open(str(section_dir), plugin="napari-dkan")
    wait_for(lambda: False, 0.05)  # one pass of the event loop: the dock sees the new layers
    return widget
