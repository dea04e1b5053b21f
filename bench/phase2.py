"""Phase 2 against a plain PyTorch loop and against the machine's own matmul ceiling.

    python -m bench.phase2 [--steps 60] [--val-tokens 20000] [--precision auto] [--profile] [--chunks 128,512] [--baselines]

In one process, on the offline default corpus's C*:
- training: a plain loop (full logits, F.cross_entropy, a loss .item() every step) against ctxlm's
  train_token_model, the same model, batches and steps, in the precision that `--precision`
  resolves to here; validation: a plain full-logits evaluation against evaluate_split (fp32);
- the fraction of the ceiling each reaches: the head's matmul FLOPs per second (training: 4 V d_e
  per token, the logits and the gradient of the hidden state, E frozen; validation: 2 V d_e)
  divided by the rate of plain products of the same shapes in the same precision, measured here
  before and after the timed runs (the fastest of the timings is the ceiling);
- `--profile`: where a training step's time goes (torch.profiler, grouped by kind of work);
- `--chunks`: the chunked head's loss and gradients timed at each chunk size;
- `--baselines`: the LSTM's and the GPT-2-style model's training rate through the same loop (their
  ratio is against the plain ctxlm loop; their fraction counts the head's FLOPs only).
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
import typer

from bench.common import Timer, cstar_shards, context_block, offline_tokens, product_rate, workdir
from ctxlm.config import BaselinesParams, Phase2Params
from ctxlm.data.files import TokenSplit
from ctxlm.model import ModelConfig, TokenModel
from ctxlm.runtime import resolve_precision
from ctxlm.training.phase2 import SplitData, block_shuffled_order, evaluate_split, train_token_model

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
CPU = torch.device("cpu")
EVAL_BATCH = 4096  # evaluate_split's batch


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


@torch.no_grad()
def plain_evaluation(model: TokenModel, data: SplitData) -> float:
    """Mean cross-entropy over the split from full (EVAL_BATCH, V) logits (and each batch's
    accuracy, unused, since evaluate_split computes it too)."""
    model.eval()
    total = 0.0
    for start in range(0, len(data), EVAL_BATCH):
        contexts, windows, targets = data.batch(data.positions[start : start + EVAL_BATCH], CPU)
        logits = model(contexts, windows)
        total += F.cross_entropy(logits, targets, reduction="sum").item()
        (logits.argmax(dim=1) == targets).sum().item()
    return total / len(data)


def subset(data: SplitData, positions: int) -> SplitData:
    """`data` cut to its first `positions` examples."""
    part = copy.copy(data)
    part.positions = data.positions[:positions]
    return part


MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"}
CASTS = {"aten::to", "aten::_to_copy", "aten::copy_"}


def work_kind(event, vocab: int) -> str:
    """A profiled op's kind of work, from its name, its input shapes and the annotations above it."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return "optimizer (Adam)"
        parent = parent.cpu_parent
    vocab_wide = any(vocab in (shape or []) for shape in event.input_shapes or [])
    if event.name in MATMULS:
        return "head matmuls" if vocab_wide else "TokenBlock matmuls"
    if vocab_wide:
        return "head casts" if event.name in CASTS else "head V-wide passes (max, exp, sums, scaling)"
    if "norm" in event.name and "layer_norm" not in event.name:
        return "gradient clipping"
    return "other torch ops (TokenBlock LayerNorm/GELU, gathers, autograd)"


