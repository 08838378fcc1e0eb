"""Other people's data: scanpy-made .h5ad, Visium folders with blank or missing parts, Ensembl
ids, log-normalised X, repeated gene names, empty files, and our own prediction files."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_dkan.io.errors import DataError
from napari_dkan.io.expression import section_targets
from napari_dkan.io.formats import open_dataset
from napari_dkan.io.spots import GridLayout

SR_SPOT_UM = 65.0  # Space Ranger's spot_diameter_fullres spans a "theoretical 65 µm spot"


def _scalefactors(visium_dir: Path) -> dict:
    return json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())


@pytest.fixture(scope="module")
def scanpy_h5ad(visium_dir, tmp_path_factory):
    """The .h5ad a user makes: scanpy.read_visium, normalize_total + log1p, write."""
    sc = pytest.importorskip("scanpy", reason="scanpy makes the .h5ad users have (testing extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read_visium's FutureWarning (moved to squidpy)
        adata = sc.read_visium(visium_dir)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    path = tmp_path_factory.mktemp("scanpy") / "visium.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def folder(visium_dir):
    return open_dataset(visium_dir).sections[0]


def test_scanpy_h5ad_has_the_scale_image_and_counts_of_its_visium_folder(scanpy_h5ad, folder, visium_dir):
    sec = open_dataset(scanpy_h5ad).sections[0]
    factors = _scalefactors(visium_dir)
    # the scale comes from spot_diameter_fullres: 65 µm over that many pixels, not a 200 µm ST pitch
    assert sec.mpp == pytest.approx(SR_SPOT_UM / factors["spot_diameter_fullres"], rel=1e-6)
    assert sec.mpp_source == "dataset"
    spots = sec.spots
    assert spots.layout is GridLayout.HEX and spots.pitch_um == 100
    assert spots.diameter_px * sec.mpp == pytest.approx(55.0)  # drawn at the true spot size
    # the hires image of this copy is blank: the lowres one is shown, placed by its scale factor
    assert sec.preview.kind == "lowres"
    assert sec.preview.scale == pytest.approx(factors["tissue_lowres_scalef"])
    assert sec.preview.image.dtype == np.uint8 and sec.preview.image.std() > 1
    # log-normalised X is undone: the model's targets equal those from the raw counts
    genes = [g for g in folder.counts.genes if not g.startswith("ENSG")]
    assert len(genes) >= 50
    np.testing.assert_allclose(section_targets(sec, genes, smoothing=True),
                               section_targets(folder, genes, smoothing=True), atol=1e-5)
    notes = " ".join(sec.notes)
    assert "log-normalised" in notes and "expm1" in notes
    assert "Ensembl" in notes and "blank" in notes


def test_scanpy_h5ad_without_array_coordinates_infers_the_visium_grid(scanpy_h5ad, folder, tmp_path):
    import anndata

    adata = anndata.read_h5ad(scanpy_h5ad)
    del adata.obs["array_row"], adata.obs["array_col"]
    adata.write_h5ad(tmp_path / "bare.h5ad")
    sec = open_dataset(tmp_path / "bare.h5ad").sections[0]
    assert sec.spots.layout is GridLayout.HEX
    assert sec.mpp == pytest.approx(folder.mpp, rel=1e-6)
    # the same grid up to a shift: same neighbours, so the same smoothing
    dr = sec.spots.array_row - folder.spots.array_row
    dc = sec.spots.array_col - folder.spots.array_col
    assert np.unique(dr).size == 1 and np.unique(dc).size == 1
    np.testing.assert_array_equal(sec.spots.neighbour_index(), folder.spots.neighbour_index())
    assert any("inferred" in n for n in sec.notes)


@pytest.mark.parametrize("kept", ["hires", "lowres"])
def test_h5ad_with_only_one_image_shows_it(scanpy_h5ad, tmp_path, kept):
    import anndata

    adata = anndata.read_h5ad(scanpy_h5ad)
    lib = next(iter(adata.uns["spatial"]))
    images = adata.uns["spatial"][lib]["images"]
    lowres = np.asarray(images["lowres"])
    # give the hires slot real content (the lowres image upsampled 3×, its own scale factor)
    image = lowres if kept == "lowres" else np.repeat(np.repeat(lowres, 3, axis=0), 3, axis=1)
    adata.uns["spatial"][lib]["images"] = {kept: image}
    factor = adata.uns["spatial"][lib]["scalefactors"]["tissue_lowres_scalef"] * (3 if kept == "hires" else 1)
    adata.uns["spatial"][lib]["scalefactors"][f"tissue_{kept}_scalef"] = factor
    adata.write_h5ad(tmp_path / "one.h5ad")
    sec = open_dataset(tmp_path / "one.h5ad").sections[0]
    assert sec.preview.kind == kept and sec.preview.scale == pytest.approx(factor)
    assert sec.preview.image.shape[:2] == image.shape[:2]


def test_visium_folder_shows_the_image_that_has_content(visium_dir, tmp_path):
    from PIL import Image

    # as shipped: blank hires, valid lowres → lowres, and the user is told
    sec = open_dataset(visium_dir).sections[0]
    assert sec.preview.kind == "lowres" and any("hires image is blank" in n for n in sec.notes)
    # a copy with a hires image that has content → hires
    copy = tmp_path / "v"
    shutil.copytree(visium_dir, copy)
    low = Image.open(copy / "spatial" / "tissue_lowres_image.png").convert("RGB")
    factors = _scalefactors(visium_dir)
    ratio = factors["tissue_hires_scalef"] / factors["tissue_lowres_scalef"]
    low.resize((round(low.width * ratio), round(low.height * ratio))).save(
        copy / "spatial" / "tissue_hires_image.png")
    sec = open_dataset(copy).sections[0]
    assert sec.preview.kind == "hires" and not any("blank" in n for n in sec.notes)


def test_visium_folder_without_scalefactors_says_the_image_is_dropped(visium_dir, tmp_path):
    copy = tmp_path / "v"
    shutil.copytree(visium_dir, copy)
    (copy / "spatial" / "scalefactors_json.json").unlink()
    sec = open_dataset(copy).sections[0]
    assert sec.preview is None
    assert any("scalefactors_json.json is missing" in n and "no image is shown" in n for n in sec.notes)


def test_ensembl_ids_are_mapped_to_symbols(folder):
    from napari_dkan.knowledge.table import load_table

    genes = list(folder.counts.genes)
    table = load_table()
    raw = [g for g in _raw_feature_names(folder) if table.by_ensembl(g) is not None]
    assert len(raw) == 70  # of the 100 ids of this matrix, 70 have a symbol in the package's table
    assert sum(not g.startswith("ENSG") for g in genes) == 70
    assert "SAMD11" in genes and "NOC2L" in genes
    assert any("70 of 100 mapped" in n for n in folder.notes)


def _raw_feature_names(section) -> list[str]:
    import h5py

    root = Path(section.load_spots().source)
    with h5py.File(root / "filtered_feature_bc_matrix.h5") as f:
        return [v.decode() for v in f["matrix/features/name"][:]]


def test_panel_coverage_counts_the_mapped_symbols(folder, panels_dir):
    from napari_dkan.io.coverage import panel_coverage

    panel = (panels_dir / "her2st.txt").read_text().split()
    cov = panel_coverage(folder, panel)
    measured = set(folder.counts.genes) & set(panel)
    assert cov.measured == len(measured) and cov.total == 250
    assert cov.few and f"{len(measured)} of the model's 250 genes" in cov.message()


def test_empty_h5ad_says_no_spots(tmp_path):
    import anndata

    anndata.AnnData(X=np.zeros((0, 3), np.float32), obsm={"spatial": np.zeros((0, 2))}).write_h5ad(
        tmp_path / "empty.h5ad")
    with pytest.raises(DataError, match="no spots"):
        open_dataset(tmp_path / "empty.h5ad")


def test_repeated_gene_names_are_named_in_a_note(folder, tmp_path):
    import anndata
    import pandas as pd

    counts = folder.counts
    genes = list(counts.genes)
    genes[5], genes[9] = genes[1], genes[2]  # two names now occur twice
    anndata.AnnData(X=counts.matrix, obs=pd.DataFrame(index=counts.spot_id),
                    var=pd.DataFrame(index=genes),
                    obsm={"spatial": folder.spots.xy}).write_h5ad(tmp_path / "dup.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata warns about non-unique names too
        sec = open_dataset(tmp_path / "dup.h5ad").sections[0]
        _ = sec.counts  # reading the counts writes the note
    note = next(n for n in sec.notes if "more than once" in n)
    assert genes[1] in note and genes[2] in note and "first column" in note


def test_scaled_x_opens_without_measured_values_and_says_why(folder, tmp_path):
    import anndata
    import pandas as pd

    x = counts = folder.counts.matrix.toarray()
    x = (counts - counts.mean(axis=0)) / (counts.std(axis=0) + 1)  # sc.pp.scale: negative values
    anndata.AnnData(X=x.astype(np.float32), obs=pd.DataFrame(index=folder.counts.spot_id),
                    var=pd.DataFrame(index=folder.counts.genes),
                    obsm={"spatial": folder.spots.xy}).write_h5ad(tmp_path / "scaled.h5ad")
    sec = open_dataset(tmp_path / "scaled.h5ad").sections[0]
    assert not sec.has_counts
    assert any("negative values" in n and "layers['counts']" in n for n in sec.notes)


def test_own_prediction_file_reads_back_as_predictions(c2, tmp_path):
    """Predictions (negative values included) are not counts; measured stays measured."""
    from napari_dkan.bundled import default_model_path
    from napari_dkan.engine.predict import to_anndata
    from napari_dkan.engine.runs import TrainedModel
    from napari_dkan.io.prediction_file import read_prediction_file

    model = TrainedModel.load(default_model_path())
    index = np.arange(40)
    rng = np.random.default_rng(0)
    pred = rng.normal(0.5, 1.0, (40, len(model.panel))).astype(np.float32)  # some negative
    measured = rng.random((40, len(model.panel))).astype(np.float32)
    adata = to_anndata(model, c2, pred, measured=measured, spot_index=index)
    path = tmp_path / "pred.h5ad"
    adata.write_h5ad(path)
    ds = open_dataset(path)  # no "counts must be non-negative"
    sec = ds.sections[0]
    assert ds.kind == "napari-dkan predictions" and not sec.has_counts and sec.has_image
    assert Path(adata.uns["spatial"]["C2"]["metadata"]["source_image_path"]).is_absolute()
    saved = read_prediction_file(path)
    np.testing.assert_array_equal(saved.predicted, pred)
    np.testing.assert_array_equal(saved.measured, measured)
    assert saved.genes == tuple(model.panel) and saved.model["genes"] == len(model.panel)
    assert list(sec.spots.spot_id) == list(c2.spots.spot_id[index])


def test_own_prediction_file_opens_in_napari_as_predicted_and_measured(c2, tmp_path):
    from napari_dkan._reader import napari_get_reader
    from napari_dkan.bundled import default_model_path
    from napari_dkan.engine.predict import to_anndata
    from napari_dkan.engine.runs import TrainedModel

    model = TrainedModel.load(default_model_path())
    pred = np.full((len(c2.spots), len(model.panel)), -0.25, np.float32)
    measured = np.full_like(pred, 0.75)
    path = tmp_path / "pred.h5ad"
    to_anndata(model, c2, pred, measured=measured).write_h5ad(path)
    layers = napari_get_reader(str(path))(str(path))
    roles = {meta["metadata"]["napari_dkan"]["role"]: (data, meta) for data, meta, _ in layers}
    assert set(roles) == {"slide", "predicted", "measured"}
    gene = model.panel[0]
    assert np.allclose(roles["predicted"][1]["features"][gene], -0.25)
    assert np.allclose(roles["measured"][1]["features"][gene], 0.75)
    assert "predicted" in roles["predicted"][1]["name"]


def test_mouse_data_for_a_human_model_is_said(folder, panels_dir, tmp_path):
    import anndata
    import pandas as pd

    from napari_dkan.io.coverage import panel_coverage

    counts = folder.counts
    mouse = [g.capitalize() if not g.startswith("ENSG") else f"Gm{k}" for k, g in enumerate(counts.genes)]
    anndata.AnnData(X=counts.matrix, obs=pd.DataFrame(index=counts.spot_id),
                    var=pd.DataFrame(index=mouse),
                    obsm={"spatial": folder.spots.xy}).write_h5ad(tmp_path / "mouse.h5ad")
    sec = open_dataset(tmp_path / "mouse.h5ad").sections[0]
    panel = (panels_dir / "her2st.txt").read_text().split()
    cov = panel_coverage(sec, panel)
    assert cov.mouse and cov.measured == 0
    message = cov.message("HER2ST")
    assert "mouse genes" in message and "HER2ST" in message and "only 0 of the model's 250" in message
    # human data is not called mouse
    assert not panel_coverage(folder, panel).mouse


def test_h5ad_without_any_image_opens_on_a_named_canvas(c2, tmp_path):
    from napari_dkan._reader import read_dataset
    from napari_dkan.io.anndata_io import write_spatial_h5ad

    path = tmp_path / "c2.h5ad"
    write_spatial_h5ad(path, c2.counts, c2.spots.with_scale(c2.mpp), "C2")  # no image path
    (data, meta, kind), (_, _, spots_kind) = read_dataset(str(path))
    assert (kind, spots_kind) == ("image", "points")
    assert meta["name"] == "C2 · no image"
    assert meta["metadata"]["napari_dkan"]["role"] == "slide"  # the dock can follow it
    # it spans the spots: its world extent covers the farthest spot
    extent = np.array(data.shape[:2]) * np.array(meta["scale"])
    assert (extent >= np.array([c2.spots.y.max(), c2.spots.x.max()]) * c2.mpp).all()


def test_image_paths_stored_in_predictions_are_absolute(her2st, monkeypatch, tmp_path):
    from napari_dkan.bundled import default_model_path
    from napari_dkan.engine.predict import to_anndata
    from napari_dkan.engine.runs import TrainedModel

    monkeypatch.chdir(her2st.parent)
    c2 = open_dataset(her2st.name)["C2"]  # opened by a relative path, as from a shell
    assert not c2.image_path.is_absolute()
    model = TrainedModel.load(default_model_path())
    adata = to_anndata(model, c2, np.zeros((len(c2.spots), len(model.panel)), np.float32))
    adata.write_h5ad(tmp_path / "p.h5ad")
    monkeypatch.chdir(tmp_path)  # read from elsewhere: the slide is still found
    stored = Path(adata.uns["spatial"]["C2"]["metadata"]["source_image_path"])
    assert stored.is_absolute() and stored.is_file()
    assert open_dataset(tmp_path / "p.h5ad").sections[0].image_path == stored
