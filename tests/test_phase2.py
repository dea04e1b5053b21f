import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import Dying, Killed, bf16_head_loss, make_block, make_token_split
from ctxlm.config import Params, Phase2Params
from ctxlm.data.files import TokenSplit, write_manifest
from ctxlm.data.shards import CstarReader
from ctxlm.generation.cstar import generate_split
from ctxlm.model import TokenModel
from ctxlm.runtime import configure_device
from ctxlm.training.checkpoint import Checkpoint
from ctxlm.training.phase2 import (SHUFFLE_BLOCK, SHUFFLE_ROWS, SplitData, block_shuffled_order, evaluate_split, previous_positions, train_token_model,
                                   training_loss)

CPU = torch.device("cpu")


def make_split(tmp_path, name, lengths, block, embedding, seed):
    tokens = make_token_split(tmp_path, lengths, vocab=embedding.shape[0], seed=seed, split=name)
    folder = tmp_path / name
    folder.mkdir()
    shards = generate_split(block, embedding, tokens, folder, shard_tokens=64, desc=name)
    write_manifest(folder, {"shards": shards})
    return SplitData(CstarReader(folder), tokens, block.cfg.num_input_tokens)


def setup(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    torch.manual_seed(0)
    block = make_block(torch.float32, num_input_tokens=2)
    embedding = torch.randn(50, block.cfg.embed_dim)
    train = make_split(tmp_path, "train", [40, 90, 25, 60], block, embedding, seed=1)
    val = make_split(tmp_path, "val", [30, 20], block, embedding, seed=2)
    return block.cfg, embedding, train, val


def test_split_data_targets_stay_inside_documents(tmp_path):
    _, _, train, _ = setup(tmp_path)
    assert len(train) == 215 - 4  # the last token of each document predicts nothing
    _, windows, targets = train.batch(train.positions[:5], torch.device("cpu"))
    assert windows.shape == (5, 2) and windows[0, 0] == -1


def test_evaluate_split_matches_a_direct_computation(tmp_path):
    cfg, embedding, _, val = setup(tmp_path)
    model = TokenModel(cfg, embedding, weight_tying=False, freeze_embedding=True)
    loss, acc = evaluate_split(model, val, torch.device("cpu"), batch=7)
    contexts, windows, targets = val.batch(val.positions, torch.device("cpu"))
    with torch.no_grad():
        logits = model(contexts, windows)
    assert math.isclose(loss, F.cross_entropy(logits, targets).item(), rel_tol=1e-5)
    assert acc == (logits.argmax(1) == targets).sum().item() / len(targets)


def train(tmp_path, seed, checkpoint=None, **overrides):
    cfg, embedding, train_data, val = setup(tmp_path)
    torch.manual_seed(seed)
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=False)
    params = Phase2Params(**{"epochs": 3, "patience": 3, "batch_size": 32, "lr": 0.01, "precision": "fp32", **overrides})
    return train_token_model(model, train_data, val, params, torch.device("cpu"), torch.Generator().manual_seed(seed), checkpoint)


@pytest.mark.parametrize("kill_at_step", [4, 7, 8, 16])  # steps 1-7 are epoch 1, 8-14 epoch 2
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, kill_at_step):
    monkeypatch.setenv("CTXLM_CHECKPOINT_SECONDS", "0")  # save after every step
    reference = train(tmp_path / "reference", seed=3)
    dying = Dying(training_loss, kill_at_step)
    monkeypatch.setattr("ctxlm.training.phase2.training_loss", dying)
    with pytest.raises(Killed):
        train(tmp_path / "killed", seed=3, checkpoint=Checkpoint("train_token", {"test": 1}, root=tmp_path / "checkpoints"))
    dying.calls, dying.kill_at = 0, None  # count the resumed run's steps
    resumed = train(tmp_path / "resumed", seed=3, checkpoint=Checkpoint("train_token", {"test": 1}, root=tmp_path / "checkpoints"))
    assert dying.calls == 3 * 7 - (kill_at_step - 1)  # it went on from the last step saved
    assert resumed.history == reference.history
    for key, value in reference.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key


def test_a_checkpoint_of_other_inputs_is_discarded(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXLM_CHECKPOINT_SECONDS", "0")
    train(tmp_path / "a", seed=3, checkpoint=Checkpoint("train_token", {"lr": 0.01}, root=tmp_path / "checkpoints"), epochs=1)
    assert Checkpoint("train_token", {"lr": 0.01}, root=tmp_path / "checkpoints").load() is not None
    other = Checkpoint("train_token", {"lr": 0.02}, root=tmp_path / "checkpoints")
    assert other.load() is None and not any(other.folder.iterdir())


def test_training_lowers_the_loss_and_is_reproducible(tmp_path):
    a = train(tmp_path / "a", seed=3)
    b = train(tmp_path / "b", seed=3)
    assert a.history == b.history
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]
    assert a.best_epoch == 1 + int(np.argmin([h["val_loss"] for h in a.history]))
    assert "embedding" in a.best_state  # trained here; a frozen E is left out (see trained_state)


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    result = train(tmp_path, seed=0, epochs=8, patience=1, lr=0.5)
    losses = [h["val_loss"] for h in result.history]
    assert result.epochs_run == result.best_epoch + 1 or result.epochs_run == 8
    assert losses[result.best_epoch - 1] == min(losses)


