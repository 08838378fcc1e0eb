"""Other people's data in a real viewer (Xvfb): a Visium folder without its slide, a scanpy-made
.h5ad, a plain image without µm/px, and a writer refusal the user must read."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.gui
WAIT_MS = 180_000  # a loaded 2-core machine: the bundled model takes a while


@pytest.fixture(scope="module")
def dock(viewer):
    from napari_dkan import bundled

    with pytest.MonkeyPatch.context() as mp:  # start without a model; tests choose one
        mp.setattr(bundled, "default_model_path", lambda: None)
        _, widget = viewer.window.add_plugin_dock_widget("napari-dkan", "Predict expression")
    return widget


@pytest.fixture()
def notices(monkeypatch):
    """The napari notifications raised meanwhile (what the user reads)."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []
    def handler(n: Any) -> None:
        seen.append(str(n.message))

    notification_manager.notification_ready.connect(handler)
    yield seen
    notification_manager.notification_ready.disconnect(handler)


def _open(qtbot, viewer, dock, path):
    viewer.layers.clear()
    viewer.open(str(path), plugin="napari-dkan")
    qtbot.waitUntil(lambda: dock.session is not None and dock.session.source.path == str(path),
                    timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not dock.busy, timeout=WAIT_MS)


def _layer(viewer, role):
    return next(layer for layer in viewer.layers
                if layer.metadata.get("napari_dkan", {}).get("role") == role)


def test_visium_folder_says_what_is_there_and_asks_for_its_image(qtbot, viewer, dock, visium_dir,
                                                                  wsi_dir):
    from napari_dkan.io.errors import DataError

    _open(qtbot, viewer, dock, visium_dir)
    info = dock.section_info.text()
    assert "100 spots from the dataset" in info and "no full-resolution image" in info
    assert "lattice" not in info
    # Ensembl ids became symbols: the measured layer and the gene list speak symbols
    assert "SAMD11" in _layer(viewer, "measured").features.columns
    assert "SAMD11" in dock.session.genes
    notes = dock.inputs.notices.text()
    assert "70 of 100 mapped" in notes and "hires image is blank" in notes
    assert _layer(viewer, "slide").name.endswith("lowres image")
    # the image field, explained, instead of command-line advice
    assert dock.inputs.image.isVisibleTo(dock) and dock.inputs.browse.isVisibleTo(dock)
    assert not dock.inputs.mpp.isVisibleTo(dock)
    assert "Space Ranger" in dock.inputs.image_help.text()
    with pytest.raises(DataError, match="Browse") as refused:
        dock._request()
    assert "--image" not in str(refused.value)
    # an image the spots do not fit is refused, saying why
    assert not dock.use_inputs(str(wsi_dir / "CMU-1-Small-Region.svs"), None)
    assert "outside" in dock.inputs.notices.text()


def test_few_measured_panel_genes_are_counted_in_the_dock(qtbot, viewer, dock, visium_dir):
    from napari_dkan.bundled import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("no bundled model in this installation")
    if dock.session is None or dock.session.source.path != str(visium_dir):
        _open(qtbot, viewer, dock, visium_dir)
    dock.choose_model(str(path))
    qtbot.waitUntil(lambda: not dock.busy and dock.model is not None, timeout=WAIT_MS)
    # SDF4 and ISG15 are the panel genes this 100-gene cut holds, once its ids are symbols
    assert "only 2 of the model's 250 genes are measured" in dock.inputs.notices.text()
    dock.model = None
    dock.session.model = None


