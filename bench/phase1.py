"""Phase 1: a plain fp32 loop of the same fixed-point algorithm against ctxlm's
train_context_block (fp32 and bf16), same tokens, same iterations, same seed.

    python -m bench.phase1 [--tokens 30000] [--iterations 40]
"""

from __future__ import annotations

import json
import math

import torch
import typer

from bench.common import Timer, offline_tokens, workdir
from ctxlm.config import Phase1Params
from ctxlm.generation.cstar import split_windows
from ctxlm.model import ContextBlock, ModelConfig, input_features
from ctxlm.training.phase1 import oacd_loss, train_context_block

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def plain_loop(block: ContextBlock, x: torch.Tensor, starts: torch.Tensor, p: Phase1Params, generator: torch.Generator) -> float:
    """The phase-1 algorithm of docs/design.md written the obvious way; returns the last convergence rate."""
    n = x.shape[0]
    contexts = torch.randn(n, block.cfg.context_dim, generator=generator) * p.init_std
    optimizer = torch.optim.Adam(block.parameters(), lr=p.lr)
    bounds = [round(i * n / math.ceil(n / p.batch_tokens)) for i in range(math.ceil(n / p.batch_tokens) + 1)]
    convergence = 0.0
    for _ in range(p.max_iterations):
        prev = torch.cat([torch.zeros(1, contexts.shape[1]), contexts[:-1]])
        prev[starts] = 0.0
        prev = prev + torch.randn(prev.shape, generator=generator) * p.context_noise * (~starts).unsqueeze(1).float()
        optimizer.zero_grad()
        new = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            out = block(prev[a:b], x[a:b])[:, -1]
            (oacd_loss(out, p.centroid_weight) * (b - a) / n).backward()
            new.append(out.detach())
        torch.nn.utils.clip_grad_norm_(block.parameters(), p.gradient_clip)
        optimizer.step()
        new = torch.cat(new)
        convergence = ((new - contexts).square().mean(1) < p.convergence_threshold).float().mean().item()
        contexts = new
    return convergence


@app.command()
def main(tokens: int = 30_000, iterations: int = 40) -> None:
    train, _, embedding = offline_tokens(workdir(), tokens, 2)
    cfg = ModelConfig(vocab_size=embedding.shape[0], embed_dim=embedding.shape[1])
    x = input_features(embedding, split_windows(train, 1))
    starts = torch.from_numpy(train.doc_starts())
    rows = []
    for name, precision in (("plain fp32 loop (baseline)", None), ("ctxlm fp32", "fp32"), ("ctxlm bf16", "bf16")):
        torch.manual_seed(0)
        block = ContextBlock(cfg)
        params = Phase1Params(max_iterations=iterations, early_stop_convergence=1.0, precision=precision or "fp32")
        generator = torch.Generator().manual_seed(0)
        with Timer() as t:
            if precision is None:
                convergence = plain_loop(block, x, starts, params, generator)
            else:
                convergence = train_context_block(block, x, starts, params, generator).convergence_rate
        rows.append((name, len(train) * iterations / t.seconds, convergence))
    base = rows[0][1]
    print(f"\nphase 1, {len(train):,} tokens, {iterations} iterations; d_e {cfg.embed_dim}, d_c {cfg.context_dim}; threads {torch.get_num_threads()}")
    print(f"{'path':<30}{'tokens/s':>12}{'ratio':>8}{'convergence':>13}")
    for name, rate, convergence in rows:
        print(f"{name:<30}{rate:>12,.0f}{rate / base:>8.2f}{convergence:>13.1%}")
    best = max(rows[1:], key=lambda r: r[1])
    print(json.dumps({"baseline_tokens_per_s": round(base), "fast_tokens_per_s": round(best[1]), "speedup": round(best[1] / base, 2),
                      "convergence_baseline": rows[0][2], "convergence_fast": best[2], "fast_path": best[0]}))


if __name__ == "__main__":
    app()
