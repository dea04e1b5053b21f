import math

import numpy as np
import pytest
import torch

from conftest import bf16_head_loss
from ctxlm.config import Phase2Params
from ctxlm.data.files import TokenSplit, save_tokens
from ctxlm.evaluation.baselines import IGNORE, KINDS, SequenceData, TransformerBody, build_baseline, evaluate_sequences, sequence_loss, train_baseline
from ctxlm.evaluation.metrics import count
from ctxlm.model import ModelConfig

CPU = torch.device("cpu")


def scored_positions(data: SequenceData) -> tuple[list[int], list[int]]:
    """Every scored position (index of the input token) and the context it had (tokens before it in its window)."""
    positions, context = [], []
    for w in range(len(data)):
        _, targets = data.batch(np.array([w]), CPU)
        for column in np.flatnonzero(targets[0].numpy() != IGNORE):
            positions.append(int(data.starts[w]) + int(column))
            context.append(int(column))
    return positions, context


@pytest.mark.parametrize("seq_len, stride", [(8, 8), (8, 4), (8, 3), (5, 1)])
def test_windows_score_every_position_with_a_next_token_exactly_once(tmp_path, seq_len, stride):
    lengths = [1, 2, 8, 9, 17, 30]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.arange(offsets[-1]) % 50
    save_tokens(tmp_path, "val", ids, offsets)
    tokens = TokenSplit(tmp_path, "val")
    data = SequenceData(tokens, seq_len, stride)
    positions, context = scored_positions(data)
    assert sorted(positions) == np.flatnonzero(tokens.has_next()).tolist()  # ctxlm's positions, each once
    assert data.tokens == len(positions)
    doc_of = np.searchsorted(offsets, np.arange(offsets[-1]), side="right") - 1
    for w in range(len(data)):  # no window reads across a document boundary
        a, n = int(data.starts[w]), int(data.lengths[w])
        assert doc_of[a] == doc_of[a + n]  # its last target is in the same document
    start_of_doc = offsets[doc_of[np.array(positions)]]
    # each position sees at least seq_len - stride tokens before it, or its whole document so far
    assert all(c >= min(seq_len - stride, p - s) for c, p, s in zip(context, positions, start_of_doc))


