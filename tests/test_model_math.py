"""Unit tests that pin DKAN's mathematics (method.md §3, §5)."""

from __future__ import annotations

import pytest
import torch

from napari_dkan.model import DKAN, SlideContext, SpotInputs, adaptive_weights, preset, variant
from napari_dkan.model.blocks import Attention, CrossAttentionLayer
from napari_dkan.model.dkan import RegionBranch, SlideBranch
from napari_dkan.model.losses import dkan_loss, info_nce, info_nce_reference, supervised_loss

G, D, DP, DT = 12, 24, 20, 16


def _inputs(b=5, n=30, seed=0, masked=True):
    g = torch.Generator().manual_seed(seed)
    slides = []
    for _ in range(2):
        cells = torch.randperm(64, generator=g)[:n]
        slides.append(SlideContext(torch.randn(n, D, generator=g), torch.stack([cells // 8, cells % 8], 1)))
    mask = torch.zeros(b, 25, dtype=torch.bool)
    if masked:
        mask[0, :5] = True  # the top row of spot 0's region lies off the image
        mask[1, [0, 5, 10, 15, 20]] = True
    return SpotInputs(
        patch=torch.randn(b, 49, DP, generator=g), region=torch.randn(b, 25, D, generator=g),
        region_mask=mask, slide_index=torch.tensor([0, 1, 0, 1, 1][:b]),
        spot_index=torch.randint(0, n, (b,), generator=g), slides=slides, y=torch.rand(b, G, generator=g),
    )


def _model(kind="dkan", seed=0):
    torch.manual_seed(seed)
    return DKAN(variant(preset("tiny"), kind), n_genes=G, frozen_dim=D, token_dim=DP, text_dim=DT)


def test_faithful_cross_attention_equals_its_additive_form():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(32, 4, 2.0, 0.0).eval()
    q = torch.randn(3, 7, 32, requires_grad=True)
    kv = torch.randn(3, 1, 32)
    out = layer(q, kv)
    # one key: softmax ≡ 1, so attention = out_proj(v_proj(norm(kv))) added to every query
    a = layer.attn
    added = a.out(a.v(layer.norm_kv(kv)))
    h = q + added
    expected = h + layer.ffn(layer.norm_ffn(h))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    # …and queries/keys get no gradient
    assert a.v.weight.grad.abs().max() > 0
    for proj in (a.q, a.k):
        assert proj.weight.grad is None or proj.weight.grad.abs().max() == 0
    # the general attention path (two identical keys) gives the same result as one key
    twice = layer(q, kv.expand(-1, 2, -1))
    torch.testing.assert_close(twice, out, rtol=1e-5, atol=1e-5)


def test_masked_region_keys_get_zero_attention():
    torch.manual_seed(0)
    attn = Attention(16, 2, 0.0)
    x = torch.randn(2, 25, 16)
    mask = torch.zeros(2, 25, dtype=torch.bool)
    mask[0, 20:] = True
    w = attn.weights(x, x, key_mask=mask)
    assert w[0, :, :, 20:].abs().max() == 0
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 25))


def test_region_branch_ignores_content_of_masked_tiles():
    branch = RegionBranch(preset("tiny"), D).eval()
    with torch.no_grad():
        branch.rel_bias.normal_()  # a non-zero relative-position bias must not leak through the mask
    inp = _inputs()
    base = branch(inp.region, inp.region_mask)
    changed = inp.region.clone()
    changed[inp.region_mask] = 100.0
    out = branch(changed, inp.region_mask)
    keep = ~inp.region_mask
    torch.testing.assert_close(out[keep], base[keep])


def test_relative_position_bias_is_indexed_by_absolute_offsets():
    branch = RegionBranch(preset("tiny"), D)
    with torch.no_grad():
        branch.rel_bias.copy_(torch.arange(2 * 25, dtype=torch.float32).view(2, 5, 5))
    bias = branch.bias()[0, 0]  # head 0, 25×25
    # tile (0,0) → (1,2): |Δrow| 1, |Δcol| 2; symmetric, and the same for (3,3) → (4,1)
    assert bias[0, 7] == bias[7, 0] == 7.0
    assert bias[18, 21] == 7.0
    assert bias.shape == (25, 25) and torch.equal(bias, bias.T)


def test_slide_context_positional_encoding_is_invariant_to_spot_order():
    branch = SlideBranch(preset("tiny"), D).eval()
    with torch.no_grad():
        branch.peg.conv.weight.normal_()  # make the convolution matter
    ctx = _inputs().slides[0]
    perm = torch.randperm(ctx.features.shape[0], generator=torch.Generator().manual_seed(3))
    out = branch(ctx)
    out_perm = branch(SlideContext(ctx.features[perm], ctx.positions[perm]))
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-5)


def test_slide_tokens_follow_explicit_index_not_batch_order():
    net = _model().eval()
    inp = _inputs()
    tokens = net.slide_tokens(inp)
    for b in range(len(inp.slide_index)):
        full = net.slide_branch(inp.slides[int(inp.slide_index[b])])
        torch.testing.assert_close(tokens[b], full[inp.spot_index[b]])


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_info_nce_equals_plain_computation(chunk):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 10, 16, generator=g, requires_grad=True)
    b = torch.randn(6, 10, 16, generator=g, requires_grad=True)
    ref = info_nce_reference(a, b, tau=0.1)
    ga, gb = torch.autograd.grad(ref, (a, b))
    got = info_nce(a, b, tau=0.1, chunk=chunk)
    ca, cb = torch.autograd.grad(got, (a, b))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ca, ga, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cb, gb, rtol=1e-4, atol=1e-6)


