"""The default model shipped inside the package.

``default_model_path()`` is the run directory of the bundled model, or None when this build
ships none; ``default_model()`` loads it (no network: its encoders resolve from installed
packages) and raises a clear error when it is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari_dkan.io.errors import DataError

if TYPE_CHECKING:
    from napari_dkan.engine.runs import TrainedModel

MODEL_DIR = Path(__file__).parent / "models" / "dkan-triplex-her2st"


def default_model_path() -> Path | None:
    return MODEL_DIR if (MODEL_DIR / "config.json").is_file() else None


def default_model() -> TrainedModel:
    from napari_dkan.engine.runs import TrainedModel

    path = default_model_path()
    if path is None:
        raise DataError(
            "this installation ships no bundled model; train one (`napari-dkan train`) and pass "
            "its run directory"
        )
    return TrainedModel.load(path)
