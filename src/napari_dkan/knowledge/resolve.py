"""Resolve the gene names found in panels and count matrices to knowledge-table records.

Order of attempts (the first that finds something wins):

1. ``exact``: the name is a current symbol.
2. ``mitochondrial``: count matrices (10x, legacy ST) name mitochondrial genes ``MT-CO1``,
   ``MT-ND4``, ``MT-TF``...  Entrez lists them without the prefix (``COX1``, ``ND4``, ``TRNF``)
   with ``MTCO1``-style aliases.  This runs *before* the alias lookup because some prefixed names
   are aliases of something else: ``MT-CO2`` is listed as an alias of the pseudogene
   ``MTCO2P12``.  Only genes on the mitochondrial genome are candidates.
3. ``ensembl``: an Ensembl gene id (``ENSG00000141736``, version suffix allowed).
4. ``alias``: an alias or previous symbol (``SEPW1`` -> ``SELENOW``, ``AES`` -> ``TLE5``).
   When several genes list it, the choice is deterministic -- protein-coding first, then the
   best-annotated (most GO terms), then the lowest Entrez id -- and the other candidates are
   reported.
5. ``case``: the same, ignoring case (``Erbb2``, ``sepw1``).
6. ``missing``: nothing found (e.g. clone-based lncRNA names such as ``AP000769.1``).  Never an
   error: the gene gets a minimal text and is reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from napari_dkan.knowledge.table import GeneRecord, KnowledgeTable, load_table

How = Literal["exact", "mitochondrial", "ensembl", "alias", "case", "missing"]
_ENSEMBL = re.compile(r"^ENSG\d{11}(\.\d+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Resolution:
    """How one gene name was matched to the table."""

    query: str
    record: GeneRecord | None
    how: How
    candidates: tuple[str, ...] = ()  # every symbol an ambiguous alias could mean, chosen first

    @property
    def symbol(self) -> str:
        """The current symbol when known, else the name as given."""
        return self.record.symbol if self.record else self.query

    @property
    def found(self) -> bool:
        return self.record is not None

    @property
    def described(self) -> bool:
        return self.record is not None and self.record.described

    @property
    def ambiguous(self) -> bool:
        return len(self.candidates) > 1

    @property
    def renamed(self) -> bool:
        return self.record is not None and self.record.symbol != self.query

    def note(self) -> str:
        """One line for reports: what the name was matched to, and how."""
        if self.record is None:
            return f"{self.query}: not in the gene knowledge table"
        if self.how == "exact":
            return f"{self.query}: {self.record.name}"
        text = f"{self.query} -> {self.record.symbol} ({self.how})"
        if self.ambiguous:
            others = [c for c in self.candidates if c != self.record.symbol]
            text += f"; also an alias of {', '.join(others)}"
        return text


def _pick(records: list[GeneRecord]) -> GeneRecord:
    return min(records, key=lambda r: (r.gene_type != "protein-coding", -r.n_go_terms, r.entrez))


def _from_candidates(query: str, records: list[GeneRecord], how: How) -> Resolution:
    unique = list({r.entrez: r for r in records}.values())
    chosen = _pick(unique)
    others = sorted(r.symbol for r in unique if r.entrez != chosen.entrez)
    candidates = (chosen.symbol, *others) if others else ()
    return Resolution(query, chosen, how, candidates)


def _mitochondrial(table: KnowledgeTable, name: str) -> GeneRecord | None:
    """``MT-CO1`` -> COX1, ``MT-ND4L`` -> ND4L, ``MT-CYB`` -> CYTB, ``MT-TF`` -> TRNF."""
    if not name.upper().startswith("MT-") or len(name) < 4:
        return None
    rest = name[3:].upper()
    wanted = {rest, "MT" + rest}
    if rest.startswith("T") and len(rest) <= 3:  # tRNAs: MT-TL1 -> TRNL1
        wanted.add("TRN" + rest[1:])
    for record in table.on_chromosome("MT"):
        if record.symbol.upper() in wanted or wanted & {a.upper() for a in record.aliases}:
            return record
    return None


def resolve_gene(name: str, table: KnowledgeTable | None = None) -> Resolution:
    """Match one gene name to the table (see the module docstring for the order)."""
    table = table or load_table()
    query = name.strip()
    if (record := table.by_symbol(query)) is not None:
        return Resolution(query, record, "exact")
    if (record := _mitochondrial(table, query)) is not None:
        return Resolution(query, record, "mitochondrial")
    if _ENSEMBL.match(query) and (record := table.by_ensembl(query)) is not None:
        return Resolution(query, record, "ensembl")
    if records := table.by_alias(query):
        return _from_candidates(query, records, "alias")
    if records := table.by_folded_name(query):
        return _from_candidates(query, records, "case")
    return Resolution(query, None, "missing")


def resolve_genes(names: Iterable[str], table: KnowledgeTable | None = None) -> list[Resolution]:
    """Match every name, keeping the order."""
    table = table or load_table()
    return [resolve_gene(n, table) for n in names]


@dataclass(frozen=True)
class Coverage:
    """How well the table knows a panel."""

    resolutions: list[Resolution]

    @property
    def n_genes(self) -> int:
        return len(self.resolutions)

    @property
    def described(self) -> list[Resolution]:
        return [r for r in self.resolutions if r.described]

    @property
    def described_fraction(self) -> float:
        return len(self.described) / self.n_genes if self.n_genes else 0.0

    @property
    def missing(self) -> list[str]:
        return [r.query for r in self.resolutions if not r.found]

    @property
    def undescribed(self) -> list[str]:
        """Found in the table, but with neither GO terms nor a location."""
        return [r.query for r in self.resolutions if r.found and not r.described]

    @property
    def renamed(self) -> list[Resolution]:
        return [r for r in self.resolutions if r.renamed]

    def as_dict(self) -> dict[str, object]:
        return {
            "n_genes": self.n_genes,
            "n_described": len(self.described),
            "described_fraction": self.described_fraction,
            "missing": self.missing,
            "undescribed": self.undescribed,
            "renamed": [{"query": r.query, "symbol": r.symbol, "how": r.how,
                         "candidates": list(r.candidates)} for r in self.renamed],
            "ambiguous": [r.query for r in self.resolutions if r.ambiguous],
        }


def coverage(names: Iterable[str], table: KnowledgeTable | None = None) -> Coverage:
    return Coverage(resolve_genes(names, table))
