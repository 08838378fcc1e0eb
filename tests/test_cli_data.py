"""``napari-dkan panel`` and ``napari-dkan inspect`` on the real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_dkan.cli import main


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_panel_reproduces_the_published_her2st_panel(her2st, panels_dir, capsys):
    assert main(["panel", str(her2st), "--n", "250"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == (panels_dir / "her2st.txt").read_text().splitlines()


def test_panel_json_and_output_file(her2st, tmp_path, capsys):
    f = tmp_path / "p.txt"
    assert main(["panel", str(her2st), "--n", "5", "--sections", "C2", "C3", "-o", str(f), "--json"]) == 0
    info = _last_json(capsys.readouterr().out)
    assert info["n"] == 5 and info["sections"] == ["C2", "C3"]
    assert f.read_text().split() == info["genes"]


def test_inspect_svs_reports_level_size_and_mpp(wsi_dir, capsys):
    assert main(["inspect", str(wsi_dir / "CMU-1-Small-Region.svs"), "--json"]) == 0
    info = _last_json(capsys.readouterr().out)
    assert info["type"] == "slide" and info["levels"] == 1
    assert (info["width"], info["height"]) == (2220, 2967)
    assert info["mpp"] == pytest.approx(0.499)


def test_inspect_her2st_lists_sections(her2st, capsys):
    assert main(["inspect", str(her2st), "--json"]) == 0
    info = _last_json(capsys.readouterr().out)
    assert info["n_sections"] == 36 == len(info["sections"])
    assert info["n_with_counts"] == 36 and info["n_with_images"] == 5
    c2 = next(s for s in info["sections"] if s["name"] == "C2")
    assert c2["spots"] == 187 and c2["trainable"] and c2["patient"] == "C"


def test_inspect_human_text(her2st, capsys):
    assert main(["inspect", str(her2st)]) == 0
    out = capsys.readouterr().out
    assert "36 section(s) from 8 patient(s)" in out and "5 with images" in out


def test_errors_are_one_line_and_exit_2(tmp_path, wsi_dir, capsys):
    assert main(["inspect", str(tmp_path / "missing.svs"), "--json"]) == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "error" in _last_json(captured.out)
    broken = wsi_dir / "openslide-fixtures" / "unreadable.svs"
    assert broken.is_file()  # the file exists: the error must be about its contents
    assert main(["inspect", str(broken)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "unreadable.svs" in err and "OpenSlide cannot read" in err and "does not exist" not in err


def test_console_script_and_module_entry_points():
    script = Path(sys.executable).parent / "napari-dkan"
    for cmd in ([str(script)], [sys.executable, "-m", "napari_dkan"]):
        out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.startswith("napari-dkan ")
