"""Cohort-scale prediction on a Dask cluster: a manifest of slides, one task per slide.

- :mod:`~napari_dkan.cohort.manifest`: the CSV/TSV manifest and how a row becomes a section;
- :mod:`~napari_dkan.cohort.tasks`: what a worker does for one slide (model cached per worker,
  atomic output, validity of an existing output);
- :mod:`~napari_dkan.cohort.cluster`: a local cluster (GPU workers pinned one per device) or a
  client of any running scheduler;
- :mod:`~napari_dkan.cohort.run`: the plan (what to skip), submission, gathering, summary.
"""

from napari_dkan.cohort.manifest import CohortSlide, read_manifest
from napari_dkan.cohort.run import CohortSummary, predict_cohort
from napari_dkan.cohort.tasks import SlideOutcome

__all__ = ["CohortSlide", "CohortSummary", "SlideOutcome", "predict_cohort", "read_manifest"]
