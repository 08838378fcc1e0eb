"""DKAN and its baselines, built from shared blocks; presets as data; losses.

Importing this package imports torch: it is loaded by the engine, never at napari start-up.
"""

from napari_dkan.model.config import (
    PRESETS,
    Alignment,
    BlockSpec,
    DKANConfig,
    PatchInput,
    preset,
    variant,
)
from napari_dkan.model.dkan import DKAN, ModelOutput, SlideContext, SpotInputs, count_parameters
from napari_dkan.model.losses import adaptive_weights, dkan_loss, info_nce, supervised_loss
from napari_dkan.model.nh2st import NH2ST, NH2STConfig

__all__ = [
    "DKAN",
    "NH2ST",
    "PRESETS",
    "Alignment",
    "BlockSpec",
    "DKANConfig",
    "ModelOutput",
    "NH2STConfig",
    "PatchInput",
    "SlideContext",
    "SpotInputs",
    "adaptive_weights",
    "count_parameters",
    "dkan_loss",
    "info_nce",
    "preset",
    "supervised_loss",
    "variant",
]
