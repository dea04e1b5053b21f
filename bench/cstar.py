"""C* generation: the naive per-token loop (batch 1, fp32, the module itself) against ctxlm's
batched exact recurrence, on the offline default corpus and dimensions.

    python -m bench.cstar [--tokens 250000] [--naive-tokens 4000]

Uses the trained ContextBlock in data/context when `dvc repro` has made one (else a seeded random
one, said in the output). Prints throughput, the GEMM ceiling, exactness (fp32 and fp64, documents
cut to 512 tokens) and the fp32 drift along the longest documents."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import typer

from bench.common import batched_cstar, context_block, offline_tokens, workdir
from ctxlm.generation.cstar import cstar_into, naive_cstar, split_windows
from ctxlm.model import input_features

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def gemm_rate(m: int, k: int, n: int, repeats: int = 20) -> float:
    """Measured FLOP/s of an (m, k) x (k, n) fp32 product."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * m * k * n * repeats / (time.perf_counter() - start)


@app.command()
def main(tokens: int = 250_000, naive_tokens: int = 4_000) -> None:
    torch.manual_seed(0)
    train, _, embedding = offline_tokens(workdir(), tokens, 2)
    ids, offsets = np.asarray(train.ids), train.offsets
    block, weights = context_block(embedding)
    cfg = block.cfg
    windows = split_windows(train, cfg.num_input_tokens)
    x = input_features(embedding, windows)

    # baseline: the first naive_tokens tokens, one at a time
    doc_ends = offsets[1:]
    naive_docs = [(int(a), int(min(b, naive_tokens))) for a, b in zip(offsets[:-1], doc_ends) if a < naive_tokens]
    start = time.perf_counter()
    for a, b in naive_docs:
        naive_cstar(block, x[a:b])
    naive_rate = sum(b - a for a, b in naive_docs) / (time.perf_counter() - start)

    out = np.empty((len(ids), cfg.num_layers, cfg.context_dim), dtype=np.float32)
    start = time.perf_counter()
    cstar_into(block, embedding, windows, offsets, out)
    fast_rate = len(ids) / (time.perf_counter() - start)

    d_c, d_x, L = cfg.context_dim, cfg.input_dim, cfg.num_layers
    reads = sum(block.reads_token)
    flops_per_token = 2 * d_c * d_c * L + 2 * d_x * d_c * reads
    seconds_per_token = 2 * d_c * d_c * L / gemm_rate(256, d_c, d_c) + 2 * d_x * d_c * reads / gemm_rate(4096, d_x, d_c)
    ceiling = 1 / seconds_per_token

    # exactness on documents cut to 512 tokens
    cut = [windows[a : min(b, a + 512)] for a, b in zip(offsets[:-1], doc_ends)][:40]
    fp32_diff = max((f - naive_cstar(block, input_features(embedding, w))).abs().max().item() for f, w in zip(batched_cstar(block, embedding, cut), cut))
    block64, embedding64 = block.double(), embedding.double()
    fp64_diff = max((f - naive_cstar(block64, input_features(embedding64, w))).abs().max().item() for f, w in zip(batched_cstar(block64, embedding64, cut), cut))

    # fp32 drift along the longest documents, against the fp64 recurrence
    longest = np.argsort(-np.diff(offsets))[:3]
    drift = {}
    for d in longest:
        a, b = int(offsets[d]), int(offsets[d + 1])
        exact = naive_cstar(block64, input_features(embedding64, windows[a:b])).numpy()
        err = np.abs(out[a:b] - exact).max(axis=(1, 2))
        for upto in (512, 1000, 3000, 10_000):
            if upto <= b - a or upto == 10_000:
                drift[upto] = max(drift.get(upto, 0.0), float(err[:upto].max()))
    block.float()

    print(f"C* generation, {len(ids):,} tokens in {len(offsets) - 1} documents (longest {int(np.diff(offsets).max()):,}); "
          f"d_e {cfg.embed_dim}, d_c {d_c}, layers {L}, k {cfg.num_input_tokens}; weights: {weights}; threads {torch.get_num_threads()}")
    print(f"{'path':<34}{'tokens/s':>12}{'ratio':>10}")
    print(f"{'naive per-token loop (baseline)':<34}{naive_rate:>12,.0f}{1:>10.1f}")
    print(f"{'ctxlm batched exact':<34}{fast_rate:>12,.0f}{fast_rate / naive_rate:>10.1f}")
    print(f"{'GEMM ceiling at these shapes':<34}{ceiling:>12,.0f}{ceiling / naive_rate:>10.1f}")
    print(f"fast path = {fast_rate / ceiling:.0%} of the ceiling ({flops_per_token / 1e6:.2f} MFLOP per token)")
    print(f"max |fast - naive|, documents <= 512 tokens: fp32 {fp32_diff:.2e}, fp64 {fp64_diff:.2e}")
    print("fp32 drift from the fp64 recurrence, max |diff| up to token: " + ", ".join(f"{k}: {v:.2e}" for k, v in drift.items()))
    print(json.dumps({
        "naive_tokens_per_s": round(naive_rate), "fast_tokens_per_s": round(fast_rate), "speedup": round(fast_rate / naive_rate, 2),
        "ceiling_tokens_per_s": round(ceiling), "max_abs_diff": fp32_diff, "max_abs_diff_fp64": fp64_diff, "tokens": int(len(ids)),
        "fp32_drift_by_position": {str(k): v for k, v in drift.items()},
    }))


if __name__ == "__main__":
    app()
