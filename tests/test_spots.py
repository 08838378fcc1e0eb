"""Spot readers on the real files: legacy ST (HER2ST), Visium 1.x/2.x/3.x, AnnData, lattice."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from napari_dkan.io import DataError, open_dataset
from napari_dkan.io.spots import GridLayout


def test_her2st_root_is_a_dataset_of_36_sections(her2st_dataset):
    ds = her2st_dataset
    assert ds.kind == "legacy-st"
    assert len(ds) == 36
    assert sorted(ds.patients) == list("ABCDEFGH")
    assert {s.name for s in ds.sections if s.has_image} == {"B4", "C2", "C3", "C4", "C5"}
    assert all(s.has_counts for s in ds.sections)
    assert [s.name for s in ds.trainable().sections] == ["B4", "C2", "C3", "C4", "C5"]
    assert ds["C2"].patient == "C"


def test_her2st_section_spots_join_counts_and_spot_file(c2, her2st):
    spots = c2.spots
    assert len(spots) == 187 and spots.layout is GridLayout.SQUARE
    sel = pd.read_csv(her2st / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    row = sel[(sel.x == 25) & (sel.y == 13)].iloc[0]
    i = list(spots.spot_id).index("25x13")
    assert spots.x[i] == pytest.approx(row.pixel_x) and spots.y[i] == pytest.approx(row.pixel_y)
    assert spots.array_col[i] == 25 and spots.array_row[i] == 13
    counts = c2.counts
    np.testing.assert_array_equal(counts.spot_id, spots.spot_id)
    assert counts.matrix.shape[0] == 187 and counts.matrix.shape[1] > 15000
    assert "ERBB2" in set(counts.genes)


def test_her2st_mpp_from_spot_pitch(c2):
    # ~291 px per 200 µm array step
    assert c2.mpp == pytest.approx(0.686, abs=0.005)
    assert c2.mpp_source == "spot pitch"
    assert c2.spots.diameter_px == pytest.approx(100 / c2.mpp)
    slide = c2.open_slide()  # checks every spot lies inside the image
    assert slide.mpp == pytest.approx(c2.mpp)


def test_spot_files_with_extra_spots_keep_only_counted_ones(her2st_dataset):
    c3 = her2st_dataset["C3"]  # spot file lists 182, counts 180
    assert len(c3.spots) == 180 == c3.counts.n_spots


def test_visium_v1_folder(visium_dir):
    ds = open_dataset(visium_dir)
    assert ds.kind == "visium" and len(ds) == 1
    sec = ds.sections[0]
    spots, counts = sec.spots, sec.counts
    assert len(spots) == 100 and counts.matrix.shape == (100, 100)
    assert spots.layout is GridLayout.HEX
    pos = pd.read_csv(visium_dir / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    b = spots.spot_id[0]
    assert spots.array_row[0] == pos.loc[b, 2] and spots.array_col[0] == pos.loc[b, 3]
    assert spots.y[0] == pos.loc[b, 4] and spots.x[0] == pos.loc[b, 5]  # row, col in full res
    # spot_diameter_fullres (89.43 px) spans Space Ranger's "theoretical 65 µm spot": that is
    # the scale, and the 55 µm capture spot is drawn 55/65 of it
    assert sec.mpp == pytest.approx(65 / 89.4275, rel=1e-4)
    assert spots.diameter_px == pytest.approx(89.4275 * 55 / 65, rel=1e-4)
    # hex neighbours: (r, c±2) and (r±1, c±1) only
    nbr = spots.neighbour_index()
    for i in range(len(spots)):
        for j in nbr[i][nbr[i] >= 0]:
            dr = abs(spots.array_row[j] - spots.array_row[i])
            dc = abs(spots.array_col[j] - spots.array_col[i])
            assert (dr, dc) in {(0, 2), (1, 1)}
    # one column step is 50 µm: the spot pitch gives the same scale within 0.1 %
    assert spots.estimate_mpp() == pytest.approx(sec.mpp, rel=1e-3)
    with pytest.raises(DataError, match="--image"):
        sec.require_image()


def _copy_visium(src, dst):
    dst.mkdir()
    shutil.copy(src / "filtered_feature_bc_matrix.h5", dst)
    (dst / "spatial").mkdir()
    shutil.copy(src / "spatial" / "scalefactors_json.json", dst / "spatial")
    pos = pd.read_csv(src / "spatial" / "tissue_positions_list.csv", header=None)
    pos.columns = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    return pos


@pytest.mark.parametrize("version", ["2.x", "3.x"])
def test_visium_newer_space_ranger_layouts_match_v1(visium_dir, tmp_path, version):
    outs = tmp_path / "sample" / "outs"
    outs.parent.mkdir()
    pos = _copy_visium(visium_dir, outs)
    if version == "2.x":
        pos.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    else:
        pos.to_parquet(outs / "spatial" / "tissue_positions.parquet", index=False)
    new = open_dataset(tmp_path / "sample").sections[0].spots  # finds outs/ itself
    old = open_dataset(visium_dir).sections[0].spots
    np.testing.assert_array_equal(new.spot_id, old.spot_id)
    np.testing.assert_array_equal(new.xy, old.xy)
    np.testing.assert_array_equal(new.array_col, old.array_col)


def test_visium_with_image_checks_spots_fit(visium_dir, wsi_dir, tmp_path):
    ds = open_dataset(visium_dir, image=wsi_dir / "CMU-1-Small-Region.svs")
    sec = ds.sections[0]
    assert sec.has_image and sec.trainable
    # the real Visium spots sit up to ~9,000 px; this 2,220 px wide slide is not their image
    with pytest.raises(DataError, match="outside the image"):
        sec.open_slide()


def test_h5ad_roundtrip_of_a_real_section(c2, tmp_path):
    from napari_dkan.io.anndata_io import write_spatial_h5ad

    f = tmp_path / "c2.h5ad"
    write_spatial_h5ad(f, c2.counts, c2.spots, "C2", image_path=c2.image_path)
    ds = open_dataset(f)
    assert ds.kind == "anndata" and ds.section_names == ["C2"]
    sec = ds.sections[0]
    np.testing.assert_array_equal(sec.spots.spot_id, c2.spots.spot_id)
    np.testing.assert_allclose(sec.spots.xy, c2.spots.xy)
    assert sec.spots.layout is GridLayout.SQUARE and sec.spots.pitch_um == 200
    assert sec.image_path == c2.image_path and sec.trainable
    assert (sec.counts.matrix != c2.counts.matrix).nnz == 0


def test_h5ad_from_scanpy_style_visium(visium_dir, tmp_path):
    import anndata

    sec = open_dataset(visium_dir).sections[0]
    spots, counts = sec.spots, sec.counts
    obs = pd.DataFrame({"array_row": spots.array_row, "array_col": spots.array_col,
                        "in_tissue": 1}, index=spots.spot_id)
    ad = anndata.AnnData(X=counts.matrix, obs=obs, var=pd.DataFrame(index=counts.genes),
                         obsm={"spatial": spots.xy},
                         uns={"spatial": {"V1_lib": {"scalefactors": {"spot_diameter_fullres": 89.4}}}})
    ad.write_h5ad(tmp_path / "v.h5ad")
    got = open_dataset(tmp_path / "v.h5ad").sections[0]
    assert got.name == "V1_lib"
    assert got.spots.layout is GridLayout.HEX and got.spots.diameter_px == pytest.approx(89.4)
    assert not got.has_image
    with pytest.raises(DataError, match="source_image_path"):
        got.require_image()


def test_h5ad_without_spatial_is_rejected(tmp_path):
    import anndata

    anndata.AnnData(X=np.ones((3, 2), np.float32)).write_h5ad(tmp_path / "plain.h5ad")
    with pytest.raises(DataError, match="obsm\\['spatial'\\]"):
        open_dataset(tmp_path / "plain.h5ad")


def test_lattice_over_detected_tissue(wsi_dir):
    from napari_dkan.io.lattice import detect_tissue

    ds = open_dataset(wsi_dir / "CMU-1-Small-Region.svs")
    assert ds.kind == "slide"
    sec = ds.sections[0]
    spots = sec.spots
    assert not sec.has_counts and sec.has_image
    assert spots.layout is GridLayout.HEX and spots.diameter_um == 55 and spots.pitch_um == 100
    assert spots.diameter_px == pytest.approx(55 / 0.499)
    slide = sec.open_slide()
    tissue = detect_tissue(slide)
    assert 0.05 < tissue.fraction < 0.95
    assert tissue.contains(spots.x, spots.y).all()
    # neighbours along a row are one pitch (100 µm) apart
    i = int(np.argmax(spots.neighbour_index()[:, 1] >= 0))
    j = spots.neighbour_index()[i, 1]
    dist_um = np.hypot(spots.x[j] - spots.x[i], spots.y[j] - spots.y[i]) * 0.499
    assert dist_um == pytest.approx(100, rel=1e-6)
    assert len(spots) > 50


def test_lattice_pitch_and_diameter_settable(wsi_dir):
    from napari_dkan.io.lattice import lattice_spots
    from napari_dkan.io.slides import open_slide

    slide = open_slide(wsi_dir / "CMU-1-Small-Region.svs")
    coarse = lattice_spots(slide, pitch_um=200, diameter_um=100)
    fine = lattice_spots(slide)
    assert 3 < len(fine) / len(coarse) < 5  # half the pitch, about four times the spots
    assert coarse.diameter_px == pytest.approx(100 / 0.499)