def test_scanpy_h5ad_spots_and_image_at_their_true_scale(qtbot, viewer, dock, visium_dir, tmp_path):
    sc = pytest.importorskip("scanpy", reason="scanpy makes the .h5ad users have (testing extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = sc.read_visium(visium_dir)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    path = tmp_path / "visium.h5ad"
    adata.write_h5ad(path)
    _open(qtbot, viewer, dock, path)
    factors = json.loads((visium_dir / "spatial" / "scalefactors_json.json").read_text())
    mpp = 65.0 / factors["spot_diameter_fullres"]
    spots = _layer(viewer, "measured")
    image = _layer(viewer, "slide")
    assert spots.scale[-1] == pytest.approx(mpp)
    assert float(np.asarray(spots.size).ravel()[0]) * mpp == pytest.approx(55.0)  # µm across
    assert image.scale[-1] == pytest.approx(mpp / factors["tissue_lowres_scalef"])
    assert "log-normalised" in dock.inputs.notices.text()
    assert "lattice" not in dock.section_info.text()


def test_h5ad_without_its_slide_takes_the_image_from_the_dock(qtbot, viewer, dock, c2, tmp_path):
    import anndata

    from napari_dkan.io.anndata_io import write_spatial_h5ad

    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "c2.h5ad"
    write_spatial_h5ad(path, c2.counts, c2.spots.with_scale(c2.mpp), "C2")
    adata = anndata.read_h5ad(path)
    with c2.open_slide(check_spots=False) as slide:
        low, downsample = slide.thumbnail(600)
    meta = adata.uns["spatial"]["C2"]
    meta["images"] = {"lowres": np.asarray(low)}
    meta["scalefactors"]["tissue_lowres_scalef"] = 1.0 / downsample
    meta["mpp"] = c2.mpp
    adata.write_h5ad(path)
    (folder / "C2-fullres.jpg").symlink_to(c2.image_path)  # the slide, beside the file
    _open(qtbot, viewer, dock, path)
    assert dock.needs.image and dock.inputs.image.isVisibleTo(dock)
    assert dock.inputs.image.text() == str(folder / "C2-fullres.jpg")  # prefilled, and why
    assert "beside" in dock.inputs.image_help.text()
    dock.inputs.use.click()
    qtbot.waitUntil(lambda: dock.session.section.has_image, timeout=WAIT_MS)
    assert not dock.needs.image and not dock.inputs.image.isVisibleTo(dock)
    slide = _layer(viewer, "slide")
    assert slide.multiscale and slide.name == "C2 · slide"
    assert dock.session_slide.name == slide.name and len(viewer.layers) == 2  # lowres replaced
    assert "no full-resolution image" not in dock.section_info.text()


def test_plain_image_without_mpp_gets_a_field(qtbot, viewer, dock, wsi_dir, tmp_path, notices):
    from napari_dkan.bundled import default_model_path
    from napari_dkan.io.errors import DataError

    path = tmp_path / "plain.png"
    _svs_region(wsi_dir).save(path)  # a PNG carries no µm/px
    _open(qtbot, viewer, dock, path)
    assert "no spot data" in dock.section_info.text() and "lattice" in dock.section_info.text()
    assert dock.needs.mpp and dock.inputs.mpp.isVisibleTo(dock)
    assert "scanner" in dock.inputs.mpp_help.text()
    with pytest.raises(DataError, match="µm per pixel") as refused:
        dock._request()
    assert "--mpp" not in str(refused.value)
    model = default_model_path()
    if model is not None:  # a model chosen meanwhile waits for the µm/px, without an error
        dock.choose_model(str(model))
        qtbot.waitUntil(lambda: not dock.busy and dock.model is not None, timeout=WAIT_MS)
        assert not any("--mpp" in n for n in notices)
    dock.inputs.mpp.setValue(0.5)
    dock.inputs.use.click()
    qtbot.waitUntil(lambda: not dock.needs.mpp, timeout=WAIT_MS)
    if model is not None:  # then it gets ready for the lattice over the tissue
        qtbot.waitUntil(lambda: not dock.busy and dock.session.model is not None, timeout=WAIT_MS)
        assert len(dock.session.section.spots) > 0  # a 512 µm-wide image at 0.5 µm/px: a few spots
        dock.model = None
    slide = _layer(viewer, "slide")
    assert tuple(slide.scale[-2:]) == (0.5, 0.5) and str(slide.units[-1]) in ("µm", "micrometer")
    assert dock.session.section.mpp == 0.5 and "0.500 µm/px (given by you)" in dock.section_info.text()


def _svs_region(wsi_dir):
    from PIL import Image

    from napari_dkan.io.slides import open_slide

    with open_slide(wsi_dir / "CMU-1-Small-Region.svs") as slide:
        thumb, _ = slide.thumbnail(1024)
    return Image.fromarray(np.asarray(thumb))


def test_saving_a_measured_layer_as_h5ad_tells_why_not(qtbot, viewer, dock, visium_dir, tmp_path,
                                                        notices):
    if dock.session is None or dock.session.source.path != str(visium_dir):
        _open(qtbot, viewer, dock, visium_dir)
    measured = _layer(viewer, "measured")
    viewer.layers.selection = {measured}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # napari's own "did not return any written paths"
        written = viewer.layers.save(str(tmp_path / "m.h5ad"), selected=True, plugin="napari-dkan")
    assert written == [] and not (tmp_path / "m.h5ad").exists()
    assert any("save this layer as .csv" in n for n in notices)


def test_spatialdata_export_is_offered_when_installed(dock):
    from importlib.util import find_spec

    assert dock.export_zarr.isVisibleTo(dock) == (find_spec("spatialdata") is not None)