def test_adaptive_weights_match_closed_form():
    w_sup, w_cont = adaptive_weights(torch.tensor(0.5), torch.tensor(4.0))
    assert w_sup == pytest.approx(4.0 / (4.0 + 1.5)) and w_cont == pytest.approx(1.5 / 5.5)
    assert w_sup + w_cont == pytest.approx(1.0)
    assert adaptive_weights(0.0, 3.0) == (1.0, 1.0)
    assert adaptive_weights(2.0, -1.0) == (1.0, 1.0)


def test_supervised_loss_by_hand_and_detach_option():
    y = torch.zeros(2, 3)
    pred = torch.ones(2, 3, requires_grad=True)
    aux = [torch.full((2, 3), 3.0)]
    loss = supervised_loss(pred, aux, y, alpha=0.3)
    assert float(loss.detach()) == pytest.approx(1 + 0.7 * 9 + 0.3 * 4)
    (g_attached,) = torch.autograd.grad(supervised_loss(pred, aux, y), pred)
    (g_detached,) = torch.autograd.grad(supervised_loss(pred, aux, y, detach_target=True), pred)
    assert not torch.allclose(g_attached, g_detached)  # the distillation term pulls ŷ when attached


def test_total_loss_combines_with_adaptive_weights():
    net = _model().train()
    inp = _inputs()
    text = torch.randn(G, DT)
    out = net(inp, text)
    terms = dkan_loss(out, inp.y, alpha=0.3, tau=0.1)
    s, c = terms.supervised, terms.contrastive
    assert terms.w_sup == pytest.approx(c / (c + 3 * s))
    assert float(terms.total.detach()) == pytest.approx(terms.w_sup * s + terms.w_cont * c, rel=1e-5)
    terms.total.backward()
    assert net.expr_encoder.inp.weight.grad.abs().sum() > 0  # the contrastive path trains


def test_triplex_mode_has_no_text_or_expression_parameters():
    net = _model("triplex")
    names = [n for n, _ in net.named_parameters()]
    assert not [n for n in names if n.split(".")[0] in {"text_proj", "text_encoder", "align_image",
                                                        "align_expr", "expr_encoder", "gene_head"}]
    inp = _inputs()
    out = net.train()(inp)  # no gene text needed
    assert out.pred.shape == (5, G) and len(out.aux) == 3 and out.e_ti is None
    dkan_names = {n.split(".")[0] for n, _ in _model("dkan").named_parameters()}
    assert {"text_encoder", "expr_encoder", "align_image", "align_expr"} <= dkan_names


def test_improved_alignment_attends_over_token_sets_and_excludes_masked_tiles():
    net = _model("dkan-improved").eval()
    inp = _inputs()
    text = torch.randn(G, DT)
    base = net(inp, text)
    changed = SpotInputs(**{**inp.__dict__, "region": inp.region.clone()})
    changed.region[inp.region_mask] = 50.0
    out = net(changed, text)
    torch.testing.assert_close(out.pred, base.pred)  # masked tiles reach no output
    torch.testing.assert_close(out.aux[2], base.aux[2])  # mean region token excludes them
    faithful = _model("dkan").eval()
    fb, fc = faithful(inp, text), faithful(changed, text)
    assert not torch.allclose(fb.aux[2], fc.aux[2])  # the reference's mean includes masked tiles


def test_paper_presets_have_paper_scale():
    from napari_dkan.model import PRESETS, PatchInput, count_parameters

    assert PRESETS["her2st"].region.depth == 4 and PRESETS["skin"].tau == 0.08
    assert PRESETS["stnet"].fusion.heads == 16
    net = DKAN(preset("her2st", patch_input=PatchInput.TOKENS), 250, 1024, token_dim=512, text_dim=1024)
    assert 200e6 < count_parameters(net) < 300e6


def test_contrastive_gene_subset_runs_the_expression_path_on_those_genes_only():
    net = _model().train()
    inp = _inputs()
    pick = torch.tensor([3, 0, 7])
    out = net(inp, torch.randn(G, DT), contrastive_genes=pick)
    assert out.e_te.shape == (5, 3, 32) and out.e_ti.shape == (5, G, 32)
    terms = dkan_loss(out, inp.y, alpha=0.3, tau=0.1)
    expected = info_nce(out.e_ti[:, pick], out.e_te, tau=0.1)
    assert terms.contrastive == pytest.approx(float(expected.detach()), rel=1e-5)


@pytest.mark.parametrize("kind", ["dkan", "dkan-improved"])
def test_query_by_text_equals_the_gene_added_to_the_panel_alone(kind):
    net = _model(kind).eval()
    inp = _inputs()
    panel, queries = torch.randn(G, DT), torch.randn(3, DT)
    got = net.predict_queries(inp, panel, queries)
    assert got.shape == (5, 3)
    for j in range(3):  # each query beside the panel, as if it were its 13th gene
        alone = net(inp, torch.cat([panel, queries[j : j + 1]])).pred[:, -1]
        torch.testing.assert_close(got[:, j], alone)
    # another query's text changes nothing for the others
    other = net.predict_queries(inp, panel, torch.stack([queries[0], torch.randn(DT) * 3, queries[2]]))
    torch.testing.assert_close(other[:, [0, 2]], got[:, [0, 2]])
    assert not torch.allclose(other[:, 1], got[:, 1])


def test_query_by_text_rejects_embeddings_of_another_width():
    net = _model("dkan-improved").eval()
    with pytest.raises(ValueError, match="the width of the panel's text embeddings"):
        net.predict_queries(_inputs(), torch.randn(G, DT), torch.randn(2, DT + 1))
    with pytest.raises(ValueError, match="without gene text"):
        _model("triplex").encode_queries(torch.randn(G, DT), torch.randn(2, DT))
