"""Which inference runtime runs a frozen encoder: torch, ONNX Runtime or OpenVINO.

On a CPU the frozen encoder is the slow part of a first prediction.  The same network exported
once to ONNX and run by an inference runtime is several times faster there than torch's eager
mode (benchmarks/README.md, *CPU runtimes*), with the same features (mean cosine 1.0000 to
torch).  So:

- ``torch`` is the reference, and the only runtime on CUDA / MPS;
- ``onnxruntime`` and ``openvino`` run an ONNX export of the encoder on the CPU;
- ``auto`` (what ``predict`` and the docks use) picks :data:`CPU_PREFERENCE`'s first installed
  runtime on a CPU, torch elsewhere — and torch for encoders too small to gain from an export
  (the ``tiny`` test encoder) or too large for one ONNX file (> 2 GB of weights).  The
  environment variable ``NAPARI_DKAN_RUNTIME`` overrides what ``auto`` means.

Exports are cached on disk (``<cache>/runtimes``), keyed by the encoder's identity (its
architecture and weight file's path, size and modification time), the torch version and the
export settings, and written atomically; a changed weight file gets a new export.  Preprocessing
(uint8 → normalised float, resizing) stays in torch for every runtime, so the runtimes see the
very same input tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

from napari_dkan.features.registry import EncoderError, EncoderSpec
from napari_dkan.paths import cache_dir

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

TORCH, ONNXRUNTIME, OPENVINO, AUTO = "torch", "onnxruntime", "openvino", "auto"
RUNTIMES = (TORCH, ONNXRUNTIME, OPENVINO)
RUNTIME_CHOICES = (AUTO, *RUNTIMES)
#: what ``auto`` picks on a CPU, best first (by the benchmark in benchmarks/README.md)
CPU_PREFERENCE = (OPENVINO, ONNXRUNTIME)
ENV_RUNTIME = "NAPARI_DKAN_RUNTIME"
#: the PyPI package of each exported runtime (its import name is the runtime's name)
PACKAGES = {ONNXRUNTIME: "onnxruntime", OPENVINO: "openvino"}
LABELS = {TORCH: "torch", ONNXRUNTIME: "ONNX Runtime", OPENVINO: "OpenVINO"}
#: below this many parameters an export costs more than it saves; above, one ONNX file won't do
MIN_PARAMETERS, MAX_PARAMETERS = 1_000_000, 500_000_000
#: bump when the exported graph changes meaning (inputs, outputs), so old exports are ignored
EXPORT_VERSION = 1
OPSET = 17

#: runs an exported encoder: float32 NCHW input → (pooled N×D, features as the model emits them)
Session = Callable[["np.ndarray"], tuple["np.ndarray", "np.ndarray"]]


class RuntimeChoiceError(EncoderError):
    """A runtime was asked for that cannot run here; the message says what to do."""


def installed(runtime: str) -> bool:
    return runtime == TORCH or find_spec(PACKAGES[runtime]) is not None


def check_runtime(name: str) -> str:
    """``name`` lower-cased, or a clear error listing the choices."""
    raw = (name or AUTO).strip().lower()
    if raw not in RUNTIME_CHOICES:
        raise RuntimeChoiceError(f"unknown inference runtime {name!r}; choose one of: "
                            f"{', '.join(RUNTIME_CHOICES)}")
    return raw


def resolve_runtime(name: str, device: torch.device, n_parameters: int | None = None) -> str:
    """The runtime to use for ``name`` (``auto`` or one of :data:`RUNTIMES`) on ``device``."""
    raw = check_runtime(name)
    if raw == AUTO:
        raw = check_runtime(os.environ.get(ENV_RUNTIME) or AUTO)
        if raw != AUTO:
            return resolve_runtime(raw, device, n_parameters)
        if device.type != "cpu":
            return TORCH
        if n_parameters is not None and not MIN_PARAMETERS <= n_parameters <= MAX_PARAMETERS:
            return TORCH
        return next((r for r in CPU_PREFERENCE if installed(r)), TORCH)
    if raw == TORCH:
        return TORCH
    if device.type != "cpu":
        raise RuntimeChoiceError(f"the {LABELS[raw]} runtime runs on the CPU only; on {device.type} "
                            "use --runtime torch (or auto)")
    if not installed(raw):
        raise RuntimeChoiceError(f"the {LABELS[raw]} runtime is not installed: pip install "
                            f"{PACKAGES[raw]} (or use --runtime torch)")
    return raw


# -- export ------------------------------------------------------------------------------------
def export_key(spec: EncoderSpec) -> dict[str, object]:
    import torch

    return {"encoder": spec.identity, "torch": torch.__version__, "opset": OPSET,
            "version": EXPORT_VERSION}


def export_path(spec: EncoderSpec) -> Path:
    """Where the ONNX export of ``spec`` lives (the file may not exist yet)."""
    digest = hashlib.sha256(json.dumps(export_key(spec), sort_keys=True).encode()).hexdigest()
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.family)[:60]
    return cache_dir("runtimes") / f"{label}-{digest[:24]}.onnx"


def headless(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder's forward for export: (pooled features, final features)."""
    import torch

    class Headless(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            feats = self.m.forward_features(x)
            return self.m.forward_head(feats, pre_logits=True), feats

    return Headless(model).eval()


def export_onnx(model: torch.nn.Module, spec: EncoderSpec) -> Path:
    """The cached ONNX export of ``model`` (exported and written atomically on first use)."""
    import torch

    path = export_path(spec)
    if path.is_file():
        return path
    size = spec.input_size
    example = torch.zeros(2, 3, size, size)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(
                headless(model), (example,), tmp, input_names=["x"],
                output_names=["pooled", "features"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "pooled": {0: "n"},
                              "features": {0: "n"}},
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- sessions ------------------------------------------------------------------------------------
def open_session(runtime: str, onnx_file: Path, threads: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Session:
    """A function running the exported encoder with ``runtime`` on ``threads`` CPU threads.

    With ``mean`` and ``std`` (the encoder's normalisation), an OpenVINO session also offers
    ``raw(tiles)``: uint8 N×H×W×3 tiles in, normalisation folded into the compiled network.
    """
    if runtime == ONNXRUNTIME:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])

        def run_ort(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            pooled, feats = session.run(["pooled", "features"], {"x": x})
            return pooled, feats

        return run_ort
    if runtime == OPENVINO:
        return OpenVinoSession(onnx_file, threads, mean, std)
    raise RuntimeChoiceError(f"no session for runtime {runtime!r}")


def n_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


class OpenVinoSession:
    """OpenVINO on the CPU in throughput mode: each batch is split over parallel infer requests.

    OpenVINO's latency mode runs one request on all threads; on a CPU a convolutional network
    with small per-layer work (EfficientNet's depthwise convolutions) keeps threads waiting at
    every layer.  Throughput mode makes one *stream* per thread and each request runs on its
    own stream, so a batch split in as many parts as the runtime asks for keeps every core busy:
    1.4–2× the tiles/s of latency mode here (benchmarks/README.md, *CPU runtimes*).  The split
    changes nothing in the arithmetic of a tile (features identical to one request, measured).

    :meth:`raw` takes the uint8 NHWC tiles as they are read; OpenVINO's pre-processing (type
    conversion, layout, mean and scale — folded into the first convolution by the compiler)
    replaces the torch normalisation, so the tiles skip a float copy on the Python side.
    """

    def __init__(self, onnx_file: Path, threads: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        import openvino as ov

        self._core = ov.Core()
        self._file = str(onnx_file)
        # f32 on purpose: OpenVINO's default on CPUs with bf16 units is bf16, whose features
        # drift from torch's (mean cosine 0.9987 measured on HER2ST C2, under the 0.999 bar)
        self._config = {"INFERENCE_NUM_THREADS": max(1, threads), "PERFORMANCE_HINT": "THROUGHPUT",
                        "INFERENCE_PRECISION_HINT": "f32"}
        self._norm = (list(mean), list(std)) if mean is not None and std is not None else None
        self._compiled: dict[bool, tuple] = {}
        self._compile(raw=False)  # fail here, at load time, if the export cannot be compiled

    def _compile(self, raw: bool) -> tuple:
        if raw not in self._compiled:
            model = self._core.read_model(self._file)
            if raw:
                import openvino as ov
                from openvino.preprocess import PrePostProcessor

                mean, std = self._norm
                ppp = PrePostProcessor(model)
                ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
                ppp.input().model().set_layout(ov.Layout("NCHW"))
                ppp.input().preprocess().convert_element_type(ov.Type.f32) \
                    .mean([255.0 * m for m in mean]).scale([255.0 * s for s in std])
                model = ppp.build()
            compiled = self._core.compile_model(model, "CPU", self._config)
            n = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._compiled[raw] = (compiled, [compiled.create_infer_request() for _ in range(n)],
                                   compiled.output("pooled"), compiled.output("features"))
        return self._compiled[raw]

    def _run(self, x: np.ndarray, raw: bool) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        _compiled, requests, out_pooled, out_feats = self._compile(raw)
        parts = [p for p in np.array_split(x, len(requests)) if len(p)]
        busy = requests[: len(parts)]
        for request, part in zip(busy, parts, strict=True):
            request.start_async({0: np.ascontiguousarray(part)})
        for request in busy:
            request.wait()
        pooled = np.concatenate([r.get_tensor(out_pooled).data for r in busy])
        feats = np.concatenate([r.get_tensor(out_feats).data for r in busy])
        return pooled, feats

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 NCHW tiles → (pooled N×D, features as the network emits them)."""
        return self._run(x, raw=False)

    @property
    def takes_raw(self) -> bool:
        return self._norm is not None

    def raw(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 N×H×W×3 tiles (the network's input size) → the same as :meth:`__call__`."""
        if self._norm is None:
            raise RuntimeChoiceError("this OpenVINO session was opened without the encoder's normalisation")
        return self._run(tiles, raw=True)
