"""Packaging: the napari manifest is discoverable, and start-up imports stay light."""

from __future__ import annotations

import os
import subprocess
import sys


def test_npe2_discovers_the_plugin_and_its_contributions():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    assert "napari-dkan" in pm._manifests
    mf = pm.get_manifest("napari-dkan")
    assert mf.contributions.readers, "the reader contribution is missing"
    commands = {c.id for c in mf.contributions.commands}
    assert {"napari-dkan.get_reader", "napari-dkan.prediction_dock", "napari-dkan.write_points"} <= commands
    assert [w.command for w in mf.contributions.widgets] == ["napari-dkan.prediction_dock", "napari-dkan.training_dock"]
    assert [w.command for w in mf.contributions.writers] == ["napari-dkan.write_points"]


def test_npe2_validate_passes():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", "napari-dkan"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_plugin_modules_import_no_heavy_backend():
    code = (
        "import sys, napari_dkan, napari_dkan._reader, napari_dkan.cli\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'openslide', 'qtpy', 'napari')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_widget_and_writer_modules_import_no_torch_or_slide_backend():
    """Opening the dock or listing writers must not load torch, timm, transformers or OpenSlide.

    Qt and napari are fine here: napari has loaded them before it imports these modules.
    """
    code = (
        "import sys, napari_dkan._writer, napari_dkan._widgets.export\n"
        "import napari_dkan._widgets.dock, napari_dkan._widgets.training_dock\n"
        "heavy = [m for m in ('torch', 'timm', 'transformers', 'openslide') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == ""


def _readme_commands() -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)][:2]


def test_ci_runs_exactly_the_readme_test_command():
    from pathlib import Path

    setup, test = _readme_commands()
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert test in ci.splitlines(), "'.ci/run' must run README's test command verbatim"
    assert "constraints.txt" in setup and "constraints.txt" in ci
