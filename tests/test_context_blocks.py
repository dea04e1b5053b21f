"""Several ContextBlocks (model.context_blocks): each trained in phase 1 on its own contiguous part of
the training documents with its own seed, their C* side by side."""

import numpy as np
import pytest
import torch

from conftest import Dying, Killed, make_config, make_token_split
from ctxlm.config import Phase1Params
from ctxlm.data.files import write_manifest
from ctxlm.data.shards import CstarReader
from ctxlm.errors import CtxlmError
from ctxlm.generation.cstar import cstar_into, generate_split, naive_cstar
from ctxlm.generation.inference import CtxlmStepper
from ctxlm.model import ContextBlock, ContextBlocks, ModelConfig, TokenModel, input_features, token_windows
from ctxlm.training.phase1 import block_seed, stream_parts, train_context_block, train_context_blocks
from ctxlm.weights import CONTEXT_WEIGHTS, context_state, load_context_blocks, save_weights


def two_blocks(dtype=torch.float32, **overrides) -> ContextBlocks:
    blocks = ContextBlocks(make_config(context_blocks=2, **overrides)).to(dtype).eval()
    with torch.no_grad():
        for block in blocks:
            for norm in block.norms:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.2, 0.2)
    return blocks


def windows_of(lengths, k, vocab=50):
    """(N, k) id windows of random documents of `lengths`, and their offsets."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    starts = torch.zeros(int(offsets[-1]), dtype=torch.bool)
    starts[offsets[:-1]] = True
    return token_windows(torch.randint(0, vocab, (int(offsets[-1]),)), starts, k), offsets


def test_two_blocks_c_star_is_each_single_block_s_c_star_side_by_side():
    blocks = two_blocks(num_layers=2, num_input_tokens=2)
    embedding = torch.randn(50, 8)
    windows, offsets = windows_of([9, 30, 1, 14], k=2)
    both = np.zeros((len(windows), 2, 24), dtype=np.float32)
    cstar_into(blocks, embedding, windows, offsets, both)
    for j, block in enumerate(blocks):
        alone = np.zeros((len(windows), 2, 12), dtype=np.float32)
        cstar_into(block, embedding, windows, offsets, alone)
        assert np.array_equal(both[:, :, 12 * j : 12 * (j + 1)], alone)  # exact: the same computation
    first = torch.from_numpy(both[:9]).double()  # the first document against the per-token recurrence of the pair
    oracle = naive_cstar(blocks.double(), input_features(embedding.double(), windows[:9]))
    assert (first - oracle).abs().max() < 1e-5


def test_two_blocks_shards_are_each_block_s_shards_side_by_side(tmp_path):
    blocks = two_blocks(num_input_tokens=1)
    tokens = make_token_split(tmp_path, [7, 30, 1, 12, 25])
    embedding = torch.randn(50, 8)

    def shards(block, name):
        (tmp_path / name).mkdir()
        write_manifest(tmp_path / name, {"shards": generate_split(block, embedding, tokens, tmp_path / name, shard_tokens=20, desc=name)})
        return CstarReader(tmp_path / name).gather(np.arange(len(tokens))).numpy()

    both = shards(blocks, "both")
    assert both.shape == (len(tokens), 2, 24)
    for j, block in enumerate(blocks):
        assert np.array_equal(both[:, :, 12 * j : 12 * (j + 1)], shards(block, f"block{j}"))


def test_stream_parts_by_hand():
    offsets = np.array([0, 5, 8, 16, 18, 25, 29, 35, 36])  # 8 documents, 36 tokens
    assert stream_parts(offsets, 1) == [(0, 8)]
    assert stream_parts(offsets, 2) == [(0, 4), (4, 8)]  # a boundary at 18, the half: 18 tokens each
    assert stream_parts(offsets, 3) == [(0, 2), (2, 5), (5, 8)]  # 12: 8 and 16 as near (the earlier); 24: 25 is nearer than 18
    assert stream_parts(np.array([0, 1, 30, 31]), 2) == [(0, 1), (1, 3)]  # 15.5: 1 is nearer than 30
    with pytest.raises(CtxlmError, match="model.context_blocks is 3, but the 2 training documents"):
        stream_parts(np.array([0, 5, 9]), 3)


def test_block_seeds():
    assert block_seed(7, 0) == 7  # a one-block model is seeded as before
    assert len({block_seed(s, j) for s in range(4) for j in range(4)}) == 16  # no seed repeats another run's


def phase1_params(**overrides) -> Phase1Params:
    return Phase1Params(**{"max_iterations": 3, "batch_tokens": 25, "max_tokens": 1000, **overrides})


def reference_block(cfg: ModelConfig, embedding, tokens, first_doc: int, end_doc: int, seed: int, params: Phase1Params) -> ContextBlock:
    """A block trained by hand on documents first_doc .. end_doc - 1 alone, its generator and init seeded with `seed`."""
    a, b = int(tokens.offsets[first_doc]), int(tokens.offsets[end_doc])
    ids = torch.from_numpy(np.asarray(tokens.ids[a:b], dtype=np.int64))
    starts = torch.from_numpy(tokens.doc_starts()[a:b])
    torch.manual_seed(seed)
    block = ContextBlock(cfg)
    train_context_block(block, input_features(embedding, token_windows(ids, starts, cfg.num_input_tokens)), starts, params,
                        torch.Generator().manual_seed(seed))
    return block


def test_each_block_trains_on_its_own_part_of_the_stream_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokens = make_token_split(tmp_path, [20, 13, 17, 30, 9, 11, 25, 15])  # 140 tokens: parts at docs 0-3 | 4-7
    embedding = torch.randn(50, 8)
    cfg = make_config(context_blocks=2, num_layers=1)
    trained = train_context_blocks(cfg, embedding, tokens, phase1_params(), 3, torch.device("cpu"), {})
    assert (trained.tokens, trained.documents) == ([80, 60], [4, 4])
    for j, (first, end) in enumerate([(0, 4), (4, 8)]):
        expected = reference_block(make_config(num_layers=1), embedding, tokens, first, end, block_seed(3, j), phase1_params())
        assert all(torch.equal(a, b) for a, b in zip(trained.blocks[j].state_dict().values(), expected.state_dict().values()))
    assert not torch.equal(trained.blocks[0].linears[0].weight, trained.blocks[1].linears[0].weight)


def test_one_block_trains_on_the_whole_stream_with_the_run_s_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokens = make_token_split(tmp_path, [20, 13, 17, 30])
    embedding = torch.randn(50, 8)
    trained = train_context_blocks(make_config(num_layers=1), embedding, tokens, phase1_params(), 5, torch.device("cpu"), {})
    expected = reference_block(make_config(num_layers=1), embedding, tokens, 0, 4, 5, phase1_params())
    assert all(torch.equal(a, b) for a, b in zip(trained.blocks[0].state_dict().values(), expected.state_dict().values()))


def test_a_run_killed_in_the_second_block_keeps_the_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tokens = make_token_split(tmp_path, [20, 13, 17, 30, 9, 11, 25, 15])
    embedding = torch.randn(50, 8)
    cfg = make_config(context_blocks=2, num_layers=1)
    whole = train_context_blocks(cfg, embedding, tokens, phase1_params(), 0, torch.device("cpu"), {})
    for checkpoint in whole.checkpoints:
        checkpoint.clear()
    dying = Dying(train_context_block, kill_at=2)
    monkeypatch.setattr("ctxlm.training.phase1.train_context_block", dying)
    with pytest.raises(Killed):
        train_context_blocks(cfg, embedding, tokens, phase1_params(), 0, torch.device("cpu"), {})
    counting = Dying(train_context_block, kill_at=None)
    monkeypatch.setattr("ctxlm.training.phase1.train_context_block", counting)
    resumed = train_context_blocks(cfg, embedding, tokens, phase1_params(), 0, torch.device("cpu"), {})
    assert counting.calls == 1  # block 0 came from its checkpoint
    assert all(torch.equal(a, b) for a, b in zip(resumed.blocks.state_dict().values(), whole.blocks.state_dict().values()))
    assert [r.history for r in resumed.results] == [r.history for r in whole.results]


def test_two_blocks_weights_round_trip_and_name_their_count(tmp_path):
    blocks = two_blocks()
    save_weights(tmp_path, CONTEXT_WEIGHTS, context_state(blocks), blocks.cfg.to_metadata())
    write_manifest(tmp_path, {})
    loaded, cfg = load_context_blocks(tmp_path)
    assert cfg == blocks.cfg and cfg.to_metadata()["context_blocks"] == "2" and cfg.cstar_dim == 24
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), blocks.state_dict().values()))
    assert "context_blocks" not in make_config().to_metadata()  # a one-block model's files are as they were


def test_the_stepper_over_two_blocks_gives_the_batch_path_s_logits():
    blocks = two_blocks(num_input_tokens=2)
    cfg = ModelConfig(**{**blocks.cfg.__dict__, "prev_contexts": 1})
    model = TokenModel(cfg, torch.randn(50, 8), weight_tying=True, freeze_embedding=True).eval()
    ids = torch.randint(0, 50, (15,))
    windows, offsets = token_windows(ids, torch.arange(15) == 0, 2), np.array([0, 15])
    cstar = np.zeros((15, 2, 24), dtype=np.float32)
    cstar_into(blocks, model.embedding.detach(), windows, offsets, cstar)
    c = torch.from_numpy(cstar)
    previous = torch.cat([torch.zeros(1, 24), c[:-1, -1]])[:, None]  # c_{i-1} of the final layer, zero at the start
    with torch.no_grad():
        expected = model(torch.cat([c, previous], dim=1), windows)
    stepper, state = CtxlmStepper(blocks, model), None
    state = stepper.initial()
    for i, token in enumerate(ids.tolist()):
        state, logits = stepper.read(state, token)
        assert torch.allclose(logits, expected[i], atol=1e-4)
