import numpy as np
import pytest
import torch

from conftest import make_block, make_token_split
from ctxlm.cstar import batched_cstar, generate_split, naive_cstar, split_windows
from ctxlm.model import input_features
from ctxlm.shards import CstarReader, CstarWriter, write_manifest


@pytest.mark.parametrize("all_layers", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_batched_equals_naive_in_float64(all_layers, k):
    block = make_block(torch.float64, num_layers=3, num_input_tokens=k, token_input_all_layers=all_layers)
    docs = [torch.randn(n, block.cfg.input_dim, dtype=torch.float64) for n in (1, 17, 5, 40)]
    for fast, doc in zip(batched_cstar(block, docs), docs):
        assert fast.shape == (doc.shape[0], 3, block.cfg.context_dim)
        assert (fast - naive_cstar(block, doc)).abs().max() < 1e-9


def test_batched_equals_naive_in_float32_up_to_512_tokens():
    block = make_block(torch.float32, num_layers=1, context_dim=64)
    docs = [torch.randn(n, block.cfg.input_dim) for n in (512, 300, 3)]
    for fast, doc in zip(batched_cstar(block, docs), docs):
        assert (fast - naive_cstar(block, doc)).abs().max() < 1e-4


def test_context_resets_at_each_document_start():
    block = make_block(torch.float64)
    doc = torch.randn(6, block.cfg.input_dim, dtype=torch.float64)
    other = torch.randn(9, block.cfg.input_dim, dtype=torch.float64)
    alone = batched_cstar(block, [doc])[0]
    beside = batched_cstar(block, [other, doc])[1]
    assert (alone - beside).abs().max() < 1e-12  # equal up to the batch's GEMM rounding


def test_generate_split_writes_shards_in_token_order(tmp_path):
    tokens = make_token_split(tmp_path, [7, 30, 1, 12, 25])
    block = make_block(torch.float32, num_input_tokens=2)
    embedding = torch.randn(50, block.cfg.embed_dim)
    out = tmp_path / "cstar"
    out.mkdir()
    writer = CstarWriter(out, shard_tokens=20)
    generate_split(block, embedding, tokens, writer, batch_documents=2, desc="test")
    write_manifest(out, {"shards": writer.shards})
    reader = CstarReader(out)
    assert len(reader.shards) > 1 and reader.shape == (75, 2, 12)
    x = input_features(embedding, split_windows(tokens, 2))
    for d in range(tokens.num_docs):
        a, b = tokens.offsets[d], tokens.offsets[d + 1]
        expected = naive_cstar(block, x[a:b]).numpy()
        np.testing.assert_allclose(reader.slice(a, b), expected, atol=1e-5)
    index = np.array([74, 0, 33, 12, 12])
    np.testing.assert_array_equal(reader.gather(index), np.stack([reader.slice(i, i + 1)[0] for i in index]))
