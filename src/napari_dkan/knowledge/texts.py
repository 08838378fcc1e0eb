"""One text per gene, from the chosen source, with a per-gene report of where it came from.

Sources:

- ``offline`` (default): composed from the shipped knowledge table (:mod:`.describe`).
- ``ncbi``: NCBI Gene's summary (:mod:`.ncbi`); offline text where NCBI has none or fails.
- ``llm``: the offline facts rewritten by a language model (:mod:`.llm`).
- ``ncbi+llm``: the paper's route, NCBI's summary rewritten by a language model.
- user texts: a ``SYMBOL<TAB>text`` file (:func:`read_text_tsv`), e.g. the paper's GPT-4o
  texts, for benchmarks that compare texts under the same encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from napari_dkan.io.errors import DataError
from napari_dkan.knowledge.describe import MAX_WORDS, DescriptionLimits, describe
from napari_dkan.knowledge.llm import LlmSettings, rewrite_all
from napari_dkan.knowledge.ncbi import NcbiSettings, fetch_summaries, ncbi_text
from napari_dkan.knowledge.resolve import Resolution, resolve_genes
from napari_dkan.knowledge.table import KnowledgeTable, load_table

TextSource = Literal["offline", "ncbi", "llm", "ncbi+llm"]
TEXT_SOURCES: tuple[str, ...] = ("offline", "ncbi", "llm", "ncbi+llm")
# what a language model gets to rewrite: more facts than the final text may hold
_LLM_INPUT = DescriptionLimits(max_words=200, aliases=5, functions=5, processes=8, components=4)


@dataclass(frozen=True)
class GeneText:
    """The text of one gene and how it was obtained."""

    gene: str  # the name as given (panel order is kept)
    symbol: str  # the current symbol when the knowledge table knows the gene
    text: str
    origin: str  # offline | ncbi | llm | user: where the text actually came from
    status: str  # ok | cached | missing | not_found | no_summary | timeout | http_error |
    #              network_error | malformed | skipped
    resolution: str  # exact | mitochondrial | ensembl | alias | case | missing | user
    detail: str = ""

    @property
    def fell_back(self) -> bool:
        """An online source was asked for but the text is the offline one."""
        return self.origin == "offline" and self.status not in ("ok", "missing")


def _offline(r: Resolution, disease: str | None, max_words: int) -> GeneText:
    text = describe(r, disease, DescriptionLimits(max_words=max_words))
    status = "ok" if r.found else "missing"
    return GeneText(r.query, r.symbol, text, "offline", status, r.how, r.note())


def gene_texts(genes: Sequence[str], source: TextSource = "offline", disease: str | None = None,
               *, ncbi: NcbiSettings | None = None, llm: LlmSettings | None = None,
               table: KnowledgeTable | None = None, max_words: int = MAX_WORDS) -> list[GeneText]:
    """A text for every gene, in order.  Online failures fall back to the offline text."""
    if source not in TEXT_SOURCES:
        raise DataError(f"unknown gene text source {source!r}; choose one of "
                        f"{', '.join(TEXT_SOURCES)}")
    if source in ("llm", "ncbi+llm") and llm is None:
        raise DataError(f"text source {source!r} needs a language-model endpoint and model "
                        "(--llm-url and --llm-model on the command line)")
    resolutions = resolve_genes(genes, table or load_table())
    texts = [_offline(r, disease, max_words) for r in resolutions]
    if source in ("ncbi", "ncbi+llm"):
        # NCBI's text is final for "ncbi"; for "ncbi+llm" it is the model's input, so it may
        # be longer and leaves the disease context to the prompt
        final = source == "ncbi"
        texts = _from_ncbi(resolutions, texts, disease if final else None,
                           max_words if final else _LLM_INPUT.max_words, ncbi or NcbiSettings())
    if source in ("llm", "ncbi+llm"):
        assert llm is not None
        texts = _from_llm(resolutions, texts, disease, replace(llm, max_words=max_words))
    return texts


def _from_ncbi(resolutions: list[Resolution], texts: list[GeneText], disease: str | None,
               max_words: int, settings: NcbiSettings) -> list[GeneText]:
    out = []
    summaries = fetch_summaries(resolutions, settings)
    for r, s, before in zip(resolutions, summaries, texts, strict=True):
        text = ncbi_text(r, s, disease, max_words)
        if text:
            out.append(GeneText(r.query, r.symbol, text, "ncbi", "cached" if s.cached else "ok",
                                r.how, s.detail))
        else:
            status = "no_summary" if s.status == "ok" else s.status
            out.append(GeneText(r.query, r.symbol, before.text, "offline", status, r.how,
                                s.detail or "NCBI gives no summary for this gene"))
    return out


def _from_llm(resolutions: list[Resolution], texts: list[GeneText], disease: str | None,
              settings: LlmSettings) -> list[GeneText]:
    # the model rewrites NCBI's text where there is one, else the offline facts (more of them
    # than the final text may hold)
    inputs = [t.text if t.origin == "ncbi" else describe(r, None, _LLM_INPUT)
              for r, t in zip(resolutions, texts, strict=True)]
    rewrites = rewrite_all([(r.query, k) for r, k in zip(resolutions, inputs, strict=True)],
                           disease, settings)
    out = []
    for r, w, before in zip(resolutions, rewrites, texts, strict=True):
        came_from = f"input from {before.origin} ({before.status})"
        if w.status == "ok":
            out.append(GeneText(r.query, r.symbol, w.text, "llm", "cached" if w.cached else "ok",
                                r.how, came_from))
        else:
            fallback = _offline(r, disease, settings.max_words)
            out.append(GeneText(r.query, r.symbol, fallback.text, "offline", w.status, r.how,
                                f"{w.detail}; {came_from}"))
    return out


def read_text_tsv(path: str | Path) -> dict[str, str]:
    """``SYMBOL<TAB>text`` lines (the format of the paper's ``*_gpt4o.tsv``), in file order."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"gene text file not found: {p}")
    texts: dict[str, str] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        symbol, sep, text = line.partition("\t")
        if not sep or not symbol.strip() or not text.strip():
            raise DataError(f"{p}, line {n}: expected 'SYMBOL<TAB>text', got {line[:60]!r}")
        if symbol.strip() in texts:
            raise DataError(f"{p}, line {n}: gene {symbol.strip()} appears twice")
        texts[symbol.strip()] = text.strip()
    if not texts:
        raise DataError(f"gene text file {p} holds no texts")
    return texts


def texts_from_tsv(genes: Sequence[str], path: str | Path) -> list[GeneText]:
    """The user's text for every gene, in the panel's order; every gene must have one."""
    given = read_text_tsv(path)
    lacking = [g for g in genes if g not in given]
    if lacking:
        shown = ", ".join(lacking[:8]) + (" ..." if len(lacking) > 8 else "")
        raise DataError(f"{path} has no text for {len(lacking)} of the {len(genes)} genes "
                        f"({shown}); add them, or use the offline texts")
    return [GeneText(g, g, given[g], "user", "ok", "user") for g in genes]