def profile_training(model: TokenModel, train: SplitData, tiny_val: SplitData, params: Phase2Params, steps: int) -> dict[str, float]:
    """Seconds of each kind of work over `steps` training steps, profiled; what no torch op accounts
    for (reading and decoding C*, numpy, Python) is the wall time left over."""
    from torch.profiler import ProfilerActivity, profile

    part = subset(train, steps * params.batch_size)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, Timer() as wall:
        train_token_model(model, part, tiny_val, params, CPU, torch.Generator().manual_seed(1))
    seconds: dict[str, float] = defaultdict(float)
    for event in prof.events():
        seconds[work_kind(event, model.cfg.vocab_size)] += event.self_cpu_time_total / 1e6
    seconds["outside torch ops (C* reading and decoding, numpy, Python)"] = wall.seconds - sum(seconds.values())
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def chunk_timings(model: TokenModel, train: SplitData, batch: int, precision: str, chunks: list[int], repeats: int = 5) -> dict[int, float]:
    """Seconds per batch of the chunked head's loss and backward, at each chunk size."""
    from ctxlm.head import head_loss  # imported here: the rest of the benchmark also runs on ctxlm before ctxlm.head existed

    contexts, windows, targets = train.batch(train.positions[:batch], CPU)
    with torch.no_grad():
        hidden = model.hidden(contexts, windows)
    weight, bias = model.head_parameters()
    seconds = {}
    for chunk in chunks:
        leaf = hidden.clone().requires_grad_()
        head_loss(leaf, weight, bias, targets, precision, chunk).backward()  # warm-up
        with Timer() as t:
            for _ in range(repeats):
                head_loss(leaf, weight, bias, targets, precision, chunk).backward()
        seconds[chunk] = t.seconds / repeats
    return seconds


