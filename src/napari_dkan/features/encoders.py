"""Build a frozen tile encoder from its :class:`~napari_dkan.features.registry.EncoderSpec`.

Every encoder is a timm model with its classifier removed.  :class:`Encoder` feeds it uint8 RGB
tiles (normalised on the device, so the reading threads only move bytes) and returns the
pooled feature (N×D) and, on request, a 7×7 grid of spatial tokens (N×49×D): a CNN's last
feature map or a ViT's patch tokens, average-pooled to 7×7 (the token grid DKAN's patch branch
uses).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from napari_dkan.features.registry import (
    HUB,
    PACKAGE,
    RANDOM,
    RANDOM_SEED,
    EncoderError,
    EncoderSpec,
    package_weight_file,
    resolve_encoder,
)
from napari_dkan.features.runtimes import AUTO, TORCH, Session

if TYPE_CHECKING:
    import numpy as np
    import torch

TOKEN_GRID = 7
#: key prefixes that training frameworks put in front of a backbone's own names
_WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "resnet.", "trunk.")
#: classifier / projection-head keys, dropped because the encoders run headless
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "_fc.", "head_drop.")


class Encoder:
    """A frozen encoder on a device: ``encode(tiles)`` → pooled features (and tokens).

    :attr:`runtime` says what runs the network (see :mod:`napari_dkan.features.runtimes`):
    torch, or on a CPU an ONNX export run by ONNX Runtime or OpenVINO.
    """

    def __init__(self, spec: EncoderSpec, model: torch.nn.Module) -> None:
        import torch

        self.spec = spec
        self.model = model.eval().requires_grad_(False)
        self.width = int(model.num_features)
        self.device = torch.device("cpu")
        self._mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std).view(1, 3, 1, 1)
        #: feed the network NHWC tensors (on CUDA for CNNs: cuDNN's fastest bf16 convolutions)
        self.channels_last = False
        self.runtime = TORCH
        #: why ``auto`` fell back to torch on a CPU ("" when it did not)
        self.runtime_note = ""
        self._session: Session | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def use_runtime(self, name: str = AUTO) -> Encoder:
        """Run the network with ``name`` (``auto``, ``torch``, ``onnxruntime``, ``openvino``).

        An exported runtime needs the encoder on the CPU; its export is made once and cached.
        If ``auto`` chose an exported runtime and the export fails, the encoder stays on torch
        and :attr:`runtime_note` says why; an explicitly named runtime raises instead.
        """
        import torch

        from napari_dkan.features import runtimes

        chosen = runtimes.resolve_runtime(name, self.device, runtimes.n_parameters(self.model))
        if chosen == self.runtime:
            return self
        if chosen == TORCH:
            self.runtime, self._session = TORCH, None
            return self
        try:
            onnx_file = runtimes.export_onnx(self.model, self.spec)
            session = runtimes.open_session(chosen, onnx_file, torch.get_num_threads(),
                                            self.spec.mean, self.spec.std)
        except Exception as exc:  # noqa: BLE001 - exporters and runtimes raise many kinds
            if runtimes.check_runtime(name) != AUTO:
                raise EncoderError(
                    f"could not run encoder {self.spec.name!r} with {runtimes.LABELS[chosen]} "
                    f"({type(exc).__name__}: {exc}); use --runtime torch") from exc
            self.runtime_note = f"{runtimes.LABELS[chosen]} failed ({type(exc).__name__}); torch used"
            return self
        self.runtime, self._session, self.runtime_note = chosen, session, ""
        return self

    def to(self, device: torch.device) -> Encoder:

        if device != self.device:
            if device.type != "cpu":
                self.runtime, self._session = TORCH, None  # exported runtimes are CPU-only
            self.model.to(device)
            if device.type == "cuda" and self._is_cnn():
                self.set_channels_last(True)
            self._mean, self._std = self._mean.to(device), self._std.to(device)
            self.device = device
        return self

    def set_channels_last(self, on: bool) -> None:
        import torch

        self.channels_last = bool(on)
        self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def _is_cnn(self) -> bool:
        return getattr(self.model, "num_prefix_tokens", None) is None

    def encode(self, tiles: torch.Tensor, tokens: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode uint8 tiles (N×H×W×3, already on :attr:`device`).

        Returns float32 (N×D) pooled features and, with ``tokens``, (N×49×D) token grids.
        """
        import torch
        import torch.nn.functional as F

        from napari_dkan.devices import autocast

        size = self.spec.input_size
        resize = self.spec.fixed_input_size and tiles.shape[2] != size
        if getattr(self._session, "takes_raw", False) and tiles.dtype == torch.uint8 and not resize:
            # the runtime normalises inside the compiled network: no float copy here
            pooled_np, feats_np = self._session.raw(tiles.contiguous().numpy())
            return self._from_session(pooled_np, feats_np, tokens)
        x = tiles.permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self._mean) / self._std
        if resize:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if self._session is not None:
            pooled_np, feats_np = self._session(x.contiguous().numpy())
            return self._from_session(pooled_np, feats_np, tokens)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device):
            feats = self.model.forward_features(x)
            pooled = self.model.forward_head(feats, pre_logits=True)
            grid = _token_grid(self.model, feats, self.width) if tokens else None
        return pooled.float(), (grid.float() if grid is not None else None)

    def _from_session(self, pooled_np: np.ndarray, feats_np: np.ndarray,
                      tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        import torch

        pooled, feats = torch.from_numpy(pooled_np), torch.from_numpy(feats_np)
        grid = _token_grid(self.model, feats, self.width) if tokens else None
        return pooled.float(), (grid.float() if grid is not None else None)


def _token_grid(model: torch.nn.Module, feats: torch.Tensor, width: int) -> torch.Tensor:
    """(N, 49, D) tokens from a feature map (NCHW or NHWC) or a ViT token sequence."""
    import torch.nn.functional as F

    if feats.ndim == 3:  # ViT: (N, prefix + h·w, D)
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        patches = feats[:, prefix:, :]
        side = int(round(math.sqrt(patches.shape[1])))
        if side * side != patches.shape[1]:
            raise EncoderError(f"cannot arrange {patches.shape[1]} ViT tokens on a square grid")
        fmap = patches.transpose(1, 2).reshape(feats.shape[0], width, side, side)
    elif feats.ndim == 4:
        fmap = feats if feats.shape[1] == width else feats.permute(0, 3, 1, 2)
    else:
        raise EncoderError(f"unexpected feature shape {tuple(feats.shape)} from the encoder")
    pooled = F.adaptive_avg_pool2d(fmap.float(), TOKEN_GRID)
    return pooled.flatten(2).transpose(1, 2)


class LazyEncoder:
    """An encoder loaded at its first use: pass one to several ``extract_section_features``
    calls and the model is built once, and only if some section is not cached yet."""

    def __init__(self, name: str | EncoderSpec, runtime: str = AUTO) -> None:
        self.spec = resolve_encoder(name) if isinstance(name, str) else name
        self.runtime = runtime
        self._encoder: Encoder | None = None

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    def to(self, device: torch.device) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.spec, device, self.runtime)
        return self._encoder.to(device).use_runtime(self.runtime)


