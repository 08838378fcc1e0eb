"""How a count matrix names its genes, and making it name them by symbol.

Gene panels are lists of HGNC symbols (ERBB2, KRT19…).  Count matrices also come with Ensembl
gene ids (a Space Ranger matrix whose ``features/name`` holds ids, an AnnData whose
``var_names`` are ``gene_ids``), with repeated names, or from mouse.  Each of these would leave
panel genes silently unmeasured, so the readers call :func:`symbolise` and keep its notes for
the user.

The Ensembl → symbol map is the one in the package's gene knowledge table (human genes, a 2022
Entrez Gene snapshot); it is data shipped in the package, read lazily here only when a matrix
names genes by Ensembl id (loading it takes ~2 s).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from napari_dkan.io.counts import Counts

_HUMAN_ENSEMBL = re.compile(r"^ENSG\d{11}(\.\d+)?$")
_ANY_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
#: mouse symbols are capitalised (Actb, Krt19, mt-Co1); human ones upper case (ACTB, MT-CO1)
_MOUSE_SYMBOL = re.compile(r"^([A-Z][a-z][a-z0-9]*|mt-[A-Z][a-z0-9]+)$")


def ensembl_share(genes: Sequence[str]) -> float:
    """Fraction of ``genes`` that are Ensembl gene ids (any species)."""
    genes = list(genes)
    return sum(bool(_ANY_ENSEMBL.match(g)) for g in genes) / len(genes) if genes else 0.0


def looks_mouse(genes: Sequence[str]) -> bool:
    """Most names are mouse-style symbols (Actb) or mouse Ensembl ids (ENSMUSG…)."""
    genes = [g for g in genes if g]
    if not genes:
        return False
    mouse = sum(bool(_MOUSE_SYMBOL.match(g)) or g.startswith("ENSMUSG") for g in genes)
    return mouse / len(genes) > 0.5


def duplicated(genes: Sequence[str]) -> list[str]:
    """Names that occur more than once, in first-seen order."""
    counts = Counter(genes)
    return [g for g in dict.fromkeys(genes) if counts[g] > 1]


def symbolise(counts: Counts, source: str) -> tuple[Counts, list[str]]:
    """``counts`` with Ensembl ids replaced by symbols where known, and notes for the user.

    Only matrices whose genes are mostly Ensembl ids are renamed.  An id whose symbol is
    unknown, or whose symbol another column already has, keeps its id.
    """
    genes = [str(g) for g in counts.genes]
    notes: list[str] = []
    if ensembl_share(genes) >= 0.5:
        human = sum(bool(_HUMAN_ENSEMBL.match(g)) for g in genes)
        if human == 0:
            notes.append(
                f"{source} names genes by non-human Ensembl ids (e.g. {genes[0]}): the package's "
                "gene table is human, so they stay ids and no human panel gene is measured"
            )
        else:
            renamed, n_mapped = _ensembl_to_symbols(genes)
            notes.append(
                f"{source} names genes by Ensembl id: {n_mapped} of {len(genes)} mapped to gene "
                "symbols with the package's gene table"
                + (f"; {len(genes) - n_mapped} keep their id" if n_mapped < len(genes) else "")
            )
            counts = Counts(counts.matrix, np.asarray(renamed), counts.spot_id, counts.source)
            genes = renamed
    dups = duplicated(genes)
    if dups:
        notes.append(repeated_names_note(dups, source))
    return counts, notes


def repeated_names_note(dups: Sequence[str], source: str) -> str:
    shown = ", ".join(dups[:6]) + ("…" if len(dups) > 6 else "")
    return (f"{len(dups)} gene name(s) occur more than once in {source} ({shown}): the first "
            "column of each is used; make names unique (e.g. anndata's var_names_make_unique) "
            "to choose otherwise")


def _ensembl_to_symbols(genes: list[str]) -> tuple[list[str], int]:
    from napari_dkan.knowledge.table import load_table  # data only: see the module docstring

    table = load_table()
    taken = set(genes)
    out, mapped = [], 0
    for g in genes:
        record = table.by_ensembl(g) if _HUMAN_ENSEMBL.match(g) else None
        if record is not None and record.symbol not in taken:
            out.append(record.symbol)
            taken.add(record.symbol)
            mapped += 1
        else:
            out.append(g)
    return out, mapped
