"""Reading slides, spots and expression into sections the model can use."""

from napari_dkan.io.dataset import Dataset, Section
from napari_dkan.io.errors import DataError
from napari_dkan.io.formats import open_dataset
from napari_dkan.io.slides import Slide, SlideError, open_slide
from napari_dkan.io.spots import SpotTable

__all__ = [
    "DataError",
    "Dataset",
    "Section",
    "Slide",
    "SlideError",
    "SpotTable",
    "open_dataset",
    "open_slide",
]
