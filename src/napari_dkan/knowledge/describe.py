"""Compose a short, structured, deterministic description of a gene from the knowledge table.

The text mirrors the structure of the paper's gene texts (symbol, name, functions, location,
disease context) but is composed from curated facts, so it needs no network and no language
model.  Example (``ERBB2``, context "HER2-positive breast cancer")::

    Gene symbol: ERBB2. Name: erb-b2 receptor tyrosine kinase 2. Also known as: NEU, NGL, HER2.
    Protein-coding gene; location: chromosome band 17q12. Molecular functions: transmembrane
    receptor protein tyrosine kinase activity; RNA polymerase I core binding. Biological
    processes: ERBB2-EGFR signaling pathway; ... Cellular components: ERBB3:ERBB2 complex; ...
    Context: HER2-positive breast cancer.

Length is kept under ``max_words`` (90 by default, the paper's bound) by dropping the
lowest-ranked terms first, from the longest list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from napari_dkan.knowledge.resolve import Resolution

MAX_WORDS = 90

_TYPE_WORDS = {
    "protein-coding": "Protein-coding gene",
    "ncRNA": "Non-coding RNA gene",
    "pseudo": "Pseudogene",
    "tRNA": "Transfer RNA gene",
    "rRNA": "Ribosomal RNA gene",
    "snRNA": "Small nuclear RNA gene",
    "snoRNA": "Small nucleolar RNA gene",
    "scRNA": "Small cytoplasmic RNA gene",
    "biological-region": "Genomic region",
}
_SYMBOL_LIKE = re.compile(r"^[A-Z][A-Z0-9-]*$")


@dataclass(frozen=True)
class DescriptionLimits:
    """How many items of each kind a description starts from, before fitting ``max_words``."""

    max_words: int = MAX_WORDS
    aliases: int = 3
    functions: int = 2
    processes: int = 3
    components: int = 2


def _readable_aliases(aliases: tuple[str, ...], n: int) -> list[str]:
    """Symbol-like aliases first (HER2 rather than "p185(erbB2)"), shortest first."""
    ranked = sorted(aliases, key=lambda a: (not _SYMBOL_LIKE.match(a), len(a), a))
    return ranked[:n]


def _n_words(text: str) -> int:
    return len(text.split())


_LABELS = {"functions": "Molecular functions", "processes": "Biological processes",
           "components": "Cellular components"}


def _assemble(head: list[str], kind: str, lists: dict[str, list[str]], tail: list[str]) -> str:
    parts = list(head)
    if lists["aliases"]:
        parts.append(f"Also known as: {', '.join(lists['aliases'])}.")
    if kind:
        parts.append(kind)
    for key, label in _LABELS.items():
        if lists[key]:
            parts.append(f"{label}: {'; '.join(lists[key])}.")
    return " ".join([*parts, *tail])


def _truncate(text: str, max_words: int) -> str:
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words]).rstrip(";,.") + "."


def describe(resolution: Resolution, disease: str | None = None,
             limits: DescriptionLimits = DescriptionLimits()) -> str:
    """The description of one resolved gene (a minimal text when the table has nothing)."""
    tail = [f"Context: {disease.strip()}."] if disease and disease.strip() else []
    record = resolution.record
    if record is None:
        text = (f"Gene symbol: {resolution.query}. No curated annotation is available for this "
                "gene.")
        return _truncate(" ".join([text, *tail]), limits.max_words)

    symbol = resolution.query if resolution.query else record.symbol
    head = [f"Gene symbol: {symbol}." if record.symbol == symbol
            else f"Gene symbol: {symbol} (current symbol {record.symbol})."]
    if record.name:
        head.append(f"Name: {record.name}.")
    kind = _TYPE_WORDS.get(record.gene_type, "")
    where = record.location
    if kind:
        kind = f"{kind}; location: {where}." if where else f"{kind}."
    elif where:
        kind = f"Location: {where}."

    aliases = [a for a in record.aliases if a not in (symbol, record.symbol)]
    lists = {
        "aliases": _readable_aliases(tuple(aliases), limits.aliases),
        "functions": list(record.go_mf[: limits.functions]),
        "processes": list(record.go_bp[: limits.processes]),
        "components": list(record.go_cc[: limits.components]),
    }
    text = _assemble(head, kind, lists, tail)
    # Fit the budget: take the last (lowest-ranked) item off the longest list, components and
    # aliases before processes before functions on ties, until the text fits.
    order = ("components", "aliases", "processes", "functions")
    while _n_words(text) > limits.max_words and any(lists.values()):
        longest = max(order, key=lambda k: (len(lists[k]), -order.index(k)))
        lists[longest].pop()
        text = _assemble(head, kind, lists, tail)
    return _truncate(text, limits.max_words)
