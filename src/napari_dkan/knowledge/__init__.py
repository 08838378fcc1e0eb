"""Gene knowledge, gene texts and text embeddings (method.md §8), offline by default.

DKAN conditions every gene's prediction on an embedding of a short text about the gene.  This
package makes those texts and embeddings with no network:

- a human gene knowledge table shipped in the package (Entrez Gene + GO, 2022 snapshot via
  Debian's Bioconductor packages; built by ``scripts/build_gene_knowledge.py``);
- name resolution through aliases, previous symbols, ``MT-`` names and Ensembl ids;
- a deterministic description per gene (symbol, name, GO functions, location, disease context,
  under 90 words);
- optional online routes, off by default: NCBI Gene summaries and a rewrite by any
  OpenAI-compatible chat endpoint (the paper's route), with per-gene status and fallback;
- text encoders by Hugging Face name or local folder (default: the packaged all-MiniLM-L6-v2,
  384-d, mean pooling; the paper's last-token pooling available), with an on-disk cache.

Public API::

    gene_embeddings(genes, encoder=DEFAULT_ENCODER, pooling=None, disease=None,
                    source="offline", *, texts=None, ncbi=None, llm=None, device="cpu",
                    batch_size=32, progress=None) -> GeneEmbeddings
        # GeneEmbeddings: genes, matrix (N_g×D float32, panel order), encoder, pooling, texts,
        # provenance (JSON-ready dict for model configs), records (per-gene GeneText),
        # from_cache; .save(path) / GeneEmbeddings.load(path) as safetensors
    embed_texts(texts, encoder=DEFAULT_ENCODER, pooling=None, ...) -> (matrix, info)
    gene_texts(genes, source="offline", disease=None, *, ncbi=None, llm=None) -> list[GeneText]
    read_text_tsv(path) -> dict[symbol, text]          # SYMBOL<TAB>text files
    resolve_gene(name) -> Resolution; resolve_genes(names); coverage(names) -> Coverage
    describe(resolution, disease=None) -> str
    load_table(path=None) -> KnowledgeTable

``source`` is one of ``"offline"``, ``"ncbi"``, ``"llm"``, ``"ncbi+llm"``; the online ones need
:class:`NcbiSettings` / :class:`LlmSettings` (``llm`` is required for the LLM routes).

Nothing here imports torch or transformers at module level; they load when a model is needed,
and not at all when the embedding cache already holds the answer.
"""

from napari_dkan.knowledge.describe import MAX_WORDS, DescriptionLimits, describe
from napari_dkan.knowledge.embeddings import (
    MATRIX_KEY,
    GeneEmbeddings,
    embed_texts,
    gene_embeddings,
)
from napari_dkan.knowledge.encoders import DEFAULT_ENCODER, POOLINGS, resolve_encoder
from napari_dkan.knowledge.llm import LlmSettings
from napari_dkan.knowledge.ncbi import NcbiSettings
from napari_dkan.knowledge.resolve import (
    Coverage,
    Resolution,
    coverage,
    resolve_gene,
    resolve_genes,
)
from napari_dkan.knowledge.table import GeneRecord, KnowledgeTable, load_table
from napari_dkan.knowledge.texts import TEXT_SOURCES, GeneText, gene_texts, read_text_tsv

__all__ = [
    "DEFAULT_ENCODER",
    "MATRIX_KEY",
    "MAX_WORDS",
    "POOLINGS",
    "TEXT_SOURCES",
    "Coverage",
    "DescriptionLimits",
    "GeneEmbeddings",
    "GeneRecord",
    "GeneText",
    "KnowledgeTable",
    "LlmSettings",
    "NcbiSettings",
    "Resolution",
    "coverage",
    "describe",
    "embed_texts",
    "gene_embeddings",
    "gene_texts",
    "load_table",
    "read_text_tsv",
    "resolve_encoder",
    "resolve_gene",
    "resolve_genes",
]
