"""napari-dkan: predict spatial gene expression from H&E slides with DKAN, inside napari.

The package is importable without torch, Qt or OpenSlide being loaded: heavy backends are
imported where they are used, so napari's start-up stays fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
