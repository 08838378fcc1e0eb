"""The Qt binding: no reference leaks on the calls the plugin makes thousands of times a job.

PySide6 6.12.0 on Python 3.11 drops one reference to ``None`` on every call of a C++ method
that returns ``void`` (``processEvents``, ``QProgressBar.setValue``, ``QLabel.setText``,
``QTest.qWait``, …: measured 2,000 of 2,000); when ``None``'s count reaches zero the process
aborts with "Fatal Python error: none_dealloc".  A prediction's progress reports alone make
four such calls each, so a long job killed napari.  6.11.3, 6.10.3 and 6.9.3 do not leak
(measured the same way), so the ``testing`` and ``all`` extras exclude 6.12.0.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
# From Python 3.12 None is immortal: its count never falls, and a leak cannot kill the process.
needs_mortal_none = pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="None is immortal from Python 3.12: nothing to measure"
)


@needs_mortal_none
def test_the_installed_binding_does_not_leak_none_references(qapp) -> None:
    from qtpy import API_NAME, QT_VERSION
    from qtpy.QtWidgets import QLabel, QProgressBar

    bar, label = QProgressBar(), QLabel()
    before = sys.getrefcount(None)
    for i in range(2_000):
        qapp.processEvents()
        bar.setValue(i % 100)
        label.setText("x")
    lost = before - sys.getrefcount(None)
    # 6,000 void calls: a leaking binding loses ~6,000 references; a sound one a handful at most
    assert lost < 100, f"{API_NAME} (Qt {QT_VERSION}) lost {lost} references to None in 6,000 calls"


def test_the_extras_exclude_the_leaking_binding() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in ("testing", "all"):
        specs = [d for d in project["optional-dependencies"][extra]
                 if re.match(r"pyside6(-essentials)?\b", d, re.IGNORECASE)]
        assert specs, f"the {extra} extra names no PySide6 binding"
        assert all("!=6.12.0" in d.replace(" ", "") for d in specs), (extra, specs)


@pytest.mark.gui
def test_a_long_job_with_tens_of_thousands_of_progress_reports_does_not_crash(
        viewer, qtbot, monkeypatch) -> None:
    """30,000 progress reports from an engine thread through the prediction dock's runner."""
    import threading

    from napari_dkan import bundled
    from napari_dkan._widgets import jobs
    from napari_dkan._widgets.dock import PredictionDock

    # neither the bundled model nor torch's device probe: only the job under test runs
    monkeypatch.setattr(bundled, "default_model_path", lambda: None)
    monkeypatch.setattr(jobs, "available_devices_steps", _cpu_only)
    dock = PredictionDock(viewer)
    qtbot.waitUntil(lambda: not dock.busy, timeout=30_000)
    n = 30_000

    def work(report: jobs.Report) -> str:
        for i in range(n):
            report("predicting", i + 1, n)
        return "finished"

    results: list[str] = []
    before = sys.getrefcount(None)
    shown: list[int] = []
    steps = jobs.stepwise(work, threading.Event())
    worker = dock.runner.start(steps, results.append, "soak",
                               on_yield=lambda p: shown.append(p.done))
    assert worker is not None
    qtbot.waitUntil(lambda: not dock.busy, timeout=60_000)
    assert results == ["finished"]
    assert len(shown) == n and shown[-1] == n  # every report reached the GUI thread
    assert dock.progress.format() == "done"
    if sys.version_info < (3, 12):
        assert before - sys.getrefcount(None) < 1_000
    dock.close()


def _cpu_only():
    return ["cpu"]
    yield  # a step generator with no steps
