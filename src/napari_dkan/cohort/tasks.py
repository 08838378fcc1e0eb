"""What a cluster worker does for one slide: predict it and write its ``.h5ad`` atomically.

A worker process keeps the trained model it loaded (:func:`worker_model`), so a cohort of a
thousand slides loads the model once per worker, not once per slide.  The output is written to
a hidden temporary file beside its final name and renamed into place only when complete, so a
worker killed mid-write leaves no half file under the final name, and "the file is there" means
"the slide is done".  :func:`output_is_valid` is how a rerun knows what to skip.
"""

from __future__ import annotations

import glob
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_dkan.cohort.manifest import CohortSlide, open_section
from napari_dkan.io.errors import DataError
from napari_dkan.storage import anndata_size_hint, atomic_write

#: errors that come from the slide itself: retrying cannot help, so they are reported at once
#: (anything else — a lost file system, a CUDA error — is raised for the scheduler to retry)
SLIDE_ERRORS = (DataError, FileNotFoundError)

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()


@dataclass(frozen=True)
class SlideOutcome:
    """What became of one slide: ``done``, ``skipped`` (a valid output was there) or ``failed``."""

    name: str
    status: str
    output: str
    spots: int | None = None
    seconds: float | None = None
    error: str | None = None
    worker: str | None = None
    #: True when this task loaded the model into its worker (once per worker process)
    loaded_model: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def worker_model(run_dir: str, weights_sha256: str) -> tuple[Any, bool]:
    """The trained model, loaded once per worker process (tasks of one worker share it), and
    whether this call loaded it."""
    from napari_dkan.engine.runs import TrainedModel

    key = (str(Path(run_dir).resolve()), weights_sha256)
    with _MODELS_LOCK:
        if key in _MODELS:
            return _MODELS[key], False
        model = TrainedModel.load(run_dir)
        if model.weights_sha256 != weights_sha256:
            raise DataError(f"the model in {run_dir} changed while the cohort was being predicted; "
                            "rerun to predict every slide with the same weights")
        _MODELS[key] = model
        return model, True


def row_inputs(entry: CohortSlide) -> str:
    """What a manifest row's prediction is computed from, as canonical JSON: the slide file and
    spot file (path, size, mtime), the section and the µm/px given."""
    import json

    from napari_dkan.storage import file_identity

    spots = entry.spots
    if spots not in (None, "lattice") and Path(spots).exists():
        spots = file_identity(Path(spots)) if Path(spots).is_file() else str(Path(spots).resolve())
    slide = file_identity(entry.slide) if entry.slide.is_file() else str(entry.slide)
    return json.dumps({"slide": slide, "spots": spots, "section": entry.section, "mpp": entry.mpp},
                      sort_keys=True)


def output_is_valid(path: Path, weights_sha256: str, panel: list[str], inputs: str | None = None) -> bool | str:
    """True for a complete prediction of this model from these ``inputs`` (:func:`row_inputs`);
    False when absent, unreadable or computed from other inputs; a message when it is a readable
    prediction of *another* model (never overwritten silently)."""
    if not path.is_file():
        return False
    try:
        import anndata

        adata = anndata.read_h5ad(path, backed="r")  # obs, var and uns; X stays on disk
        try:
            info = dict(adata.uns.get("napari_dkan", {}))
            ok_shape = adata.n_obs > 0 and list(adata.var_names) == list(panel)
        finally:
            adata.file.close()
    except Exception:  # noqa: BLE001 - any unreadable file is simply redone
        return False
    sha = info.get("weights_sha256")
    if sha is not None and sha != weights_sha256:
        return f"{path} holds predictions of another model (weights {str(sha)[:12]}…)"
    same_inputs = inputs is None or info.get("inputs") == inputs
    return bool(ok_shape and sha == weights_sha256 and same_inputs)


def write_atomically(adata: Any, path: Path) -> None:
    """Write an AnnData to ``path`` through a temporary file renamed into place."""
    atomic_write(path, adata.write_h5ad, anndata_size_hint(adata))


def predict_slide(entry: CohortSlide, run_dir: str, weights_sha256: str, out_dir: str,
                  device: str = "auto", cpu_threads: int | None = None) -> SlideOutcome:
    """Predict one manifest row into ``out_dir/<name>.h5ad`` (runs on a worker)."""
    out = entry.output(Path(out_dir))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if cpu_threads:
        import torch

        torch.set_num_threads(cpu_threads)
    model, loaded = worker_model(run_dir, weights_sha256)
    loaded = loaded or None
    inputs = row_inputs(entry)
    if output_is_valid(out, weights_sha256, model.panel, inputs) is True:  # a lost worker's task that finished
        return SlideOutcome(entry.name, "skipped", str(out), worker=worker, loaded_model=loaded)
    t0 = time.perf_counter()
    try:
        from napari_dkan.engine.predict import predict_section

        adata = predict_section(model, open_section(entry), device=device)
    except SLIDE_ERRORS as exc:
        return SlideOutcome(entry.name, "failed", str(out), error=f"{type(exc).__name__}: {exc}",
                            worker=worker, loaded_model=loaded)
    adata.uns["napari_dkan"]["weights_sha256"] = weights_sha256
    adata.uns["napari_dkan"]["slide"] = str(entry.slide)
    adata.uns["napari_dkan"]["inputs"] = inputs
    write_atomically(adata, out)
    return SlideOutcome(entry.name, "done", str(out), spots=int(adata.n_obs),
                        seconds=round(time.perf_counter() - t0, 3), worker=worker, loaded_model=loaded)


def stale_temporaries(out_dir: Path, entries: list[CohortSlide]) -> list[Path]:
    """Temporary files a killed worker left for these slides (removed before and after a run)."""
    found = []
    for e in entries:
        found.extend(out_dir.glob(f".{glob.escape(e.name)}.h5ad.*.tmp"))
    return found
