"""``napari-dkan demo``: real sample, bundled model, a screenshot that shows tissue and spots."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_dkan.cli import main
from napari_dkan.demo import SAMPLES, fetch_sample

sys.path.insert(0, str(Path(__file__).parent))


def _coloured_fraction(rgb: np.ndarray) -> float:
    """Pixels that are strongly coloured (spot colormaps), not slide pink/purple nor grey."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    green_yellow = (g > r + 30) & (g > b + 30)  # viridis' upper half: spots, never H&E
    return float(green_yellow.mean())


def _tissue_fraction(rgb: np.ndarray) -> float:
    """H&E's pink to blue-violet: blue well above green, red above green, and not dark.

    Grey UI has r ≈ g ≈ b; viridis is green-dominant except its dark purple end (mean < 80).
    """
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return float(((b > g + 20) & (r > g) & ((r + g + b) / 3 > 80)).mean())


def test_demo_without_a_display_renders_tissue_and_coloured_spots(her2st, tmp_path):
    """The real headless path: no DISPLAY, no --screenshot; the demo starts its own Xvfb."""
    import os
    import subprocess

    from napari_dkan.bundled import default_model_path

    args = ["demo", "--data-dir", str(her2st), "--json", "--device", "cpu"]
    if default_model_path() is None:  # a build without the bundled model: a trained tiny run
        from napari_dkan.io import open_dataset
        from plugin_support import tiny_run

        args += ["--model", str(tiny_run(open_dataset(her2st), her2st.parent / "gene_panels", tmp_path))]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                         env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "napari_dkan", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no display" in done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    from PIL import Image

    from napari_dkan.demo import HEADLESS_SCREENSHOT

    assert info["screenshot"] == HEADLESS_SCREENSHOT
    rgb = np.asarray(Image.open(tmp_path / HEADLESS_SCREENSHOT).convert("RGB"))
    assert rgb.shape[0] >= 600 and rgb.shape[1] >= 1000
    assert rgb.std() > 20, "the screenshot is blank"
    assert _tissue_fraction(rgb) > 0.03, "no tissue visible"
    assert _coloured_fraction(rgb) > 0.002, "no coloured spots visible"
    assert info["spots"] == 187 and "Pearson r" in info["scores"]


def test_sample_registry_reads_a_local_copy_and_checks_names(her2st):
    assert fetch_sample("C2", her2st) == her2st
    from napari_dkan.io.errors import DataError

    with pytest.raises(DataError, match="not a HER2ST-layout folder"):
        fetch_sample("C2", her2st / "ST-imgs")
    with pytest.raises(DataError, match="no public sample"):
        fetch_sample("Z9")


def test_registry_checksums_match_the_public_files(her2st):
    import hashlib

    for files in SAMPLES.values():
        for f in files:
            assert hashlib.sha256((her2st / f.path).read_bytes()).hexdigest() == f.sha256, f.path
            assert f.url.startswith("https://") and f.url.endswith(f.path)


def test_download_failure_says_how_to_run_offline(tmp_path, monkeypatch):
    import pooch

    from napari_dkan.io.errors import DataError

    def offline(*a, **k):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(DataError, match="--data-dir"):
        fetch_sample("C3")


def test_demo_with_a_display_opens_a_window(monkeypatch, tmp_path):
    import napari_dkan.demo as demo

    seen = {}

    def fake_run(data_dir, section, gene, screenshot, model, device):
        seen["screenshot"] = screenshot
        return {"section": section, "gene": gene, "scores": "r", "screenshot": None}

    monkeypatch.setattr(demo, "run_demo", fake_run)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    assert main(["demo", "--data-dir", str(tmp_path)]) == 0
    assert seen["screenshot"] is None  # a screen: the window opens, nothing is rendered
