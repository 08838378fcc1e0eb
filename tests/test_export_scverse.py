"""Export for the scverse tools: an .h5ad that scanpy plots like Space Ranger data, and a
SpatialData store that spatialdata reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_dkan._widgets.expression import Expression, measured_expression
from napari_dkan._widgets.session import SpotSession
from napari_dkan._widgets.sources import SectionSource


@pytest.fixture(scope="module")
def session(her2st):
    """C2 with the bundled model's panel, measured values, and a prediction for 40 spots."""
    from napari_dkan.bundled import default_model_path
    from napari_dkan.engine.runs import TrainedModel

    path = default_model_path()
    if path is None:
        pytest.skip("no bundled model in this installation")
    model = TrainedModel.load(path)
    source = SectionSource(path=str(her2st), section="C2")
    s = SpotSession(source, source.open())
    s.set_model(model, measured_expression(s.section, model.panel, smoothing=model.smoothing))
    rng = np.random.default_rng(3)
    index = np.arange(100, 140)
    s.set_prediction(Expression(tuple(model.panel), rng.random((40, len(model.panel))), index))
    return s


def test_exported_h5ad_plots_like_space_ranger_data(session, tmp_path):
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    sc = pytest.importorskip("scanpy", reason="scanpy is in the testing extra")
    from napari_dkan._widgets.export import write_predictions
    from napari_dkan.io.dataset import open_dataset

    path = write_predictions(session, tmp_path / "c2.h5ad")
    adata = anndata.read_h5ad(path)
    library = adata.uns["spatial"]["C2"]
    width, height = session.section.open_slide(check_spots=False).dimensions
    hires, lowres = library["images"]["hires"], library["images"]["lowres"]
    assert max(hires.shape[:2]) == 2000 and max(lowres.shape[:2]) == 600
    factors = library["scalefactors"]
    assert factors["tissue_hires_scalef"] == pytest.approx(hires.shape[1] / width)
    assert factors["tissue_hires_scalef"] == pytest.approx(hires.shape[0] / height, rel=1e-3)
    # scanpy draws the hires image under the spots, placed by the scale factor (no img_key=None)
    gene = adata.var_names[0]
    ax = sc.pl.spatial(adata, color=gene, img_key="hires", library_id="C2", show=False)[0]
    assert np.asarray(ax.images[0].get_array()).shape[:2] == hires.shape[:2]
    # one circle per spot, at its position and of its size on the hires image
    boxes = [p.get_extents() for p in ax.collections[0].get_paths()]
    centres = np.array([((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for b in boxes])
    expected = adata.obsm["spatial"] * factors["tissue_hires_scalef"]
    np.testing.assert_allclose(centres[np.lexsort(centres.T)], expected[np.lexsort(expected.T)],
                               atol=0.05)
    widths = np.array([b.x1 - b.x0 for b in boxes])
    np.testing.assert_allclose(widths, factors["spot_diameter_fullres"] * factors["tissue_hires_scalef"],
                               rtol=1e-3)
    # and this plugin reads it back at the same scale, as predictions (not counts)
    back = open_dataset(path).sections[0]
    assert back.mpp == pytest.approx(session.section.mpp, rel=1e-6)
    assert back.spots.diameter_px == pytest.approx(session.section.spots.diameter_px, rel=1e-6)
    assert not back.has_counts and back.preview.kind == "hires"


def test_spatialdata_round_trip(session, tmp_path):
    sd = pytest.importorskip("spatialdata", reason="the spatialdata extra is not installed")
    from spatialdata.transformations import get_transformation

    from napari_dkan.io.spatialdata_export import write_spatialdata

    adata = session.to_anndata()
    # interval bounds, as a model with intervals writes them, travel with the table
    adata.layers["lower"] = adata.X - 0.1
    adata.layers["upper"] = adata.X + 0.1
    path = write_spatialdata(tmp_path / "c2.zarr", adata, session.section)
    back = sd.read_zarr(path)
    section, mpp = session.section, session.section.mpp
    # the slide, multiscale, level 0 at full resolution
    image = back.images["C2_image"]
    levels = list(image.keys())
    width, height = section.open_slide(check_spots=False).dimensions
    assert len(levels) == 5 and image[levels[0]]["image"].shape == (3, height, width)
    # the spots, circles of their true radius (legacy ST: 100 µm across)
    shapes = back.shapes["C2_spots"]
    assert list(shapes.index.astype(str)) == list(adata.obs_names)
    np.testing.assert_allclose(shapes["radius"].to_numpy() * 2 * mpp, 100.0, rtol=1e-6)
    np.testing.assert_allclose(np.column_stack([shapes.geometry.x, shapes.geometry.y]),
                               adata.obsm["spatial"])
    scale = get_transformation(shapes, to_coordinate_system="micrometres")
    assert np.allclose(scale.to_affine_matrix(("x", "y"), ("x", "y"))[:2, :2], np.diag([mpp, mpp]))
    # the table: predictions in X, measured and the bounds in layers, the model's summary
    table = back.tables["table"]
    np.testing.assert_allclose(np.asarray(table.X), adata.X)
    for layer in ("measured", "lower", "upper"):
        np.testing.assert_allclose(np.asarray(table.layers[layer]), adata.layers[layer])
    assert json.loads(table.uns["napari_dkan"]["model"])["genes"] == 250
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "C2_spots" and attrs["instance_key"] == "spot_id"
