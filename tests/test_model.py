import numpy as np
import pytest
import torch

from conftest import make_block, make_config
from ctxlm.generation.cstar import naive_cstar
from ctxlm.model import ContextBlock, ModelConfig, TokenBlock, TokenModel, input_features, token_block_widths, token_windows


def test_config_from_params_keeps_every_switch():
    from ctxlm.config import ModelParams

    params = ModelParams(context_dim=24, num_layers=3, num_input_tokens=2, token_input_all_layers=False, prev_contexts=2)
    cfg = ModelConfig.from_params(params, torch.zeros(50, 8))
    assert (cfg.vocab_size, cfg.embed_dim, cfg.context_dim, cfg.num_layers, cfg.num_input_tokens, cfg.token_input_all_layers, cfg.prev_contexts) == (
        50, 8, 24, 3, 2, False, 2)
    assert ModelConfig.from_metadata(cfg.to_metadata()) == cfg


def test_token_windows_pad_at_document_starts():
    ids = torch.tensor([5, 6, 7, 8, 9])
    starts = torch.tensor([True, False, False, True, False])
    assert token_windows(ids, starts, 3).tolist() == [
        [-1, -1, 5], [-1, 5, 6], [5, 6, 7], [-1, -1, 8], [-1, 8, 9]
    ]


def test_input_features_normalise_each_slot_and_zero_the_padding():
    embedding = torch.randn(10, 4) * 3 + 1
    x = input_features(embedding, torch.tensor([[-1, 2], [3, 4]]))
    assert x.shape == (2, 8)
    assert torch.all(x[0, :4] == 0)
    slot = x[1, 4:]
    assert slot.mean().abs() < 1e-5 and (slot.var(unbiased=False) - 1).abs() < 1e-3


@pytest.mark.parametrize("all_layers", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_shapes(all_layers, k):
    cfg = make_config(num_layers=3, num_input_tokens=k, token_input_all_layers=all_layers)
    block = ContextBlock(cfg)
    out = block(torch.zeros(5, cfg.context_dim), torch.randn(5, cfg.input_dim))
    assert out.shape == (5, 3, cfg.context_dim)
    # token input only at layer 1 when all_layers is off
    assert [lin.in_features for lin in block.linears] == [cfg.context_dim + cfg.input_dim] + [
        cfg.context_dim + (cfg.input_dim if all_layers else 0)
    ] * 2
    widths = token_block_widths(cfg)
    assert widths[0] == k * cfg.embed_dim and widths[-1] == cfg.embed_dim
    hidden = TokenBlock(cfg)(out, torch.randn(5, cfg.input_dim))
    assert hidden.shape == (5, cfg.embed_dim)


@pytest.mark.parametrize("tying", [True, False])
def test_head(tying):
    cfg = make_config()
    embedding = torch.randn(cfg.vocab_size, cfg.embed_dim)
    model = TokenModel(cfg, embedding, weight_tying=tying, freeze_embedding=True)
    h = torch.randn(3, cfg.embed_dim)
    assert model.logits(h).shape == (3, cfg.vocab_size)
    # an untied head starts as a copy of E; a tied head is E itself
    torch.testing.assert_close(model.logits(h), h @ embedding.T, rtol=1e-5, atol=1e-5)
    assert (model.head is None) == tying
    assert not model.embedding.requires_grad


def test_trained_embedding_gets_gradient_through_inputs_and_tied_head():
    cfg = make_config()
    model = TokenModel(cfg, torch.randn(cfg.vocab_size, cfg.embed_dim), weight_tying=True, freeze_embedding=False)
    logits = model(torch.randn(4, cfg.num_layers, cfg.context_dim), torch.tensor([[1], [2], [3], [4]]))
    logits.sum().backward()
    assert model.embedding.grad is not None and model.embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("k", [1, 2])
def test_causality(k):
    """Changing token j never changes C* or logits at positions < j (and does change position j)."""
    cfg = make_config(num_input_tokens=k)
    block = make_block(torch.float64, num_input_tokens=k)
    embedding = torch.randn(cfg.vocab_size, cfg.embed_dim, dtype=torch.float64)
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True).double()
    ids = torch.randint(0, cfg.vocab_size, (20,))
    starts = torch.zeros(20, dtype=torch.bool)
    starts[0] = True
    j = 11
    changed = ids.clone()
    changed[j] = (ids[j] + 1) % cfg.vocab_size

    def run(tokens):
        windows = token_windows(tokens, starts, k)
        cstar = naive_cstar(block, input_features(embedding, windows))
        return cstar, model(cstar, windows)

    c1, l1 = run(ids)
    c2, l2 = run(changed)
    assert torch.equal(c1[:j], c2[:j]) and torch.equal(l1[:j], l2[:j])
    assert not torch.allclose(c1[j], c2[j]) and not torch.allclose(l1[j], l2[j])


def test_previous_contexts_widen_each_token_block_layer_s_context_input():
    """p = 2 previous final-layer contexts: each layer's U_l reads (1 + 2) d_c context numbers, then h."""
    from dataclasses import replace

    cfg = replace(make_config(context_dim=12, num_layers=2, embed_dim=8), prev_contexts=2)
    block = TokenBlock(cfg)
    assert [linear.in_features for linear in block.linears] == [3 * 12 + 8, 3 * 12 + 8]
    assert ModelConfig.from_metadata(cfg.to_metadata()) == cfg
    assert "prev_contexts" not in replace(cfg, prev_contexts=0).to_metadata()  # files of models without it stay as they were


def test_each_token_block_layer_reads_its_own_c_star_layer_then_the_previous_final_layer_contexts():
    """L = 3, p = 2, k = 2: TokenBlock layer l reads row l of C* (not the first or the last for all),
    then rows L .. L + p - 1 (c_{i-1}^L, c_{i-2}^L), against a plain numpy reference of its formula
    h^l = LN(P_l h^{l-1} + GELU(U_l [c^l; c_{i-1}^L; c_{i-2}^L; h^{l-1}] + a_l)), h^0 = x."""
    from dataclasses import replace

    from scipy.special import erf

    cfg = replace(make_config(context_dim=6, num_layers=3, embed_dim=4, num_input_tokens=2), prev_contexts=2)
    block = TokenBlock(cfg).double()
    with torch.no_grad():  # non-trivial LayerNorm affine, so the reference must use it
        for norm in block.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    contexts = torch.randn(5, 3 + 2, 6, dtype=torch.float64)  # every row different: a wrong row changes h
    x = torch.randn(5, cfg.input_dim, dtype=torch.float64)
    numpy = lambda t: t.detach().numpy()  # noqa: E731
    c, h = numpy(contexts), numpy(x)
    previous = c[:, 3:].reshape(5, -1)  # c_{i-1}^L then c_{i-2}^L
    for l in range(3):
        u = np.concatenate([c[:, l], previous, h], axis=1) @ numpy(block.linears[l].weight).T + numpy(block.linears[l].bias)
        gelu = 0.5 * u * (1 + erf(u / np.sqrt(2)))
        residual = h if isinstance(block.residuals[l], torch.nn.Identity) else h @ numpy(block.residuals[l].weight).T
        z = residual + gelu
        norm = block.norms[l]
        h = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + norm.eps) * numpy(norm.weight) + numpy(norm.bias)
    assert h.shape == (5, cfg.embed_dim)
    np.testing.assert_allclose(numpy(block(contexts, x)), h, rtol=1e-10, atol=1e-12)
