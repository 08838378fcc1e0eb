#!/usr/bin/env python3
"""Build the gene knowledge table shipped in ``napari_dkan/knowledge/data/``.

Source: Debian's ``r-bioc-org.hs.eg.db`` (Entrez Gene snapshot for Homo sapiens: symbols,
aliases, names, locations, GO annotations) and ``r-bioc-go.db`` (GO term names and the GO
graph).  Both hold plain SQLite databases, so no R is needed::

    python scripts/build_gene_knowledge.py            # apt-get download into a temp dir
    python scripts/build_gene_knowledge.py --debs DIR # use .deb files already there

The output is one gzipped JSON document (written with a fixed gzip timestamp so the bytes only
change when the content does).  Layout::

    {"format": "napari-dkan gene knowledge", "version": 1,
     "metadata": {...sources, build date, the GO selection rule...},
     "go_terms": ["term name", ...],                 # GO terms referenced below, by index
     "columns": ["entrez", "symbol", ...],
     "genes": [[2064, "ERBB2", ...], ...],
     "ensembl": [["ENSG00000141736", 2064], ...]}

GO selection rule (per gene, per aspect BP/MF/CC), documented in the table's metadata too:

1. drop ``ND`` ("no data") annotations and the three root terms;
2. drop a term when a more specific term of the same gene is annotated (a descendant in the GO
   graph): "cytoplasm" goes when "cytosol" is there;
3. order what is left by
   a. generic last: terms annotated to more than 5 % of the genes annotated in that aspect
      ("protein binding", "nucleus", "signal transduction", ...) only fill in when nothing
      else is known;
   b. evidence tier: experimental / traceable author / curator (EXP IDA IPI IMP IGI IEP HTP
      HDA HMP HGI HEP TAS IC) before phylogenetic / similarity / non-traceable (IBA ISS ISO
      ...  NAS) before electronic (IEA);
   c. more distinct evidence codes first (independent lines of support);
   d. more specific first (fewer genes annotated: higher information content);
   e. term name, for determinism;
4. keep at most 8 BP, 5 MF and 4 CC terms.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

PACKAGES = ("r-bioc-org.hs.eg.db", "r-bioc-go.db")
ORG_DB = "usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
GO_DB = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
DEFAULT_OUT = (Path(__file__).resolve().parents[1]
               / "src" / "napari_dkan" / "knowledge" / "data" / "gene_knowledge.json.gz")

CAPS = {"bp": 8, "mf": 5, "cc": 4}
GENERIC_FRACTION = 0.05
ROOTS = {"GO:0008150", "GO:0003674", "GO:0005575"}
TIER = {
    **dict.fromkeys("EXP IDA IPI IMP IGI IEP HTP HDA HMP HGI HEP TAS IC".split(), 0),
    **dict.fromkeys("IBA IBD IKR IRD ISS ISO ISA ISM IGC RCA NAS".split(), 1),
    "IEA": 2,
}
GO_RULE = (
    "per gene and aspect: drop ND and root terms; drop terms with a more specific annotated "
    "descendant; order by (generic last: annotated to >5% of genes in the aspect), evidence "
    "tier (experimental/TAS/IC < phylogenetic/similarity/NAS < IEA), more distinct evidence "
    "codes, fewer genes annotated, term name; keep 8 BP, 5 MF, 4 CC"
)


def fetch_debs(workdir: Path) -> list[Path]:
    """``apt-get download`` the two packages into ``workdir``."""
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir, check=True)
    return sorted(workdir.glob("*.deb"))


def unpack(debs: list[Path], root: Path) -> list[dict[str, str]]:
    """Extract the .deb files under ``root``; return each package's name, version and date."""
    sources = []
    for deb in debs:
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                                capture_output=True, text=True, check=True).stdout
        info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        if info.get("Package") not in PACKAGES:
            continue
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        changelog = root / "usr/share/doc" / info["Package"] / "changelog.Debian.gz"
        released = ""
        if changelog.exists():
            # the first trailer line (" -- Name <mail>  Wed, 23 Nov 2022 ...") dates the upload
            for line in gzip.open(changelog, "rt"):
                if line.startswith(" -- "):
                    released = line.split(">", 1)[-1].strip()
                    break
        sources.append({"package": info["Package"], "version": info["Version"],
                        "debian_upload": released})
    missing = set(PACKAGES) - {s["package"] for s in sources}
    if missing:
        sys.exit(f"missing package(s): {', '.join(sorted(missing))}")
    return sources


def _evidence_tier(codes: set[str]) -> int:
    return min(TIER.get(c, 1) for c in codes)