def baseline_rates(train_tokens: TokenSplit, val_split: TokenSplit, embedding: torch.Tensor, cfg: ModelConfig, params: Phase2Params) -> dict[str, float]:
    """Training tokens/s of each neural baseline (default size, E frozen, tied) through phase 2's
    loop (train_baseline) over the bench's training tokens, one epoch; validation on 4 windows only."""
    from ctxlm.evaluation.baselines import KINDS, SequenceData, build_baseline, train_baseline

    seq_len = BaselinesParams().seq_len
    rates = {}
    for kind in KINDS:
        torch.manual_seed(0)
        model = build_baseline(kind, cfg, embedding, True, True, seq_len, BaselinesParams().transformer_layers)
        train = SequenceData(train_tokens, seq_len, stride=seq_len)
        val = SequenceData(val_split, seq_len, stride=seq_len // 2)
        val.starts, val.lengths, val.skips = val.starts[:4], val.lengths[:4], val.skips[:4]
        val.tokens = int((val.lengths - val.skips).sum())
        with Timer() as t:
            train_baseline(model, train, val, params, CPU, torch.Generator().manual_seed(0), None, f"baseline {kind}")
        rates[kind] = train.tokens / t.seconds
    return rates


@app.command()
def main(steps: int = 60, val_tokens: int = 20_000, batch: int = 512,
         precision: str = typer.Option("auto", help="auto | fp32 | bf16 (phase2.precision)"),
         profile: bool = typer.Option(False, help="profile the training steps (torch.profiler)"),
         chunks: str = typer.Option("", help="comma-separated chunk sizes to time the head at"),
         baselines: bool = typer.Option(False, help="also time the neural baselines' training (the same loop)")) -> None:
    precision = resolve_precision(precision, CPU)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    folder = workdir()
    train_tokens, val_split, embedding = offline_tokens(folder, steps * batch + 200, val_tokens)
    block, weights = context_block(embedding)
    cfg = block.cfg
    vocab, d_e = cfg.vocab_size, cfg.embed_dim
    train = SplitData(cstar_shards(folder, block, embedding, train_tokens, "train"), train_tokens, cfg.num_input_tokens)
    val = SplitData(cstar_shards(folder, block, embedding, val_split, "val"), val_split, cfg.num_input_tokens)
    train = subset(train, steps * batch)
    tiny_val = subset(val, batch)  # ctxlm validates every epoch: keep that out of the training timing
    params = Phase2Params(epochs=1, patience=1, batch_size=batch, precision=precision)
    order = block_shuffled_order(len(train), torch.Generator().manual_seed(0))  # the order ctxlm's seeded epoch follows

    ceilings = [(product_rate(batch, d_e, vocab, dtype, CPU, repeats=8), product_rate(batch, d_e, vocab, torch.float32, CPU, repeats=8, backward=False))]
    torch.manual_seed(0)
    baseline = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True)
    with Timer() as t_base:
        plain_loop(baseline, train, order, batch, params.lr, params.gradient_clip)
    torch.manual_seed(0)
    fast = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True)
    with Timer() as t_fast:
        result = train_token_model(fast, train, tiny_val, params, CPU, torch.Generator().manual_seed(0))
    fast.load_state_dict(result.best_state, strict=False)  # the frozen E is not part of it
    with Timer() as t_val_base:
        ppl_base = math.exp(plain_evaluation(baseline, val))
    with Timer() as t_val_fast:
        ppl_fast = math.exp(evaluate_split(fast, val, CPU)[0])
    ceilings.append((product_rate(batch, d_e, vocab, dtype, CPU, repeats=8), product_rate(batch, d_e, vocab, torch.float32, CPU, repeats=8, backward=False)))
    train_ceiling, val_ceiling = max(c[0] for c in ceilings), max(c[1] for c in ceilings)

    def row(name: str, tokens_per_s: float, base: float, flops_per_token: int, ceiling: float, ppl: float | None = None) -> dict:
        fraction = flops_per_token * tokens_per_s / ceiling
        print(f"{name:<44}{tokens_per_s:>10,.0f}{tokens_per_s / base:>8.2f}{fraction:>10.1%}" + ("" if ppl is None else f"{ppl:>10.1f}"))
        return {"tokens_per_s": round(tokens_per_s), "fraction_of_ceiling": round(fraction, 4)}

    print(f"\nphase 2, {steps} steps of {batch} tokens; d_e {d_e}, d_c {cfg.context_dim}, V {vocab}; ContextBlock {weights}; "
          f"threads {torch.get_num_threads()}; validation {len(val):,} tokens (fp32)")
    print(f"ceiling: plain {precision} products of the head's shapes ({batch}x{d_e} by {d_e}x{vocab}, {batch}x{vocab} by {vocab}x{d_e}) "
          f"{train_ceiling / 1e12:.3f} TFLOP/s; fp32 forward only {val_ceiling / 1e12:.3f} TFLOP/s (before/after: "
          + ", ".join(f"{a / 1e12:.3f}/{b / 1e12:.3f}" for a, b in ceilings) + ")")
    print(f"{'path':<44}{'tokens/s':>10}{'ratio':>8}{'ceiling':>10}{'val ppl':>10}")
    figures = {"precision": precision, "train_ceiling_tflops": round(train_ceiling / 1e12, 4), "val_ceiling_tflops": round(val_ceiling / 1e12, 4)}
    rate_base = len(train) / t_base.seconds
    figures["plain_train"] = row("training: plain fp32 loop (baseline)", rate_base, rate_base, 4 * vocab * d_e, train_ceiling, ppl_base)
    figures["ctxlm_train"] = row(f"training: ctxlm train_token_model ({precision})", len(train) / t_fast.seconds, rate_base, 4 * vocab * d_e, train_ceiling, ppl_fast)
    val_base = len(val) / t_val_base.seconds
    figures["plain_val"] = row("validation: full logits (baseline)", val_base, val_base, 2 * vocab * d_e, val_ceiling, ppl_base)
    figures["ctxlm_val"] = row("validation: ctxlm evaluate_split", len(val) / t_val_fast.seconds, val_base, 2 * vocab * d_e, val_ceiling, ppl_fast)
    figures |= {"val_ppl_baseline": ppl_base, "val_ppl_ctxlm": ppl_fast}

    if baselines:
        for kind, rate in baseline_rates(train_tokens, val_split, embedding, cfg, params).items():
            figures[f"{kind}_train"] = row(f"training: baseline {kind} (train_baseline)", rate, rate_base, 4 * vocab * d_e, train_ceiling)
    if chunks:
        sizes = [int(c) for c in chunks.split(",")]
        timings = chunk_timings(fast, train, batch, precision, sizes)
        print(f"\nthe head's loss and gradient, one batch of {batch} ({precision}), by chunk size:")
        for chunk, seconds in timings.items():
            print(f"  chunk {chunk:>5}: {seconds * 1e3:7.1f} ms  {4 * batch * vocab * d_e / seconds / train_ceiling:6.1%} of the ceiling")
        figures["chunk_ms"] = {str(c): round(s * 1e3, 1) for c, s in timings.items()}
    if profile:
        seconds = profile_training(fast, train, tiny_val, params, min(steps, 20))
        total = sum(seconds.values())
        print(f"\nwhere {min(steps, 20)} training steps' {total:.1f} s go (torch.profiler, self time):")
        for kind, s in seconds.items():
            print(f"  {kind:<62}{s:>7.2f} s {s / total:>7.1%}")
        figures["profile_seconds"] = {kind: round(s, 3) for kind, s in seconds.items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    app()