def load_encoder(name: str | EncoderSpec, device: str | torch.device = "cpu",
                 runtime: str = AUTO) -> Encoder:
    """Build the named encoder with its weights, frozen, on ``device``, run by ``runtime``
    (``auto``: the fastest installed runtime on a CPU, torch elsewhere; see
    :mod:`napari_dkan.features.runtimes`)."""
    import torch

    from napari_dkan.devices import resolve_device

    spec = resolve_encoder(name) if isinstance(name, str) else name
    model = _build_model(spec)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return Encoder(spec, model).to(dev).use_runtime(runtime)


def _build_model(spec: EncoderSpec) -> torch.nn.Module:
    import torch

    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    kwargs = {"num_classes": 0, **spec.timm_kwargs}
    if spec.weights == HUB:
        source = spec.hub_id if spec.hub_id.startswith("hf-hub:") else spec.arch
        try:
            return timm.create_model(source, pretrained=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network, auth and hub errors alike
            raise EncoderError(
                f"could not download the weights of {spec.family!r} from the Hugging Face hub "
                f"({type(exc).__name__}: {exc}). Use a local weight file instead: "
                f"{spec.family}@/path/to/weights"
            ) from exc
    # Random initialisation draws from the global RNG: seed it in a private scope so the same
    # name always gives the same model, without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        if spec.family == "tiny":
            from napari_dkan.features.tiny import TinyCNN

            model = TinyCNN()
        elif spec.family == "colour-stats":
            from napari_dkan.features.colour import ColourStats

            model = ColourStats()
        else:
            model = timm.create_model(spec.arch, pretrained=False, **kwargs)
    if spec.weights == RANDOM:
        return model
    if spec.weights == PACKAGE:
        state = efficientnet_lite0_state_dict()
    else:
        state = read_state_dict(Path(spec.weights))
    load_matching(model, state, spec)
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: safetensors, or a torch checkpoint read without pickled code."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        raise EncoderError(
            f"{path} could not be read as a weights-only torch checkpoint ({exc}). If it holds "
            "Python objects besides tensors (e.g. a PyTorch Lightning checkpoint) and you trust "
            "it, re-save its state dict: torch.save(torch.load(p, weights_only=False)"
            "['state_dict'], 'weights.pth')"
        ) from exc
    # Training frameworks nest the tensors: {'state_dict': …}, {'model': …}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_matching(model: torch.nn.Module, state: Mapping[str, torch.Tensor], spec: EncoderSpec) -> None:
    """Load ``state`` into the headless ``model``, tolerating wrapper prefixes and heads.

    Every backbone tensor must be present with the right shape; a mismatch names the first
    offending keys, because a wrong checkpoint otherwise shows up only as useless features.
    """
    target = model.state_dict()
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = _strip_wrappers(key)
        if key in target or not key.startswith(_HEAD_PREFIXES):
            cleaned[key] = value
    missing = [k for k in target if k not in cleaned]
    wrong = [k for k in target if k in cleaned and tuple(cleaned[k].shape) != tuple(target[k].shape)]
    if missing or wrong:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if wrong:
            k = wrong[0]
            detail.append(f"{len(wrong)} of the wrong shape (e.g. {k}: file "
                          f"{tuple(cleaned[k].shape)}, model {tuple(target[k].shape)})")
        raise EncoderError(
            f"the weights in {spec.weights} do not fit encoder {spec.family!r} "
            f"({spec.arch}): {'; '.join(detail)}. Is it the right checkpoint?"
        )
    model.load_state_dict({k: cleaned[k] for k in target}, strict=True)


