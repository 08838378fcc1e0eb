"""Shared fixtures: the real data beside the repository, and an isolated cache per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAPARI_DKAN_SHARED", ROOT.parent / "shared")) / "data"
HER2ST = SHARED / "her2st"
VISIUM = SHARED / "visium" / "scanpy-v1.0.0"
WSI = SHARED / "wsi"
PANELS = SHARED / "gene_panels"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path} (clone with ../shared beside the repo)")
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test session gets its own cache folder: nothing read from or left in ~/.cache."""
    os.environ["NAPARI_DKAN_CACHE"] = str(tmp_path_factory.mktemp("napari-dkan-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def her2st() -> Path:
    return _need(HER2ST)


@pytest.fixture(scope="session")
def visium_dir() -> Path:
    return _need(VISIUM)


@pytest.fixture(scope="session")
def wsi_dir() -> Path:
    return _need(WSI)


@pytest.fixture(scope="session")
def panels_dir() -> Path:
    return _need(PANELS)


@pytest.fixture(scope="session")
def her2st_dataset(her2st: Path):  # noqa: ANN201
    from napari_dkan.io import open_dataset

    return open_dataset(her2st)


@pytest.fixture(scope="session")
def c2(her2st_dataset):  # noqa: ANN001, ANN201
    return her2st_dataset["C2"]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks: a second torch thread only contends on the busy cores (modules opt in)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_run_dir(her2st_dataset, panels_dir, tmp_path_factory):  # noqa: ANN001, ANN201
    """The tests' tiny DKAN (trained once per session: plugin_support caches it)."""
    from plugin_support import tiny_run

    return tiny_run(her2st_dataset, panels_dir, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def viewer():  # noqa: ANN201
    """One shown napari viewer per module (show=True under Xvfb: the canvas needs a framebuffer,
    or screenshots come back black)."""
    import napari

    v = napari.Viewer(show=True)
    v.window.resize(1400, 900)
    yield v
    v.close()
