"""Gene text embeddings for a panel: texts, encoder, cache, and a record the model can keep."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dkan.io.errors import DataError
from napari_dkan.knowledge import embedding_cache
from napari_dkan.knowledge.encoders import DEFAULT_ENCODER, POOLINGS, TextEncoder, resolve_encoder
from napari_dkan.knowledge.llm import LlmSettings
from napari_dkan.knowledge.ncbi import NcbiSettings
from napari_dkan.knowledge.table import load_table
from napari_dkan.knowledge.texts import GeneText, TextSource, gene_texts, texts_from_tsv
from napari_dkan.storage import StorageError

MATRIX_KEY = "gene_embeddings"
log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass
class GeneEmbeddings:
    """One embedding per gene, in the panel's order, and how they were made."""

    genes: list[str]
    matrix: np.ndarray  # N_g × D float32, row i belongs to genes[i]
    encoder: str
    pooling: str
    texts: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)  # JSON-ready, for model configs
    records: list[GeneText] = field(default_factory=list)  # per-gene origin and status
    from_cache: bool = False

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def save(self, path: str | Path) -> Path:
        """A safetensors file: the matrix under ``gene_embeddings``, genes and provenance in
        the metadata (JSON strings, as safetensors metadata holds only text)."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({MATRIX_KEY: np.ascontiguousarray(self.matrix, dtype=np.float32)}, str(path),
                  metadata={"genes": json.dumps(self.genes), "encoder": self.encoder,
                            "pooling": self.pooling, "texts": json.dumps(self.texts),
                            "provenance": json.dumps(self.provenance)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> GeneEmbeddings:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                matrix = fh.get_tensor(MATRIX_KEY)
            genes = json.loads(meta["genes"])
        except Exception as exc:  # noqa: BLE001 (any failure means: not our file)
            raise DataError(f"{path} is not a gene embedding file written by napari-dkan "
                            f"({exc})") from exc
        return cls(genes=genes, matrix=matrix, encoder=meta.get("encoder", ""),
                   pooling=meta.get("pooling", ""), texts=json.loads(meta.get("texts", "[]")),
                   provenance=json.loads(meta.get("provenance", "{}")))


def embed_texts(texts: Sequence[str], encoder: str = DEFAULT_ENCODER, pooling: str | None = None,
                *, device: str = "cpu", batch_size: int = 32, max_length: int = 256,
                progress: Progress | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed texts with a cache: the model is only loaded when the cache has no answer.

    Returns the ``N×D`` float32 matrix and a description of the encoder (name, identity,
    pooling, dimension, whether the cache answered).
    """
    if not texts:
        raise DataError("no texts to embed")
    spec = resolve_encoder(encoder)
    pooling = pooling or spec.default_pooling
    if pooling not in POOLINGS:
        raise DataError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    key = embedding_cache.cache_key(texts, spec.identity, pooling, max_length)
    info = {"encoder": spec.name, "encoder_identity": spec.identity, "pooling": pooling,
            "max_length": max_length}
    cached = embedding_cache.load(key, len(texts))
    if cached is not None:
        return cached, {**info, "dim": int(cached.shape[1]), "from_cache": True}
    model = TextEncoder(spec, device=device, max_length=max_length)
    matrix = model.encode(texts, pooling, batch_size=batch_size, progress=progress)
    try:
        embedding_cache.store(key, matrix, {"encoder": spec.name, "identity": spec.identity,
                                            "pooling": pooling, "n": str(len(texts))})
    except StorageError as exc:  # the cache only saves time: embed on without it
        log.warning("text embeddings were not cached (%s); continuing without the cache", exc)
    return matrix, {**info, "dim": int(matrix.shape[1]), "from_cache": False}


def gene_embeddings(genes: Sequence[str], encoder: str = DEFAULT_ENCODER,
                    pooling: str | None = None, disease: str | None = None,
                    source: TextSource = "offline", *, texts: str | Path | None = None,
                    ncbi: NcbiSettings | None = None, llm: LlmSettings | None = None,
                    device: str = "cpu", batch_size: int = 32,
                    progress: Progress | None = None) -> GeneEmbeddings:
    """Text embeddings for a gene panel, in the panel's order.

    ``texts`` (a ``SYMBOL<TAB>text`` file) replaces the composed texts, e.g. with the paper's
    GPT-4o texts; otherwise ``source`` picks how texts are made (offline by default; see
    :func:`napari_dkan.knowledge.texts.gene_texts`).
    """
    genes = list(genes)
    if not genes:
        raise DataError("the gene panel is empty")
    if len(set(genes)) != len(genes):
        dup = sorted({g for g in genes if genes.count(g) > 1})
        raise DataError(f"the gene panel repeats gene(s): {', '.join(dup[:5])}")
    if texts is not None:
        records = texts_from_tsv(genes, texts)
        text_info: dict[str, Any] = {"text_source": "user", "texts_file": Path(texts).name}
    else:
        records = gene_texts(genes, source, disease, ncbi=ncbi, llm=llm)
        text_info = {"text_source": source, "disease": disease,
                     "knowledge": load_table().summary()}
    strings = [r.text for r in records]
    matrix, enc_info = embed_texts(strings, encoder, pooling, device=device,
                                   batch_size=batch_size, progress=progress)
    provenance = {
        **text_info,
        **{k: v for k, v in enc_info.items() if k != "from_cache"},
        "n_genes": len(genes),
        "texts_sha256": hashlib.sha256("\n".join(strings).encode()).hexdigest(),
        "origins": _count(r.origin for r in records),
        "statuses": _count(r.status for r in records),
        "missing": [r.gene for r in records if r.status == "missing"],
        "renamed": {r.gene: r.symbol for r in records if r.symbol != r.gene},
    }
    return GeneEmbeddings(genes=genes, matrix=matrix, encoder=enc_info["encoder"],
                          pooling=enc_info["pooling"], texts=strings, provenance=provenance,
                          records=records, from_cache=enc_info["from_cache"])


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items()))
