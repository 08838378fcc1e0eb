"""The gene knowledge table shipped with the package, and its records.

The table (``data/gene_knowledge.json.gz``, ~2.4 MB) is built by
``scripts/build_gene_knowledge.py`` from Debian's snapshots of Bioconductor's
``org.Hs.eg.db`` and ``GO.db`` (Entrez Gene and Gene Ontology, 2022).  It holds, for every human
Entrez gene: symbol, aliases (previous symbols included), full name, gene type, chromosome and
cytoband, and a ranked selection of GO biological process / molecular function / cellular
component term names (the selection rule is in the script and in the table's metadata).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from napari_dkan.io.errors import DataError

TABLE_FORMAT = "napari-dkan gene knowledge"
_COLUMNS = ["entrez", "symbol", "name", "type", "chromosome", "cytoband", "aliases",
            "go_bp", "go_mf", "go_cc"]


def default_table_path() -> Path:
    return Path(__file__).resolve().parent / "data" / "gene_knowledge.json.gz"


@dataclass(frozen=True)
class GeneRecord:
    """What the table knows about one gene."""

    entrez: int
    symbol: str
    name: str
    gene_type: str
    chromosome: str  # "17"; "X|Y" for pseudo-autosomal genes; "MT" for the mitochondrial genome
    cytoband: str  # "17q12"; "" when not mapped (all mitochondrial genes)
    aliases: tuple[str, ...]
    go_bp: tuple[str, ...]
    go_mf: tuple[str, ...]
    go_cc: tuple[str, ...]

    @property
    def location(self) -> str:
        """Where the gene lies, in words ("" when unknown)."""
        if self.chromosome == "MT":
            return "mitochondrial genome"
        if self.cytoband:
            return "chromosome band " + " and ".join(self.cytoband.split("|"))
        if self.chromosome and self.chromosome != "Un":
            chroms = self.chromosome.split("|")
            return ("chromosomes " if len(chroms) > 1 else "chromosome ") + " and ".join(chroms)
        return ""

    @property
    def n_go_terms(self) -> int:
        return len(self.go_bp) + len(self.go_mf) + len(self.go_cc)

    @property
    def described(self) -> bool:
        """A name and at least one GO term or a location: enough for a useful description."""
        return bool(self.name) and (self.n_go_terms > 0 or bool(self.location))


class KnowledgeTable:
    """Lookups over the shipped table: by symbol, alias, Ensembl id, and on chromosome."""

    def __init__(self, document: dict[str, Any], source: str = "") -> None:
        if document.get("format") != TABLE_FORMAT or document.get("columns") != _COLUMNS:
            raise DataError(
                f"{source or 'the gene knowledge table'} is not a napari-dkan gene knowledge "
                "table of a known version; rebuild it with scripts/build_gene_knowledge.py"
            )
        self.source = source
        self.metadata: dict[str, Any] = document.get("metadata", {})
        self._terms: list[str] = document["go_terms"]
        self._rows: list[list[Any]] = document["genes"]
        self._by_symbol = {row[1]: i for i, row in enumerate(self._rows)}
        self._by_entrez = {row[0]: i for i, row in enumerate(self._rows)}
        self._ensembl = {ens: entrez for ens, entrez in document.get("ensembl", [])}
        self._aliases: dict[str, list[int]] | None = None
        self._folded: dict[str, list[int]] | None = None
        self._by_chromosome: dict[str, list[GeneRecord]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def _record(self, i: int) -> GeneRecord:
        entrez, symbol, name, gtype, chrom, band, aliases, bp, mf, cc = self._rows[i]
        terms = self._terms
        return GeneRecord(
            entrez=entrez, symbol=symbol, name=name, gene_type=gtype, chromosome=chrom,
            cytoband=band, aliases=tuple(aliases),
            go_bp=tuple(terms[t] for t in bp), go_mf=tuple(terms[t] for t in mf),
            go_cc=tuple(terms[t] for t in cc),
        )

    def by_symbol(self, symbol: str) -> GeneRecord | None:
        i = self._by_symbol.get(symbol)
        return None if i is None else self._record(i)

    def by_entrez(self, entrez: int) -> GeneRecord | None:
        i = self._by_entrez.get(int(entrez))
        return None if i is None else self._record(i)

    def by_ensembl(self, ensembl_id: str) -> GeneRecord | None:
        entrez = self._ensembl.get(ensembl_id.split(".", 1)[0].upper())
        return None if entrez is None else self.by_entrez(entrez)

    def by_alias(self, alias: str) -> list[GeneRecord]:
        """Every gene listing ``alias`` (exact case) among its aliases."""
        if self._aliases is None:  # built on first use: ~150k entries
            index: dict[str, list[int]] = {}
            for i, row in enumerate(self._rows):
                for a in row[6]:
                    index.setdefault(a, []).append(i)
            self._aliases = index
        return [self._record(i) for i in self._aliases.get(alias, [])]

    def by_folded_name(self, name: str) -> list[GeneRecord]:
        """Genes whose symbol, or failing that an alias, equals ``name`` ignoring case."""
        if self._folded is None:
            symbols: dict[str, list[int]] = {}
            for i, row in enumerate(self._rows):
                symbols.setdefault(row[1].upper(), []).append(i)
            aliases: dict[str, list[int]] = {}
            for i, row in enumerate(self._rows):
                for a in row[6]:
                    aliases.setdefault("\0" + a.upper(), []).append(i)
            self._folded = {**symbols, **aliases}
        key = name.upper()
        hits = self._folded.get(key) or self._folded.get("\0" + key, [])
        return [self._record(i) for i in hits]

    def on_chromosome(self, chromosome: str) -> list[GeneRecord]:
        if chromosome not in self._by_chromosome:  # memo: resolution asks for "MT" often
            self._by_chromosome[chromosome] = [
                self._record(i) for i, row in enumerate(self._rows)
                if chromosome in row[4].split("|")]
        return self._by_chromosome[chromosome]

    def summary(self) -> dict[str, Any]:
        """Provenance for configs and reports: which release the knowledge comes from."""
        keys = ("built", "entrez_gene_date", "go_annotation_date", "go_ontology_date", "sources")
        return {"table": Path(self.source).name if self.source else "",
                "n_genes": len(self), **{k: self.metadata.get(k) for k in keys}}


def load_table(path: str | Path | None = None) -> KnowledgeTable:
    """The knowledge table at ``path`` (default: the one shipped in the package), cached."""
    return _load(str(Path(path).resolve()) if path else str(default_table_path()))


@lru_cache(maxsize=4)
def _load(path: str) -> KnowledgeTable:
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"gene knowledge table not found at {p}; reinstall napari-dkan, or rebuild it with "
            "scripts/build_gene_knowledge.py"
        )
    try:
        with gzip.open(p, "rt", encoding="utf-8") as fh:
            document = json.load(fh)
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            f"gene knowledge table {p} cannot be read ({exc}); rebuild it with "
            "scripts/build_gene_knowledge.py"
        ) from exc
    if not isinstance(document, dict):
        raise DataError(f"gene knowledge table {p} is not a JSON object; rebuild it")
    return KnowledgeTable(document, source=str(p))
