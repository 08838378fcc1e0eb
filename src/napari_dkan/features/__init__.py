"""Frozen image features per spot: patch, 5×5 region tiles and slide context, cached on disk.

Public API (what the engine and the docks call)::

    extract_section_features(section, encoder=..., mode="shared", ...) -> SectionFeatures
    section_patches(section, size=224, target_mpp=None, cache=True) -> (N, size, size, 3) uint8
    list_encoders() -> {name: description};  resolve_encoder(name) -> EncoderSpec
    load_encoder(name, device, runtime="auto") -> Encoder  (reuse one across sections)
    lazy_encoder(name, runtime="auto") -> LazyEncoder  (the same, built at the first cache miss)

``runtime`` is ``auto`` (ONNX export run by OpenVINO / ONNX Runtime on a CPU, torch elsewhere),
``torch``, ``onnxruntime`` or ``openvino``: see :mod:`napari_dkan.features.runtimes`.

Importing this package is cheap: torch and timm load when an encoder is built.
"""

from napari_dkan.features.pixels import section_patches, with_spots
from napari_dkan.features.registry import (
    DEFAULT_ENCODER,
    EncoderError,
    EncoderSpec,
    list_encoders,
    resolve_encoder,
)
from napari_dkan.features.section import (
    RegionMode,
    SectionFeatures,
    extract_section_features,
    region_cosine_similarity,
)


def load_encoder(name, device="cpu", runtime="auto"):  # noqa: ANN001, ANN201 - typed in encoders
    """Build a frozen encoder by name on a device (see :func:`encoders.load_encoder`)."""
    from napari_dkan.features.encoders import load_encoder as _load

    return _load(name, device, runtime)


def lazy_encoder(name, runtime="auto"):  # noqa: ANN001, ANN201 - typed in encoders.LazyEncoder
    """An encoder built at its first cache miss (see :class:`encoders.LazyEncoder`)."""
    from napari_dkan.features.encoders import LazyEncoder

    return LazyEncoder(name, runtime)


__all__ = [
    "DEFAULT_ENCODER",
    "EncoderError",
    "EncoderSpec",
    "RegionMode",
    "SectionFeatures",
    "extract_section_features",
    "lazy_encoder",
    "list_encoders",
    "load_encoder",
    "region_cosine_similarity",
    "resolve_encoder",
    "section_patches",
    "with_spots",
]