def select_go_terms(org: sqlite3.Connection, aspect: str) -> dict[int, list[str]]:
    """The selected GO ids per gene (``_id`` of org.Hs.eg.db) for one aspect."""
    evidence: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for gid, go_id, code in org.execute(f"SELECT _id, go_id, evidence FROM go_{aspect}"):
        if code != "ND" and go_id not in ROOTS:
            evidence[gid][go_id].add(code)
    genes_per_term = Counter(go_id for terms in evidence.values() for go_id in terms)
    generic = {t for t, n in genes_per_term.items() if n > GENERIC_FRACTION * len(evidence)}

    term_key = {go_id: key for key, go_id in org.execute("SELECT _id, go_id FROM go.go_term")}
    offspring: dict[int, set[int]] = defaultdict(set)
    for parent, child in org.execute(f"SELECT _id, _offspring_id FROM go.go_{aspect}_offspring"):
        offspring[parent].add(child)

    chosen: dict[int, list[str]] = {}
    for gid, terms in evidence.items():
        keys = {term_key[t] for t in terms if t in term_key}
        specific = [t for t in terms if not (offspring.get(term_key.get(t, -1), set()) & keys)]
        specific.sort(key=lambda t: (t in generic, _evidence_tier(terms[t]), -len(terms[t]),
                                     genes_per_term[t], t))
        chosen[gid] = specific[: CAPS[aspect]]
    return chosen


def build(root: Path, sources: list[dict[str, str]]) -> dict:
    org = sqlite3.connect(root / ORG_DB)
    org.execute("ATTACH DATABASE ? AS go", (str(root / GO_DB),))
    meta = dict(org.execute("SELECT name, value FROM metadata"))
    go_meta = dict(org.execute("SELECT name, value FROM go.metadata"))
    term_name = dict(org.execute("SELECT go_id, term FROM go.go_term"))

    rows = org.execute(
        "SELECT g._id, g.gene_id, i.symbol, i.gene_name, t.gene_type FROM genes g "
        "JOIN gene_info i USING(_id) LEFT JOIN genetype t USING(_id) "
        "ORDER BY CAST(g.gene_id AS INT)"
    ).fetchall()
    chromosomes: dict[int, list[str]] = defaultdict(list)
    for gid, chrom in org.execute("SELECT _id, chromosome FROM chromosomes ORDER BY chromosome"):
        chromosomes[gid].append(chrom)
    bands: dict[int, list[str]] = defaultdict(list)
    for gid, band in org.execute(
            "SELECT _id, cytogenetic_location FROM cytogenetic_locations ORDER BY 2"):
        bands[gid].append(band)
    aliases: dict[int, list[str]] = defaultdict(list)
    symbol_of = {gid: sym for gid, _, sym, _, _ in rows}
    for gid, alias in org.execute("SELECT _id, alias_symbol FROM alias ORDER BY 2"):
        if alias != symbol_of.get(gid):
            aliases[gid].append(alias)
    go = {aspect: select_go_terms(org, aspect) for aspect in CAPS}

    term_index: dict[str, int] = {}

    def idx(go_id: str) -> int:
        return term_index.setdefault(go_id, len(term_index))

    genes = []
    for gid, entrez, symbol, name, gtype in rows:
        genes.append([
            int(entrez), symbol, name, gtype or "unknown",
            "|".join(dict.fromkeys(chromosomes.get(gid, []))),
            "|".join(dict.fromkeys(bands.get(gid, []))),
            aliases.get(gid, []),
            *[[idx(t) for t in go[aspect].get(gid, [])] for aspect in CAPS],
        ])
    ensembl = sorted(
        (ens, int(entrez)) for ens, entrez in org.execute(
            "SELECT e.ensembl_id, g.gene_id FROM ensembl e JOIN genes g USING(_id)"))
    go_terms = [""] * len(term_index)
    for go_id, i in term_index.items():
        go_terms[i] = term_name[go_id]

    return {
        "format": "napari-dkan gene knowledge",
        "version": 1,
        "metadata": {
            "organism": meta.get("ORGANISM", "Homo sapiens"),
            "built": dt.date.today().isoformat(),
            "sources": sources,
            "entrez_gene_date": meta.get("EGSOURCEDATE"),
            "go_annotation_date": meta.get("GOEGSOURCEDATE"),
            "go_ontology_date": go_meta.get("GOSOURCEDATE"),
            "ensembl_date": meta.get("ENSOURCEDATE"),
            "go_rule": GO_RULE,
            "go_caps": CAPS,
            "n_genes": len(genes),
            "licence": "org.Hs.eg.db / GO.db: Artistic-2.0 (Bioconductor); Entrez Gene and "
                       "GO data are public (GO: CC BY 4.0)",
        },
        "go_terms": go_terms,
        "columns": ["entrez", "symbol", "name", "type", "chromosome", "cytoband", "aliases",
                    "go_bp", "go_mf", "go_cc"],
        "genes": genes,
        "ensembl": [list(p) for p in ensembl],
    }


def write(table: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(table, ensure_ascii=False, separators=(",", ":")).encode()
    with open(out, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0,
                                              compresslevel=9, filename="") as gz:
        gz.write(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--debs", type=Path, help="folder with the two .deb files (skip download)")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        debs = sorted(args.debs.glob("*.deb")) if args.debs else fetch_debs(tmp)
        sources = unpack(debs, tmp / "root")
        table = build(tmp / "root", sources)
    write(table, args.output)
    size = args.output.stat().st_size
    described = sum(1 for g in table["genes"] if g[7] or g[8] or g[9])
    print(f"wrote {args.output} ({size / 1e6:.2f} MB): {len(table['genes'])} genes, "
          f"{described} with GO terms, {len(table['go_terms'])} GO terms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
