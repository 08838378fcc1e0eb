"""Text encoders, pooling, the embedding cache and the public API (tiny BERT built locally)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_dkan.cli import main
from napari_dkan.io.errors import DataError
from napari_dkan.knowledge import (
    DEFAULT_ENCODER,
    GeneEmbeddings,
    embed_texts,
    gene_embeddings,
    gene_texts,
    resolve_encoder,
)
from napari_dkan.knowledge import embeddings as embeddings_module
from napari_dkan.knowledge.encoders import TextEncoder, pool
from tiny_bert import build_tiny_bert

GENES = ["ERBB2", "SEPW1", "MT-CO1", "AP000769.1", "KRT14"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("encoders") / "tiny-bert")


@pytest.fixture
def count_model_loads(monkeypatch) -> list[str]:
    """Record every encoder load made through the public API."""
    loads: list[str] = []

    class Counting(TextEncoder):
        def __init__(self, spec, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            loads.append(spec.name)
            super().__init__(spec, *args, **kwargs)

    monkeypatch.setattr(embeddings_module, "TextEncoder", Counting)
    return loads


def test_pooling_mean_and_last_token_respect_the_mask():
    import torch

    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert torch.equal(pool(hidden, right, "mean")[0], hidden[0, :3].mean(0))
    assert torch.equal(pool(hidden, right, "mean")[1], hidden[1, :2].mean(0))
    assert torch.equal(pool(hidden, right, "last-token"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])  # left padding: the last token is the end
    assert torch.equal(pool(hidden, left, "last-token"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    with pytest.raises(DataError, match="unknown pooling 'max'"):
        pool(hidden, right, "max")


def test_batched_encoding_equals_one_text_at_a_time(tiny_bert):
    texts = [t.text for t in gene_texts(GENES)]
    encoder = TextEncoder(resolve_encoder(str(tiny_bert)))
    for pooling in ("mean", "last-token"):
        batched = encoder.encode(texts, pooling, batch_size=3)  # padded, length-sorted batches
        single = np.concatenate([encoder.encode([t], pooling) for t in texts])
        np.testing.assert_allclose(batched, single, atol=1e-5)
    # the paper's last token is BERT's closing [SEP]: check against the model directly
    import torch

    tokens = encoder.tokenizer(texts[:1], return_tensors="pt", truncation=True, max_length=256)
    assert tokens["input_ids"][0, -1].item() == encoder.tokenizer.sep_token_id
    with torch.inference_mode():
        states = encoder.model(**tokens).last_hidden_state
    np.testing.assert_allclose(encoder.encode(texts[:1], "last-token")[0], states[0, -1].numpy(),
                               atol=1e-5)


def test_gene_embeddings_keep_order_and_describe_their_provenance(tiny_bert):
    emb = gene_embeddings(GENES, str(tiny_bert), disease="HER2-positive breast cancer")
    assert emb.genes == GENES and emb.matrix.shape == (5, 16) and emb.matrix.dtype == np.float32
    assert emb.pooling == "last-token"  # the paper's, for any encoder but MiniLM
    assert emb.texts[0].startswith("Gene symbol: ERBB2.")
    p = emb.provenance
    assert p["text_source"] == "offline" and p["disease"] == "HER2-positive breast cancer"
    assert p["missing"] == ["AP000769.1"] and p["renamed"] == {"SEPW1": "SELENOW", "MT-CO1": "COX1"}
    assert p["knowledge"]["entrez_gene_date"] and p["dim"] == 16
    json.dumps(p)  # must fit in a model config
    # row i is gene i: reversing the panel reverses the rows
    rev = gene_embeddings(GENES[::-1], str(tiny_bert), disease="HER2-positive breast cancer")
    np.testing.assert_allclose(rev.matrix, emb.matrix[::-1], atol=1e-5)


def test_second_call_loads_from_cache_without_loading_the_model(tiny_bert, count_model_loads):
    genes = ["ACTB", "GAPDH", "CD74"]
    first = gene_embeddings(genes, str(tiny_bert), pooling="mean")
    assert count_model_loads == [str(tiny_bert)] and not first.from_cache

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the model must not be loaded when the cache has the answer")

    embeddings_module.TextEncoder = refuse  # monkeypatch restores the counting class after
    second = gene_embeddings(genes, str(tiny_bert), pooling="mean")
    assert second.from_cache and np.array_equal(second.matrix, first.matrix)


def test_cache_key_covers_texts_pooling_and_weights(tiny_bert, tmp_path, count_model_loads):
    texts = ["alpha beta", "gamma"]
    embed_texts(texts, str(tiny_bert), "mean")
    embed_texts(texts, str(tiny_bert), "mean")
    assert len(count_model_loads) == 1
    embed_texts(texts, str(tiny_bert), "last-token")  # other pooling
    embed_texts(texts[::-1], str(tiny_bert), "mean")  # other texts (order matters)
    assert len(count_model_loads) == 3
    # same folder, new weights: a different identity, so no stale answer
    other = build_tiny_bert(tmp_path / "retrained", seed=1)
    before = resolve_encoder(str(other)).identity
    build_tiny_bert(other, seed=2)
    assert resolve_encoder(str(other)).identity != before
    a, _ = embed_texts(texts, str(other), "mean")
    assert len(count_model_loads) == 4


def test_corrupt_cache_file_is_recomputed(tiny_bert, count_model_loads):
    from napari_dkan.knowledge import embedding_cache

    texts = ["delta", "epsilon"]
    good, info = embed_texts(texts, str(tiny_bert), "mean")
    key = embedding_cache.cache_key(texts, info["encoder_identity"], "mean", 256)
    embedding_cache._path(key).write_bytes(b"garbage")
    again, info = embed_texts(texts, str(tiny_bert), "mean")
    assert not info["from_cache"] and np.allclose(again, good) and len(count_model_loads) == 2


def test_save_and_load_roundtrip(tiny_bert, tmp_path):
    emb = gene_embeddings(GENES, str(tiny_bert))
    path = emb.save(tmp_path / "emb.safetensors")
    back = GeneEmbeddings.load(path)
    assert back.genes == GENES and np.array_equal(back.matrix, emb.matrix)
    assert (back.encoder, back.pooling, back.texts) == (emb.encoder, emb.pooling, emb.texts)
    assert back.provenance == json.loads(json.dumps(emb.provenance))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a gene embedding file"):
        GeneEmbeddings.load(tmp_path / "junk.safetensors")


def test_user_texts_replace_the_composed_ones(tiny_bert, tmp_path):
    tsv = tmp_path / "texts.tsv"
    tsv.write_text("".join(f"{g}\tgene symbol: {g}. a text of the paper.\n" for g in GENES[::-1]))
    emb = gene_embeddings(GENES, str(tiny_bert), texts=tsv)
    assert emb.genes == GENES and emb.texts[0] == "gene symbol: ERBB2. a text of the paper."
    assert emb.provenance["text_source"] == "user" and emb.provenance["texts_file"] == "texts.tsv"
    tsv.write_text("ERBB2\tonly one\n")
    with pytest.raises(DataError, match="has no text for 4 of the 5 genes"):
        gene_embeddings(GENES, str(tiny_bert), texts=tsv)


def test_encoder_errors_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no config.json"):
        embed_texts(["a"], str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        embed_texts(["a"], str(tmp_path / "absent"))
    with pytest.raises(DataError, match="cannot load text encoder 'no-such-org/no-such-model'"):
        embed_texts(["a"], "no-such-org/no-such-model")  # HF_HUB_OFFLINE=1: never downloads
    with pytest.raises(DataError, match="unknown pooling"):
        embed_texts(["a"], DEFAULT_ENCODER, "cls")
    with pytest.raises(DataError, match="repeats gene"):
        gene_embeddings(["ERBB2", "ERBB2"])


def test_default_encoder_is_the_packaged_minilm_with_mean_pooling():
    spec = resolve_encoder()
    assert spec.name == "all-MiniLM-L6-v2" and spec.default_pooling == "mean"
    assert (Path(spec.location) / "model.safetensors").is_file()
    assert resolve_encoder("sentence-transformers/all-MiniLM-L6-v2").location == spec.location


# --- command line -------------------------------------------------------------------------


def test_cli_embed_with_a_local_encoder(tiny_bert, tmp_path, capsys):
    panel = tmp_path / "panel.txt"
    panel.write_text("\n".join(GENES) + "\n")
    out = tmp_path / "e.safetensors"
    args = ["genes", "embed", str(panel), "--encoder", str(tiny_bert), "--pooling", "mean",
            "-o", str(out), "--json"]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["n_genes"] == 5 and info["dim"] == 16 and info["pooling"] == "mean"
    assert info["genes"]["AP000769.1"]["status"] == "missing"
    assert info["genes"]["SEPW1"]["symbol"] == "SELENOW"
    back = GeneEmbeddings.load(out)
    assert back.genes == GENES and back.matrix.shape == (5, 16)


def test_cli_embed_bad_encoder_exits_2(tmp_path, capsys):
    panel = tmp_path / "panel.txt"
    panel.write_text("ERBB2\n")
    assert main(["genes", "embed", str(panel), "--encoder", str(tmp_path), "-o",
                 str(tmp_path / "e.safetensors")]) == 2
    assert "has no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_embed_her2st_with_the_real_default_encoder(panels_dir, tmp_path, capsys):
    """The acceptance run: 250 genes, MiniLM, no network; then again from the cache."""
    out = tmp_path / "emb.safetensors"
    panel = panels_dir / "her2st.txt"
    assert main(["genes", "embed", str(panel), "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (info["n_genes"], info["dim"], info["pooling"]) == (250, 384, "mean")
    emb = GeneEmbeddings.load(out)
    assert emb.genes == panel.read_text().split() and emb.matrix.shape == (250, 384)
    assert np.isfinite(emb.matrix).all() and np.abs(emb.matrix).sum(1).min() > 0
    # related genes sit closer than unrelated ones: a check that the texts carry meaning
    unit = emb.matrix / np.linalg.norm(emb.matrix, axis=1, keepdims=True)
    idx = {g: i for i, g in enumerate(emb.genes)}
    sim = unit @ unit.T
    assert sim[idx["KRT19"], idx["KRT18"]] > sim[idx["KRT19"], idx["IGKC"]]
    assert sim[idx["COL1A1"], idx["COL1A2"]] > sim[idx["COL1A1"], idx["IGHG3"]]
    assert main(["genes", "embed", str(panel), "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["from_cache"] is True
