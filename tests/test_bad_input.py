"""Every bad input of the data layer gets a clear error, and nothing the user had is touched."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_dkan.io import DataError, open_dataset
from napari_dkan.io.expression import check_panel, section_targets


def _mini_root(her2st: Path, tmp: Path, section: str = "C2", image: bool = True) -> Path:
    """A one-section HER2ST-style root copied from the real data."""
    root = tmp / "st"
    (root / "ST-cnts").mkdir(parents=True)
    (root / "ST-spotfiles").mkdir()
    shutil.copy(her2st / "ST-cnts" / f"{section}.tsv.gz", root / "ST-cnts")
    shutil.copy(her2st / "ST-spotfiles" / f"{section}_selection.tsv", root / "ST-spotfiles")
    if image:
        src = next((her2st / "ST-imgs" / section[0] / section).glob("*.jpg"))
        (root / "ST-imgs" / section[0] / section).mkdir(parents=True)
        (root / "ST-imgs" / section[0] / section / src.name).symlink_to(src)
    return root


def test_missing_spot_file(her2st, tmp_path):
    root = _mini_root(her2st, tmp_path)
    (root / "ST-spotfiles" / "C2_selection.tsv").unlink()
    sec = open_dataset(root)["C2"]
    with pytest.raises(DataError, match="no spot file"):
        sec.spots


def test_missing_count_file(her2st, tmp_path):
    root = _mini_root(her2st, tmp_path)
    (root / "ST-cnts" / "C2.tsv.gz").unlink()
    sec = open_dataset(root)["C2"]
    assert not sec.has_counts and not sec.trainable
    with pytest.raises(DataError, match="no measured expression"):
        sec.counts


def test_count_index_matching_no_spot(her2st, tmp_path):
    root = _mini_root(her2st, tmp_path)
    spot_file = root / "ST-spotfiles" / "C2_selection.tsv"
    lines = spot_file.read_text().splitlines()
    spot_file.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # drop the first spot (25x13)
    with pytest.raises(DataError, match="match no spot.*25x13"):
        open_dataset(root)["C2"].spots


def test_duplicate_spot_ids(her2st, tmp_path):
    root = _mini_root(her2st, tmp_path)
    spot_file = root / "ST-spotfiles" / "C2_selection.tsv"
    lines = spot_file.read_text().splitlines()
    spot_file.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match="duplicate spot id"):
        open_dataset(root)["C2"].spots


def test_spots_outside_the_image(her2st, wsi_dir, tmp_path):
    root = _mini_root(her2st, tmp_path, image=False)
    folder = root / "ST-imgs" / "C" / "C2"
    folder.mkdir(parents=True)
    shutil.copy(wsi_dir / "openslide-fixtures" / "boxes.png", folder / "wrong.png")
    sec = open_dataset(root)["C2"]
    with pytest.raises(DataError, match="outside the image of section C2"):
        sec.open_slide()


def test_non_numeric_counts(tmp_path, her2st):
    root = _mini_root(her2st, tmp_path, image=False)
    f = root / "ST-cnts" / "C2.tsv.gz"
    with gzip.open(f, "rt") as fh:
        lines = fh.read().splitlines()
    cells = lines[1].split("\t")
    cells[3] = "abc"
    lines[1] = "\t".join(cells)
    with gzip.open(f, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    header = lines[0].split("\t")
    with pytest.raises(DataError, match=f"non-numeric counts.*{header[3]}.*'abc'"):
        open_dataset(root)["C2"].counts


def test_panel_asking_for_genes_no_section_has(her2st_dataset):
    secs = [her2st_dataset["C2"], her2st_dataset["C3"]]
    with pytest.raises(DataError, match="2 of them in no section.*NOTAGENE"):
        check_panel(["ERBB2", "NOTAGENE", "ALSONOT"], secs)
    check_panel(["ERBB2", "GAPDH"], secs)  # fine
    with pytest.raises(DataError, match="section C2: 1 of 2 panel genes are absent.*NOTAGENE"):
        section_targets(secs[0], ["ERBB2", "NOTAGENE"])


def test_empty_tissue_in_lattice(tmp_path):
    white = tmp_path / "blank.png"
    rng = np.random.default_rng(0)
    glass = (245 + rng.integers(0, 8, (600, 800, 3))).clip(0, 255).astype(np.uint8)
    Image.fromarray(glass).save(white)
    sec = open_dataset(white, mpp=0.5).sections[0]
    with pytest.raises(DataError, match="no tissue detected"):
        sec.spots


def test_lattice_on_image_without_scale_asks_for_mpp(wsi_dir):
    sec = open_dataset(wsi_dir / "openslide-fixtures" / "boxes.png").sections[0]
    with pytest.raises(DataError, match="--mpp"):
        sec.spots


def test_visium_without_full_resolution_image(visium_dir):
    sec = open_dataset(visium_dir).sections[0]
    assert not sec.trainable
    with pytest.raises(DataError, match="Space Ranger does not copy the full-resolution image"):
        sec.open_slide()


def test_visium_image_path_that_does_not_exist(visium_dir, tmp_path):
    with pytest.raises(DataError, match="image not found"):
        open_dataset(visium_dir, image=tmp_path / "missing.tif")


def test_visium_matrix_from_another_run(visium_dir, tmp_path):
    from test_spots import _copy_visium

    out = tmp_path / "v"
    pos = _copy_visium(visium_dir, out)
    barcodes = open_dataset(visium_dir).sections[0].counts.spot_id
    pos[~pos.barcode.isin(barcodes[:3])].to_csv(out / "spatial" / "tissue_positions.csv", index=False)
    with pytest.raises(DataError, match="different runs"):
        open_dataset(out).sections[0].spots


def test_unrecognised_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(DataError, match="not a dataset this tool recognises"):
        open_dataset(tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file x.csv"):
        open_dataset(tmp_path / "x.csv")


def test_user_files_are_left_untouched(her2st, tmp_path):
    root = _mini_root(her2st, tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    sec = open_dataset(root)["C2"]
    sec.counts, sec.spots, sec.open_slide()
    after = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert before == after
