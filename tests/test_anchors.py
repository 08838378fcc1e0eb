"""The simple anchors of the model tables: the six-colour-statistics encoder, and the gene
collapse diagnostic printed beside the paper's metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dkan.engine.collapse import collapse_scores, components_for, mean_abs_gene_correlation


def test_colour_stats_encoder_gives_mean_and_std_of_each_channel():
    from napari_dkan.features.encoders import load_encoder

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    tiles[1] = 17  # a flat tile: std 0
    enc = load_encoder("colour-stats", "cpu")
    pooled, tokens = enc.encode(torch.from_numpy(tiles), tokens=True)
    x = tiles.astype(np.float64) / 255.0
    expected = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    assert enc.width == 6 and pooled.shape == (3, 6)
    np.testing.assert_allclose(pooled.numpy(), expected, atol=1e-5)
    assert pooled[1, 3:].abs().max() < 1e-4
    # tokens: each 32×32 cell's first moments (mean of R, G, B) come first
    assert tokens.shape == (3, 49, 6)
    np.testing.assert_allclose(tokens[0, 0, :3].numpy(), x[0, :32, :32].mean(axis=(0, 1)), atol=1e-5)


def test_colour_stats_takes_no_weight_file(tmp_path):
    from napari_dkan.features.registry import EncoderError, list_encoders, resolve_encoder

    assert "colour-stats" in list_encoders()
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(EncoderError, match="takes no weight file"):
        resolve_encoder(f"colour-stats@{f}")


def test_collapse_numbers_by_construction():
    rng = np.random.default_rng(1)
    axis = rng.normal(size=(200, 1))
    # every gene a scaled copy of one axis: |r| = 1 between all pairs, one component
    copies = axis @ rng.uniform(0.5, 2.0, size=(1, 30)) * np.sign(rng.normal(size=30))
    assert mean_abs_gene_correlation(copies) == pytest.approx(1.0)
    assert components_for(copies) == 1
    # independent genes: |r| small, most components needed
    independent = rng.normal(size=(2000, 30))
    assert mean_abs_gene_correlation(independent) < 0.05
    assert components_for(independent) >= 25
    # a constant gene is left out of the pairs, not turned into NaN
    with_constant = np.column_stack([copies, np.full(200, 3.0)])
    assert mean_abs_gene_correlation(with_constant) == pytest.approx(1.0)
    # two equal-variance independent axes: exactly two components
    two = np.column_stack([np.repeat(rng.normal(size=(500, 1)), 5, 1), np.repeat(rng.normal(size=(500, 1)), 5, 1)])
    assert components_for(two) == 2
    scores = collapse_scores(copies, independent[:200])
    assert scores["GENE-R-PRED"] > scores["GENE-R-TRUE"] and scores["PCS90-PRED"] < scores["PCS90-TRUE"]