@pytest.mark.parametrize("tying", [True, False])
@pytest.mark.parametrize("freeze", [True, False])
def test_chunked_loss_matches_plain_cross_entropy(tmp_path, tying, freeze):
    """Loss and every gradient equal those of F.cross_entropy on the full logits (fp32)."""
    cfg, embedding, train_data, _ = setup(tmp_path)
    contexts, windows, targets = train_data.batch(train_data.positions[:37], torch.device("cpu"))
    grads = []
    for chunked in (False, True):
        torch.manual_seed(0)
        model = TokenModel(cfg, embedding, weight_tying=tying, freeze_embedding=freeze)
        if chunked:
            loss = training_loss(model, contexts, windows, targets, "fp32", torch.device("cpu"), chunk=8)
        else:
            loss = F.cross_entropy(model(contexts, windows), targets)
        loss.backward()
        grads.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}))
    (plain_loss, plain), (chunked_loss, chunked) = grads
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == chunked.keys() and ("embedding" in plain) == (not freeze)
    for key in plain:
        torch.testing.assert_close(chunked[key], plain[key], rtol=1e-4, atol=1e-6)


def test_precision_bf16_rounds_the_head_s_operands_and_products_to_bf16(tmp_path):
    """bf16 is what phase2.precision: bf16 asks for, not fp32 under another name: the loss equals a
    reference with bf16-rounded operands and products (fp64 sums), and is farther from the fp32 loss."""
    cfg, embedding, train_data, _ = setup(tmp_path)
    contexts, windows, targets = train_data.batch(train_data.positions[:64], torch.device("cpu"))
    model = TokenModel(cfg, embedding, weight_tying=False, freeze_embedding=True)  # untied: a head with a bias
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.hidden(contexts, windows)
    reference = bf16_head_loss(hidden.float(), *model.head_parameters(), targets)
    bf16 = training_loss(model, contexts, windows, targets, "bf16", torch.device("cpu")).item()
    fp32 = training_loss(model, contexts, windows, targets, "fp32", torch.device("cpu")).item()
    assert abs(bf16 - reference) < 3e-6 * reference < abs(fp32 - reference)  # measured: 1e-7 and 3.6e-5 (fp32 head on the same hidden)


def test_block_shuffled_order_is_a_seeded_permutation_read_group_by_group():
    n = 3 * SHUFFLE_ROWS + 1234
    order = block_shuffled_order(n, torch.Generator().manual_seed(5))
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(order, block_shuffled_order(n, torch.Generator().manual_seed(5)))
    assert not np.array_equal(order, block_shuffled_order(n, torch.Generator().manual_seed(6)))
    for a in range(0, n, SHUFFLE_ROWS):  # each group: whole blocks, few of them, in shuffled order
        blocks = np.unique(order[a : a + SHUFFLE_ROWS] // SHUFFLE_BLOCK)
        assert len(blocks) <= SHUFFLE_ROWS // SHUFFLE_BLOCK + 1
        assert not np.all(np.diff(order[a : a + SHUFFLE_ROWS]) == 1)


def test_batches_follow_the_order(tmp_path, monkeypatch):
    _, _, train, _ = setup(tmp_path)
    monkeypatch.setattr("ctxlm.training.phase2.LOAD_BYTES", 120 * train.cstar.row_bytes)  # 2 batches per read
    order = np.random.default_rng(0).permutation(len(train))
    batches = list(train.batches(order, 50, torch.device("cpu")))
    assert [len(t) for _, _, t in batches] == [50, 50, 50, 50, 11]
    contexts, windows, targets = train.batch(train.positions[order], torch.device("cpu"))
    assert torch.equal(torch.cat([c for c, _, _ in batches]), contexts)
    assert torch.equal(torch.cat([w for _, w, _ in batches]), windows)
    assert torch.equal(torch.cat([t for _, _, t in batches]), targets)


@pytest.mark.slow
def test_a_compiled_token_block_trains_to_the_same_weights_under_the_same_names(tmp_path):
    """runtime.compile (torch.compile in place, here through inductor on the CPU): two epochs give the
    uncompiled run's weights within fp32 rounding (measured 1.2e-7), and the checkpointed names stay."""
    runs = {}
    for compiled in (False, True):
        cfg, embedding, train_data, val = setup(tmp_path / str(compiled))
        torch.manual_seed(3)
        model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=False)
        configure_device(Params().runtime.model_copy(update={"compile": compiled}), torch.device("cpu"), [model.token_block])
        params = Phase2Params(epochs=2, patience=2, batch_size=32, lr=0.01, precision="fp32")
        runs[compiled] = train_token_model(model, train_data, val, params, torch.device("cpu"), torch.Generator().manual_seed(3))
    plain, compiled = runs[False].best_state, runs[True].best_state
    assert list(compiled) == list(plain)
    assert max((compiled[k] - plain[k]).abs().max().item() for k in plain) < 1e-5
    assert runs[True].history[-1]["val_loss"] == pytest.approx(runs[False].history[-1]["val_loss"], rel=1e-5)


