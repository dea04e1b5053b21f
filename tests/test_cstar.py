import shutil

import numpy as np
import pytest
import torch

from conftest import Dying, Killed, make_block, make_token_split
from ctxlm.config import CstarParams
from ctxlm.training.checkpoint import Checkpoint
from bench.common import batched_cstar
from ctxlm.data.files import write_manifest
from ctxlm.data.shards import CstarReader
from ctxlm.errors import CtxlmError
from ctxlm.generation.cstar import cstar_into, generate_split, naive_cstar, shard_ranges, split_windows, write_cstar
from ctxlm.model import input_features, token_windows


def random_docs(block, lengths, dtype):
    """An embedding and each document's (T, k) id windows."""
    embedding = torch.randn(50, block.cfg.embed_dim, dtype=dtype)
    docs = []
    for n in lengths:
        starts = torch.zeros(n, dtype=torch.bool)
        starts[0] = True
        docs.append(token_windows(torch.randint(0, 50, (n,)), starts, block.cfg.num_input_tokens))
    return embedding, docs


def max_diff_to_naive(block, lengths, dtype) -> float:
    embedding, docs = random_docs(block, lengths, dtype)
    worst = 0.0
    for fast, doc in zip(batched_cstar(block, embedding, docs), docs):
        assert fast.shape == (doc.shape[0], block.cfg.num_layers, block.cfg.context_dim)
        worst = max(worst, (fast - naive_cstar(block, input_features(embedding, doc))).abs().max().item())
    return worst