def efficientnet_lite0_state_dict(with_classifier: bool = True) -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 ImageNet checkpoint under timm's names.

    The package stores the tensors under another implementation's names, in the same order as
    timm's ``tf_efficientnet_lite0`` (stem, blocks, head conv, classifier); they are matched by
    position and every shape is checked.
    """
    import torch

    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    source = torch.load(package_weight_file(), map_location="cpu", weights_only=True)
    with torch.device("meta"):  # only the names and shapes are needed
        reference = timm.create_model("tf_efficientnet_lite0", num_classes=1000).state_dict()
    if len(source) != len(reference):
        raise EncoderError(
            f"the packaged EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm's "
            f"tf_efficientnet_lite0 {len(reference)}: the package version is not supported"
        )
    out: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise EncoderError(
                f"packaged EfficientNet-Lite0 tensor {src_key} {tuple(tensor.shape)} does not "
                f"match timm's {dst_key} {tuple(ref.shape)}"
            )
        if with_classifier or not dst_key.startswith("classifier."):
            out[dst_key] = tensor
    return out


def suggest_batch_size(spec: EncoderSpec, device: torch.device) -> int:
    """A batch that fits: a fixed size on CPU, sized from free GPU memory on CUDA."""
    import torch

    if device.type != "cuda":
        return 32 if spec.tile_mb <= 12 else 8
    free, _total = torch.cuda.mem_get_info(device)
    fit = int(0.5 * free / (spec.tile_mb * 2**20))
    return max(16, min(512, 2 ** int(math.log2(max(fit, 1)))))