@pytest.mark.parametrize("blocks", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_a_baseline_body_has_about_ctxlm_s_trained_parameters(kind, blocks):
    d_c, d_e = 256 // blocks, 96
    cfg = ModelConfig(vocab_size=100, embed_dim=d_e, context_dim=d_c, num_layers=1, context_blocks=blocks)
    # by hand, one layer each: a ContextBlock's W [d_c x (d_c + d_e)], b and LayerNorm; the TokenBlock's U reads all blocks' C*
    target = blocks * (d_c * (d_c + d_e) + 3 * d_c) + (blocks * d_c + d_e) * d_e + 3 * d_e
    model = build_baseline(kind, cfg, torch.randn(100, 96), weight_tying=True, freeze_embedding=True, seq_len=16, transformer_layers=1)
    assert count(model.body, trainable_only=True) + count(model.norm) == pytest.approx(target, rel=0.05)
    assert count(model, trainable_only=True) == count(model.body, trainable_only=True) + count(model.norm)  # E frozen, tied


def test_untied_and_trained_embedding_are_trainable_like_ctxlm_s():
    cfg = ModelConfig(vocab_size=100, embed_dim=32, context_dim=32)
    embedding = torch.randn(100, 32)
    tied = build_baseline("lstm", cfg, embedding, weight_tying=True, freeze_embedding=True, seq_len=16, transformer_layers=1)
    untied = build_baseline("lstm", cfg, embedding, weight_tying=False, freeze_embedding=False, seq_len=16, transformer_layers=1)
    assert count(untied, trainable_only=True) - count(tied, trainable_only=True) == 100 * 32 + (100 * 32 + 100)
    assert torch.equal(untied.head.weight, embedding)  # the untied head starts as a copy of E


def tiny_language(tmp_path, split: str, seed: int, docs: int) -> TokenSplit:
    """Documents of phrases drawn from 12 fixed phrases over 40 words: predictable from the last tokens."""
    rng = np.random.default_rng(0)
    phrases = [rng.integers(0, 40, rng.integers(3, 7)) for _ in range(12)]
    rng = np.random.default_rng(seed)
    documents = [np.concatenate([phrases[j] for j in rng.integers(0, 12, 12)]) for _ in range(docs)]
    save_tokens(tmp_path, split, np.concatenate(documents), np.concatenate([[0], np.cumsum([len(d) for d in documents])]))
    return TokenSplit(tmp_path, split)


@pytest.mark.parametrize("kind", KINDS)
def test_each_baseline_learns_and_beats_a_unigram_model(tmp_path, kind):
    torch.manual_seed(0)
    train_tokens, val_tokens = tiny_language(tmp_path, "train", 1, 60), tiny_language(tmp_path, "val", 2, 10)
    cfg = ModelConfig(vocab_size=40, embed_dim=32, context_dim=48)
    model = build_baseline(kind, cfg, torch.randn(40, 32), weight_tying=True, freeze_embedding=True, seq_len=16, transformer_layers=1)
    train, val = SequenceData(train_tokens, 16, 16), SequenceData(val_tokens, 16, 8)
    params = Phase2Params(epochs=6, patience=6, batch_size=64, lr=0.01, gradient_clip=1.0, precision="fp32")
    result = train_baseline(model, train, val, params, CPU, torch.Generator().manual_seed(0), None, kind)
    model.load_state_dict(result.best_state, strict=False)
    val_loss, val_acc = evaluate_sequences(model, val, CPU)

    counts = np.bincount(np.asarray(train_tokens.ids), minlength=40) + 1.0
    targets = np.asarray(val_tokens.ids)[1:][val_tokens.has_next()[:-1]]
    unigram_loss = float(-np.log(counts[targets] / counts.sum()).mean())
    assert val_loss < 0.7 * unigram_loss and val_acc > 0.3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert math.isclose(val_loss, result.history[result.best_epoch - 1]["val_loss"], rel_tol=1e-5)


def test_the_lstm_runs_under_bf16_autocast_on_any_cpu():
    """oneDNN has no bf16 LSTM without AVX-512 ('could not create a primitive descriptor'): the body
    runs its recurrence in fp32, so phase2.precision: bf16 works on every CPU and gives the fp32 result."""
    from ctxlm.evaluation.baselines import LSTMBody

    torch.manual_seed(0)
    body = LSTMBody(16, 8)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = body(x)
    with torch.autocast("cpu", enabled=False):
        recurrence = body.lstm(x)[0]
    torch.testing.assert_close(out.float(), body.out(recurrence), rtol=1e-2, atol=1e-2)  # only the projection in bf16


def test_precision_bf16_rounds_the_baseline_head_s_operands_and_products_to_bf16():
    """As for ctxlm's TokenModel: the head under precision bf16 is computed from bf16 operands."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=100, embed_dim=32, context_dim=32)
    model = build_baseline("transformer", cfg, torch.randn(100, 32), weight_tying=False, freeze_embedding=True, seq_len=8, transformer_layers=1)
    inputs = torch.randint(0, 100, (4, 8))
    targets = torch.randint(0, 100, (4, 8))
    targets[0, :3] = IGNORE
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.hidden(inputs)
    scored = targets != IGNORE
    reference = bf16_head_loss(hidden[scored].float(), *model.head_parameters(), targets[scored])
    (bf16, n), (fp32, _) = (sequence_loss(model, inputs, targets, precision, CPU) for precision in ("bf16", "fp32"))
    assert n == 29 and abs(bf16.item() - reference) < 3e-6 * reference < abs(fp32.item() - reference)


def test_the_transformer_baseline_has_no_dropout():
    """Training mode computes what evaluation mode does (GPT2Config's dropouts default to 0.1; ours are 0)."""
    torch.manual_seed(0)
    body = TransformerBody(embed_dim=16, width=32, layers=2, seq_len=8)
    x = torch.randn(3, 8, 16)
    trained = body.train()(x)
    torch.testing.assert_close(trained, body.eval()(x), rtol=0, atol=0)


def test_precision_auto_resolves_to_one_the_device_runs_natively(monkeypatch):
    from ctxlm.runtime import resolve_precision

    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    for avx512_bf16, amx, expected in ((False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert resolve_precision("auto", CPU) == expected


def test_the_baseline_train_loss_is_measured_on_seeded_windows_after_the_epoch(tmp_path):
    from ctxlm.evaluation.baselines import window_sample

    rng = np.random.default_rng(0)
    for split, lengths in (("train", [60, 45, 80]), ("val", [30, 25])):
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        save_tokens(tmp_path, split, rng.integers(0, 40, offsets[-1]), offsets)
    train, val = (SequenceData(TokenSplit(tmp_path, s), 8, stride) for s, stride in (("train", 4), ("val", 8)))
    cfg = ModelConfig(vocab_size=40, embed_dim=16, context_dim=16)
    torch.manual_seed(0)
    model = build_baseline("lstm", cfg, torch.randn(40, 16), weight_tying=True, freeze_embedding=True, seq_len=8, transformer_layers=1)
    params = Phase2Params(epochs=1, patience=1, batch_size=16, precision="fp32")
    result = train_baseline(model, train, val, params, CPU, torch.Generator().manual_seed(0), None, "lstm", sample_seed=3)
    sample = window_sample(train, val.tokens, 3)
    scored = (train.lengths[sample] - train.skips[sample]).sum()
    assert val.tokens <= scored < val.tokens + 8 and len(sample) < len(train)  # just past val's size: at most one window more
    loss, acc = evaluate_sequences(model, train, CPU, sample=sample)
    assert result.history[0]["train_loss"] == loss and result.history[0]["train_acc"] == acc
    assert loss != evaluate_sequences(model, train, CPU)[0]  # a sample, not the whole split


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weight_tying, freeze_embedding", [(True, True), (False, False)])
def test_a_saved_baseline_loads_back_with_the_same_outputs(tmp_path, kind, weight_tying, freeze_embedding):
    """What baseline_neural saves (its trained state, without a frozen E) rebuilds the same model."""
    from ctxlm.data.files import write_manifest
    from ctxlm.evaluation.baselines import BASELINE_WEIGHTS, baseline_metadata, load_baseline
    from ctxlm.training.phase2 import trained_state
    from ctxlm.weights import save_weights

    cfg = ModelConfig(vocab_size=50, embed_dim=16, context_dim=16)
    embedding = torch.randn(50, 16)
    model = build_baseline(kind, cfg, embedding, weight_tying=weight_tying, freeze_embedding=freeze_embedding, seq_len=8, transformer_layers=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # a frozen E stays the one in the tokens folder
                p.add_(torch.randn_like(p) * 0.1)  # not the initial state
    save_weights(tmp_path, BASELINE_WEIGHTS, trained_state(model), baseline_metadata(model))
    write_manifest(tmp_path, {"config": baseline_metadata(model)})
    loaded = load_baseline(tmp_path, embedding if freeze_embedding else torch.zeros(50, 16))
    ids = torch.randint(0, 50, (2, 8))
    assert loaded.cfg == model.cfg and (loaded.head is None) == weight_tying
    assert torch.equal(loaded.hidden(ids), model.eval().hidden(ids))