@pytest.mark.parametrize("all_layers", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_batched_equals_naive_in_float64(all_layers, k):
    block = make_block(torch.float64, num_layers=3, num_input_tokens=k, token_input_all_layers=all_layers)
    assert max_diff_to_naive(block, (1, 17, 5, 40), torch.float64) < 1e-9


def test_long_documents_and_many_short_ones_together(monkeypatch):
    """The batch shrinks as documents end and the hoisting window adapts to the batch width."""
    monkeypatch.setattr("ctxlm.generation.cstar.HOISTED_ROWS", 50)
    block = make_block(torch.float64, num_layers=2, num_input_tokens=2)
    assert max_diff_to_naive(block, [3] * 30 + [200, 1, 77], torch.float64) < 1e-9


def test_shard_ranges_keep_documents_whole():
    offsets = np.array([0, 5, 30, 31, 60, 61])
    assert shard_ranges(offsets, 20) == [(0, 2), (2, 4), (4, 5)]
    assert shard_ranges(offsets, 1000) == [(0, 5)]
    assert shard_ranges(offsets, 30) == [(0, 2), (2, 4), (4, 5)]  # a shard closes as soon as it holds shard_tokens


def test_batched_equals_naive_in_float32_up_to_512_tokens():
    block = make_block(torch.float32, num_layers=1, context_dim=64)
    assert max_diff_to_naive(block, (512, 300, 3), torch.float32) < 1e-4


def test_context_resets_at_each_document_start():
    block = make_block(torch.float64)
    embedding, (doc, other) = random_docs(block, (6, 9), torch.float64)
    alone = batched_cstar(block, embedding, [doc])[0]
    beside = batched_cstar(block, embedding, [other, doc])[1]
    assert (alone - beside).abs().max() < 1e-12  # equal up to the batch's GEMM rounding


def test_generate_split_writes_shards_in_token_order(tmp_path):
    tokens = make_token_split(tmp_path, [7, 30, 1, 12, 25])
    block = make_block(torch.float32, num_input_tokens=2)
    embedding = torch.randn(50, block.cfg.embed_dim)
    out = tmp_path / "cstar"
    out.mkdir()
    shards = generate_split(block, embedding, tokens, out, shard_tokens=20, desc="test")
    write_manifest(out, {"shards": shards})
    reader = CstarReader(out)
    assert len(reader.files) > 1 and reader.shape == (75, 2, 12)
    x = input_features(embedding, split_windows(tokens, 2))
    for d in range(len(tokens.offsets) - 1):
        a, b = tokens.offsets[d], tokens.offsets[d + 1]
        expected = naive_cstar(block, x[a:b]).numpy()
        np.testing.assert_allclose(reader.slice(a, b), expected, atol=1e-5)
    index = np.array([74, 0, 33, 12, 12])
    np.testing.assert_array_equal(reader.gather(index), np.stack([reader.slice(i, i + 1)[0] for i in index]))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_shards_hold_the_rounded_fp32_rows(tmp_path, dtype):
    tokens = make_token_split(tmp_path, [7, 30, 1, 12, 25])
    block = make_block(torch.float32, num_input_tokens=1)
    embedding = torch.randn(50, block.cfg.embed_dim)
    readers = {}
    for stored in ("float32", dtype):
        out = tmp_path / stored
        out.mkdir()
        write_manifest(out, {"shards": generate_split(block, embedding, tokens, out, shard_tokens=20, desc="test", dtype=stored)})
        readers[stored] = CstarReader(out)
    full, half = readers["float32"].slice(0, 75), readers[dtype].slice(0, 75)
    assert half.dtype == torch.float32 and readers[dtype].row_bytes * 2 == readers["float32"].row_bytes
    torch.testing.assert_close(half, full.to(getattr(torch, dtype)).float(), rtol=0, atol=0)
    index = np.array([74, 3, 40, 3])
    torch.testing.assert_close(readers[dtype].gather(index), half[index], rtol=0, atol=0)


def test_write_cstar_resumes_after_the_last_complete_shard(tmp_path, monkeypatch):
    tokens = make_token_split(tmp_path, [7, 30, 1, 12, 25, 9, 14])
    block = make_block(torch.float32, num_input_tokens=2)
    embedding = torch.randn(50, block.cfg.embed_dim)
    params = CstarParams(shard_tokens=20)

    def write(name):
        return write_cstar(block, embedding, {"val": tokens}, tmp_path / name, params, Checkpoint("generate_cstar", {"t": 1}, root=tmp_path / f"checkpoints-{name}"))

    write("reference")
    shards = sorted(p.name for p in (tmp_path / "reference/val").glob("shard-*.npy"))
    assert len(shards) == 3 and not (tmp_path / "checkpoints-reference/generate_cstar").exists()
    dying = Dying(cstar_into, kill_at=3)
    monkeypatch.setattr("ctxlm.generation.cstar.cstar_into", dying)
    with pytest.raises(Killed):
        write("out")
    assert not (tmp_path / "out").exists()
    dying.calls, dying.kill_at = 0, None
    write("out")
    assert dying.calls == 1  # shards 0 and 1 were kept, only shard 2 was computed again
    for name in [*shards, "manifest.json"]:
        assert (tmp_path / "out/val" / name).read_bytes() == (tmp_path / "reference/val" / name).read_bytes()
    reader = CstarReader(tmp_path / "out/val")
    assert [s["rows"] for s in reader.meta["shards"]] == [37, 38, 23] and len(reader) == 98  # 7+30 | 1+12+25 | 9+14


def test_write_cstar_refuses_when_the_disk_is_short(tmp_path, monkeypatch):
    tokens = make_token_split(tmp_path, [300, 200])
    block = make_block(torch.float32)
    monkeypatch.setattr("ctxlm.generation.cstar.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CtxlmError, match=r"C\* \(500 tokens x 2 layer\(s\) x 12 x float16, and DVC's cache copy\) needs 46.9 KiB but .* has only 1000.0 B free"):
        write_cstar(block, torch.randn(50, 8), {"train": tokens}, tmp_path / "out", CstarParams(dtype="float16"), Checkpoint("generate_cstar", {}, root=tmp_path))
    assert not (tmp_path / "out").exists()


def test_non_finite_cstar_stops_and_names_the_stage_to_rerun(tmp_path):
    tokens = make_token_split(tmp_path, [30, 20])
    block = make_block(torch.float32)
    with torch.no_grad():
        block.linears[0].weight[3, 5] = float("inf")
    with pytest.raises(CtxlmError, match=r"C\* is not finite .*dvc repro --force train_context"):
        write_cstar(block, torch.randn(50, 8), {"train": tokens}, tmp_path / "out", CstarParams(), Checkpoint("generate_cstar", {}, root=tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fault", ["no reset", "off by one token"])
def test_generate_split_stops_when_its_output_disagrees_with_the_per_token_oracle(tmp_path, monkeypatch, fault):
    """Every shard's first and last documents are checked against naive_cstar as it is written: a generator
    that forgets the reset at a document start, or writes row i's C* at row i + 1, is caught."""
    import ctxlm.generation.cstar as cstar

    tokens = make_token_split(tmp_path, [7, 30, 12])
    block = make_block(torch.float32)
    embedding = torch.randn(50, block.cfg.embed_dim)
    real = cstar.cstar_into

    def faulty(block, embedding, windows, offsets, out, *args):
        if fault == "no reset":  # the whole shard as one document: the context runs on across starts
            offsets = np.array([offsets[0], offsets[-1]])
        real(block, embedding, windows, offsets, out, *args)
        if fault == "off by one token":
            out[1:] = out[:-1].copy()

    monkeypatch.setattr(cstar, "cstar_into", faulty)
    out = tmp_path / "cstar"
    out.mkdir()
    with pytest.raises(CtxlmError, match="disagrees with the per-token recurrence"):
        generate_split(block, embedding, tokens, out, shard_tokens=20, desc="C* train")
