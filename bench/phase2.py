"""Phase 2: a plain fp32 PyTorch loop (batch 512, a loss .item() every step) against ctxlm's
train_token_model, same model, same batches, same number of steps.

    python -m bench.phase2 [--steps 60] [--val-tokens 20000]
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import torch.nn.functional as F
import typer

from bench.common import Timer, cstar_shards, context_block, offline_tokens, workdir
from ctxlm.config import Phase2Params
from ctxlm.model import TokenModel
from ctxlm.phase2 import SplitData, block_shuffled_order, evaluate_split, train_token_model

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
CPU = torch.device("cpu")


def plain_loop(model: TokenModel, data: SplitData, order: np.ndarray, batch: int, lr: float, clip: float) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    model.train()
    for start in range(0, len(order), batch):
        contexts, windows, targets = data.batch(data.positions[order[start : start + batch]], CPU)
        loss = F.cross_entropy(model(contexts, windows), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, clip)
        optimizer.step()
        loss.item()


@app.command()
def main(steps: int = 60, val_tokens: int = 20_000, batch: int = 512) -> None:
    folder = workdir()
    train_tokens, val_split, embedding = offline_tokens(folder, steps * batch + 200, val_tokens)
    block, weights = context_block(embedding)
    k = block.cfg.num_input_tokens
    train = SplitData(cstar_shards(folder, block, embedding, train_tokens, "train"), train_tokens, k)
    val = SplitData(cstar_shards(folder, block, embedding, val_split, "val"), val_split, k)
    tiny_val = SplitData(val.cstar, val_split, k)
    tiny_val.positions = val.positions[:batch]  # ctxlm validates every epoch: keep that out of the timing
    train.positions = train.positions[: steps * batch]
    params = Phase2Params(epochs=1, patience=1, batch_size=batch, precision="bf16")
    order = block_shuffled_order(len(train), torch.Generator().manual_seed(0))  # the order ctxlm's seeded epoch follows

    torch.manual_seed(0)
    baseline = TokenModel(block.cfg, embedding, weight_tying=True, freeze_embedding=True)
    with Timer() as t_base:
        plain_loop(baseline, train, order, batch, params.lr, params.gradient_clip)
    torch.manual_seed(0)
    fast = TokenModel(block.cfg, embedding, weight_tying=True, freeze_embedding=True)
    with Timer() as t_fast:
        result = train_token_model(fast, train, tiny_val, params, CPU, torch.Generator().manual_seed(0))
    fast.load_state_dict(result.best_state, strict=False)  # the frozen E is not part of it

    ppl_base = math.exp(evaluate_split(baseline, val, CPU)[0])
    ppl_fast = math.exp(evaluate_split(fast, val, CPU)[0])
    rate_base, rate_fast = len(train) / t_base.seconds, len(train) / t_fast.seconds
    print(f"\nphase 2, {steps} steps of {batch} tokens; d_e {block.cfg.embed_dim}, d_c {block.cfg.context_dim}, V {block.cfg.vocab_size}; "
          f"ContextBlock {weights}; threads {torch.get_num_threads()}; validation {len(val):,} tokens (fp32)")
    print(f"{'path':<36}{'tokens/s':>10}{'ratio':>8}{'val ppl':>10}")
    print(f"{'plain fp32 loop (baseline)':<36}{rate_base:>10,.0f}{1:>8.2f}{ppl_base:>10.1f}")
    print(f"{'ctxlm train_token_model (bf16)':<36}{rate_fast:>10,.0f}{rate_fast / rate_base:>8.2f}{ppl_fast:>10.1f}")
    print(json.dumps({"baseline_tokens_per_s": round(rate_base), "fast_tokens_per_s": round(rate_fast),
                      "speedup": round(rate_fast / rate_base, 2), "val_ppl_baseline": ppl_base, "val_ppl_fast": ppl_fast}))


if __name__ == "__main__":
    app()