def test_previous_positions_by_hand():
    """Documents 0-2 and 3-6; p = 2: -1 before a document's start."""
    got = previous_positions(np.array([0, 1, 2, 3, 4, 6]), np.array([0, 3, 7]), 2)
    assert got.tolist() == [[-1, -1], [0, -1], [1, 0], [-1, -1], [3, -1], [5, 4]]


@pytest.mark.parametrize("resident", [False, True], ids=["read from shards", "kept on the device"])
def test_split_data_with_previous_contexts_reads_the_right_rows(tmp_path, monkeypatch, resident):
    """prev_contexts 3: each example's C* rows, then the final layer of the 3 positions before it
    (zeros before its document), compared with rows read one by one; batched reads likewise."""
    _, _, plain, _ = setup(tmp_path)  # documents of 40, 90, 25 and 60 tokens
    data = SplitData(plain.cstar, TokenSplit(tmp_path, "train"), 2, prev_contexts=3)
    assert data.keep_on(torch.device("cpu"), budget=data.resident_bytes() if resident else data.resident_bytes() - 1) == resident
    starts = {0, 40, 130, 155}
    positions = np.array([0, 1, 2, 3, 39, 40, 41, 43, 131, 200])
    contexts, _, _ = data.batch(positions, torch.device("cpu"))
    L = plain.cstar.row_shape[0]
    for row, i in enumerate(positions):
        assert torch.equal(contexts[row, :L], plain.cstar.gather(np.array([i]))[0])
        first = max(s for s in starts if s <= i)
        for j in range(1, 4):
            expected = plain.cstar.gather(np.array([i - j]))[0, -1] if i - j >= first else torch.zeros(contexts.shape[-1])
            assert torch.equal(contexts[row, L + j - 1], expected), (i, j)
    monkeypatch.setattr("ctxlm.training.phase2.LOAD_BYTES", 20 * 4 * data.cstar.row_bytes)  # several reads
    order = np.random.default_rng(0).permutation(len(data))
    batched = torch.cat([c for c, _, _ in data.batches(order, 7, torch.device("cpu"))])
    assert torch.equal(batched, data.batch(data.positions[order], torch.device("cpu"))[0])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_a_split_kept_on_the_device_gives_the_batches_read_from_its_shards(tmp_path, dtype):
    """Same rows, same order, same values and dtypes: every batch of an epoch's order, previous
    contexts included, whichever way the C* is stored (documents of 3 and 1 tokens: previous
    contexts cut at once)."""
    torch.manual_seed(0)
    block = make_block(torch.float32, num_input_tokens=2, num_layers=2)
    embedding = torch.randn(50, block.cfg.embed_dim)
    tokens = make_token_split(tmp_path, [40, 3, 90, 1, 25], seed=1)
    folder = tmp_path / "c"
    folder.mkdir()
    write_manifest(folder, {"shards": generate_split(block, embedding, tokens, folder, shard_tokens=64, desc="c", dtype=dtype)})
    streamed, kept = (SplitData(CstarReader(folder), tokens, 2, prev_contexts=2) for _ in range(2))
    assert kept.keep_on(torch.device("cpu"))
    order = block_shuffled_order(len(kept), torch.Generator().manual_seed(5))
    sizes = [7, 50, 0, 1, len(order) - 58]  # an empty batch: a process's share of a last batch smaller than the processes
    for a, b in zip(streamed.batches(order, sizes, CPU), kept.batches(order, sizes, CPU), strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype and torch.equal(x, y)


def test_training_on_a_split_kept_on_the_device_equals_training_on_the_shards(tmp_path, monkeypatch, capsys):
    """The whole history and the best weights, bit for bit: the batches are the same. Each run says
    which way it reads its splits."""
    kept = train(tmp_path / "kept", seed=3)
    assert "the training split: 0.0 MiB, kept on cpu" in capsys.readouterr().out
    monkeypatch.setattr("ctxlm.training.phase2.resident_budget", lambda device: 0)  # no split fits: both are read from their shards
    streamed = train(tmp_path / "streamed", seed=3)
    assert "the training split: 0.0 MiB, read from its shards (over the 0 MiB kept whole on cpu)" in capsys.readouterr().out
    assert streamed.history == kept.history
    for key, value in kept.best_state.items():
        assert torch.equal(streamed.best_state[key], value), key
