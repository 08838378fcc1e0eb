"""Gene knowledge: the shipped table, name resolution, coverage of the real panels, texts."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass

import pytest

from napari_dkan.cli import main
from napari_dkan.io.errors import DataError
from napari_dkan.knowledge import (
    KnowledgeTable,
    coverage,
    describe,
    gene_texts,
    load_table,
    read_text_tsv,
    resolve_gene,
)
from napari_dkan.knowledge.describe import DescriptionLimits
from napari_dkan.knowledge.table import default_table_path


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def table() -> KnowledgeTable:
    return load_table()


def test_shipped_table_is_small_and_says_where_it_comes_from(table):
    assert default_table_path().stat().st_size < 5_000_000
    assert len(table) > 70_000
    meta = table.summary()
    assert meta["entrez_gene_date"] and meta["go_ontology_date"] and meta["built"]
    assert {s["package"] for s in meta["sources"]} == {"r-bioc-org.hs.eg.db", "r-bioc-go.db"}
    assert "generic last" in table.metadata["go_rule"]


def test_record_holds_name_location_go_and_aliases(table):
    erbb2 = table.by_symbol("ERBB2")
    assert erbb2.entrez == 2064 and erbb2.name == "erb-b2 receptor tyrosine kinase 2"
    assert erbb2.cytoband == "17q12" and erbb2.location == "chromosome band 17q12"
    assert "HER2" in erbb2.aliases and "ERBB2" not in erbb2.aliases
    assert "transmembrane receptor protein tyrosine kinase activity" in erbb2.go_mf
    assert len(erbb2.go_bp) <= 8 and len(erbb2.go_mf) <= 5 and len(erbb2.go_cc) <= 4
    # generic terms only fill in: ERBB2 has plenty of specific ones
    assert "protein binding" not in erbb2.go_mf and "nucleus" not in erbb2.go_cc


@dataclass(frozen=True)
class Case:
    query: str
    symbol: str
    how: str


HER2ST_OLD_SYMBOLS = [
    Case("SEPW1", "SELENOW", "alias"), Case("AES", "TLE5", "alias"),
    Case("H2AFJ", "H2AJ", "alias"), Case("H1FX", "H1-10", "alias"),
    Case("TCEB2", "ELOB", "alias"), Case("ATP5E", "ATP5F1E", "alias"),
    Case("KIAA0100", "BLTP2", "alias"), Case("SLC9A3R1", "SLC9A3R1", "exact"),
    Case("NHERF1", "SLC9A3R1", "alias"),  # the newer name, unknown to the 2022 snapshot
]
MITOCHONDRIAL = [
    Case("MT-CO1", "COX1", "mitochondrial"), Case("MT-CO2", "COX2", "mitochondrial"),
    Case("MT-ND4", "ND4", "mitochondrial"), Case("MT-ND4L", "ND4L", "mitochondrial"),
    Case("MT-ATP6", "ATP6", "mitochondrial"), Case("MT-CYB", "CYTB", "mitochondrial"),
    Case("MT-RNR2", "RNR2", "mitochondrial"), Case("MT-TF", "TRNF", "mitochondrial"),
    Case("mt-nd1", "ND1", "mitochondrial"),
]
OTHER = [
    Case("ERBB2", "ERBB2", "exact"),
    Case("ENSG00000141736", "ERBB2", "ensembl"), Case("ENSG00000141736.14", "ERBB2", "ensembl"),
    Case("Erbb2", "ERBB2", "case"), Case("sepw1", "SELENOW", "case"),
]


@pytest.mark.parametrize("case", HER2ST_OLD_SYMBOLS + MITOCHONDRIAL + OTHER, ids=lambda c: c.query)
def test_names_resolve(case, table):
    r = resolve_gene(case.query, table)
    assert (r.symbol, r.how) == (case.symbol, case.how)
    assert r.described


def test_mt_prefix_beats_a_misleading_alias(table):
    # "MT-CO2" is also listed as an alias of a pseudogene; the mitochondrial gene must win
    assert any(r.symbol == "MTCO2P12" for r in table.by_alias("MT-CO2"))
    r = resolve_gene("MT-CO2", table)
    assert r.record.chromosome == "MT" and r.record.gene_type == "protein-coding"


def test_ambiguous_alias_is_resolved_deterministically_and_reported(table):
    listed = table.by_alias("AAC2")
    assert {g.symbol for g in listed} >= {"NAT2", "SLC25A5"}
    r = resolve_gene("AAC2", table)
    expected = min(listed, key=lambda g: (g.gene_type != "protein-coding", -g.n_go_terms, g.entrez))
    assert r.symbol == expected.symbol and r.ambiguous
    assert set(r.candidates) == {g.symbol for g in listed} and r.candidates[0] == r.symbol
    other = next(c for c in r.candidates if c != r.symbol)
    assert f"also an alias of {other}" in r.note()
    assert resolve_gene("AAC2", table) == r  # same answer every time


def _toy_table(genes: list[list]) -> KnowledgeTable:
    doc = {"format": "napari-dkan gene knowledge", "version": 1, "metadata": {},
           "go_terms": ["t0", "t1", "t2"],
           "columns": ["entrez", "symbol", "name", "type", "chromosome", "cytoband", "aliases",
                       "go_bp", "go_mf", "go_cc"], "genes": genes, "ensembl": []}
    return KnowledgeTable(doc)


def test_ambiguity_rule_prefers_protein_coding_then_annotation_then_entrez():
    t = _toy_table([
        [30, "PSEUDO1", "pseudogene", "pseudo", "1", "1p1", ["X1"], [0, 1, 2], [], []],
        [20, "CODING2", "well known", "protein-coding", "2", "2p1", ["X1", "X2"], [0, 1], [], []],
        [10, "CODING1", "less known", "protein-coding", "3", "3p1", ["X1", "X2"], [0], [], []],
        [40, "CODING3", "as known", "protein-coding", "4", "4p1", ["X2"], [0, 1], [], []],
    ])
    assert resolve_gene("X1", t).symbol == "CODING2"  # protein-coding, then most GO terms
    assert resolve_gene("X2", t).symbol == "CODING2"  # tie on GO terms: lowest Entrez id
    assert resolve_gene("X2", t).candidates == ("CODING2", "CODING1", "CODING3")


@pytest.mark.parametrize("panel", ["her2st", "skin", "stnet"])
def test_real_panels_are_described(panel, panels_dir, table):
    genes = (panels_dir / f"{panel}.txt").read_text().split()
    cov = coverage(genes, table)
    assert cov.n_genes == 250 and cov.described_fraction >= 0.97
    # what stays unknown are clone-based lncRNA names, absent from Entrez
    assert all("." in g for g in cov.missing), cov.missing


def test_missing_gene_is_reported_never_an_error(table):
    r = resolve_gene("AP000769.1", table)
    assert not r.found and r.how == "missing" and r.symbol == "AP000769.1"
    text = describe(r, "HER2-positive breast cancer")
    assert text.startswith("Gene symbol: AP000769.1.") and "No curated annotation" in text
    assert text.endswith("Context: HER2-positive breast cancer.")
    [t] = gene_texts(["AP000769.1"])
    assert (t.status, t.origin, t.resolution) == ("missing", "offline", "missing")


def test_description_names_gene_functions_location_and_context(table):
    text = describe(resolve_gene("ERBB2", table), "HER2-positive breast cancer")
    assert text.startswith("Gene symbol: ERBB2. Name: erb-b2 receptor tyrosine kinase 2.")
    assert "HER2" in text and "17q12" in text
    assert "transmembrane receptor protein tyrosine kinase activity" in text
    assert text.endswith("Context: HER2-positive breast cancer.")
    assert len(text.split()) <= 90
    assert describe(resolve_gene("ERBB2", table), "HER2-positive breast cancer") == text
    old = describe(resolve_gene("SEPW1", table))
    assert old.startswith("Gene symbol: SEPW1 (current symbol SELENOW).")
    assert "mitochondrial genome" in describe(resolve_gene("MT-CO1", table))


def test_description_fits_any_word_budget_by_dropping_lowest_ranked_terms(table):
    r = resolve_gene("ERBB2", table)
    full = describe(r, limits=DescriptionLimits(max_words=400, processes=8, functions=5))
    short = describe(r, limits=DescriptionLimits(max_words=40, processes=8, functions=5))
    assert len(short.split()) <= 40 < len(full.split())
    # the best-ranked function survives, the lowest-ranked process goes first
    assert r.record.go_mf[0] in short and r.record.go_bp[-1] not in short


@pytest.mark.parametrize("panel", ["her2st", "skin", "stnet"])
def test_every_panel_text_is_under_90_words(panel, panels_dir):
    genes = (panels_dir / f"{panel}.txt").read_text().split()
    texts = gene_texts(genes, disease="HER2-positive breast cancer")
    assert [t.gene for t in texts] == genes
    assert max(len(t.text.split()) for t in texts) <= 90


def test_broken_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "t.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot be read.*build_gene_knowledge"):
        load_table(bad)
    other = tmp_path / "o.json.gz"
    with gzip.open(other, "wt") as fh:
        json.dump({"format": "something else"}, fh)
    with pytest.raises(DataError, match="not a napari-dkan gene knowledge table"):
        load_table(other)
    with pytest.raises(DataError, match="not found"):
        load_table(tmp_path / "absent.json.gz")


def test_text_tsv_reading_and_its_errors(tmp_path):
    f = tmp_path / "t.tsv"
    f.write_text("ERBB2\tgene symbol: ERBB2. a kinase.\nMT-CO1\tcomplex IV\n")
    assert read_text_tsv(f) == {"ERBB2": "gene symbol: ERBB2. a kinase.", "MT-CO1": "complex IV"}
    f.write_text("ERBB2 no tab here\n")
    with pytest.raises(DataError, match="line 1: expected 'SYMBOL<TAB>text'"):
        read_text_tsv(f)
    f.write_text("ERBB2\ta\nERBB2\tb\n")
    with pytest.raises(DataError, match="appears twice"):
        read_text_tsv(f)


def test_paper_texts_file_reads_in_panel_order(panels_dir):
    tsv = panels_dir.parent / "gene_texts" / "her2st_gpt4o.tsv"
    if not tsv.exists():
        pytest.skip(f"{tsv} not present")
    texts = read_text_tsv(tsv)
    assert list(texts) == (panels_dir / "her2st.txt").read_text().split()


def test_unknown_text_source_and_llm_without_endpoint_are_clear_errors():
    with pytest.raises(DataError, match="unknown gene text source 'wiki'"):
        gene_texts(["ERBB2"], "wiki")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="needs a language-model endpoint"):
        gene_texts(["ERBB2"], "llm")


# --- command line -------------------------------------------------------------------------


def test_cli_describe_erbb2(capsys):
    assert main(["genes", "describe", "ERBB2"]) == 0
    out = capsys.readouterr().out
    assert "erb-b2 receptor tyrosine kinase 2" in out
    assert "Molecular functions: transmembrane receptor protein tyrosine kinase activity" in out


def test_cli_describe_json_reports_each_gene(capsys):
    assert main(["genes", "describe", "SEPW1", "AP000769.1", "--disease", "skin", "--json"]) == 0
    info = _last_json(capsys.readouterr().out)
    sepw1, missing = info["genes"]
    assert (sepw1["symbol"], sepw1["resolution"], sepw1["status"]) == ("SELENOW", "alias", "ok")
    assert missing["status"] == "missing" and "Context: skin." in missing["text"]


@pytest.mark.parametrize("panel", ["her2st", "skin", "stnet"])
def test_cli_coverage_json(panel, panels_dir, capsys):
    assert main(["genes", "coverage", str(panels_dir / f"{panel}.txt"), "--json"]) == 0
    info = _last_json(capsys.readouterr().out)
    assert info["described_fraction"] >= 0.97 and info["n_genes"] == 250
    renamed = {r["query"]: r["symbol"] for r in info["renamed"]}
    if panel == "her2st":
        assert info["missing"] == ["AP000769.1"]
        assert renamed["SEPW1"] == "SELENOW" and renamed["AES"] == "TLE5"
    if panel == "skin":
        assert renamed["MT-CO1"] == "COX1" and renamed["MT-ND4"] == "ND4"


def test_cli_coverage_of_a_missing_file_exits_2(tmp_path, capsys):
    assert main(["genes", "coverage", str(tmp_path / "none.txt")]) == 2
    assert "gene panel file not found" in capsys.readouterr().err


def test_cli_llm_source_without_endpoint_exits_2(capsys):
    assert main(["genes", "describe", "ERBB2", "--source", "llm"]) == 2
    assert "--llm-url and --llm-model" in capsys.readouterr().err
