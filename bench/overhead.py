"""The host's cost per step: the real loops of phase 1, phase 2, C* and the LSTM baseline at tiny
shapes (vocabulary 1,024, embedding and context widths 32, the default batch sizes), where the
arithmetic is nearly free. What is left is what a step costs whatever the device: Python, torch's
dispatch, building batches, the optimizer, the bookkeeping. On a GPU the arithmetic shrinks and
this does not, so it bounds the steps per second there.

    python -m bench.overhead [--tokens 60000] [--iterations 20] [--cstar-steps 512] [--cstar-repeats 10] [--threads 1]

On the CPU, in a temporary folder: random token ids (documents of 200-3,000 tokens), a random
embedding, a seeded random ContextBlock, and C* written by generate_split. Then:
- phase 1: train_context_block over `--tokens` tokens for `--iterations` iterations; a mini-batch's
  cost is an iteration's divided by its mini-batches (phase1.batch_tokens each);
- phase 2: train_token_model for one epoch over the C* of those tokens, batches of phase2.batch_size;
- C*: cstar_into over 256 documents of `--cstar-steps` tokens each (all 256 running at every step),
  `--cstar-repeats` times; a position step's cost is a call's divided by its steps;
- LSTM: train_baseline for one epoch, phase2.batch_size // baselines.seq_len sequences a step.
The training loops run unchanged, with a checkpoint in the temporary folder as in the stages (not
the stages' DVCLive curves): torch's global optimizer hook stamps the time of every step, and a
step's cost is the time between two stamps. Each figure is the median over its repeats (steps,
iterations, calls) after WARMUP. torch runs on one thread unless `--threads` says otherwise: at
these shapes a second thread adds only its wake-ups, and on a loaded 2-core machine those dominate
(a phase-2 step's loss, backward and Adam step in fp32 took 2.9 ms on one thread, 141 ms on two).
Beside each step, its arithmetic alone: the same tensor work on one prepared batch (forward, loss
and backward; for C*, one step's products and norms), with no data building, optimizer or loop
bookkeeping, median of ARITHMETIC_REPEATS. What the step costs beyond it is the host's share; on a
CPU the arithmetic of these shapes is not negligible (a 512 x 1,024 exponential alone is ~0.1 ms),
so a step cannot fall below it however little the host adds.
The last line is one JSON object of the figures.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
import typer
from torch.optim.optimizer import register_optimizer_step_post_hook

from bench.common import cstar_shards, random_documents, workdir
from ctxlm.config import BaselinesParams, Phase1Params, Phase2Params
from ctxlm.data.files import TokenSplit, save_tokens
from ctxlm.evaluation.baselines import SequenceData, build_baseline, sequence_loss, train_baseline
from ctxlm.generation.cstar import cstar_into, document_windows, split_windows
from ctxlm.model import ContextBlock, ModelConfig, TokenModel, input_features
from ctxlm.runtime import seed_everything
from ctxlm.training.checkpoint import Checkpoint
from ctxlm.training.phase1 import oacd_loss, train_context_block
from ctxlm.training.phase2 import SplitData, train_token_model, training_loss, with_device_precision

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
CPU = torch.device("cpu")
VOCAB, WIDTH = 1024, 32
VAL_TOKENS = 2000  # validation after the epoch: not timed
CSTAR_DOCUMENTS = 256
WARMUP = 2  # steps (iterations, calls) not counted
ARITHMETIC_REPEATS = 30


class StepClock:
    """The time of every optimizer step taken inside it (torch's global post-step hook)."""

    def __enter__(self):
        self.stamps = []
        self.handle = register_optimizer_step_post_hook(lambda *_: self.stamps.append(time.perf_counter()))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def ms(self) -> tuple[float, int]:
        """(median ms between consecutive steps after WARMUP, how many such intervals)."""
        intervals = np.diff(self.stamps)[WARMUP:]
        return float(np.median(intervals)) * 1e3, len(intervals)


def median_ms(work, repeats: int = ARITHMETIC_REPEATS) -> float:
    """Median ms of `work()` over `repeats` calls after WARMUP."""
    seconds = []
    for _ in range(WARMUP + repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[WARMUP:])) * 1e3


def phase1_arithmetic_ms(tokens: TokenSplit, embedding: torch.Tensor, cfg: ModelConfig) -> float:
    """One mini-batch's forward, OACD loss and backward, on prepared inputs."""
    rows = slice(0, min(len(tokens), Phase1Params().batch_tokens))
    x = input_features(embedding, split_windows(tokens, cfg.num_input_tokens))[rows]
    block = ContextBlock(cfg)
    prev = torch.randn(len(x), cfg.context_dim, generator=torch.Generator().manual_seed(0))
    return median_ms(lambda: oacd_loss(block(prev, x)[:, -1], Phase1Params().centroid_weight).backward())


def phase2_arithmetic_ms(train: SplitData, embedding: torch.Tensor, cfg: ModelConfig, params: Phase2Params) -> float:
    """One batch's forward, loss through the head and backward, on a batch already built."""
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True)
    contexts, windows, targets = train.batch(train.positions[: params.batch_size], CPU)
    return median_ms(lambda: training_loss(model, contexts, windows, targets, params.precision, CPU).backward())


def lstm_arithmetic_ms(train: TokenSplit, embedding: torch.Tensor, cfg: ModelConfig, params: Phase2Params) -> float:
    """One step's sequences: forward, loss through the head and backward, on a batch already built."""
    baselines = BaselinesParams()
    model = build_baseline("lstm", cfg, embedding, True, True, baselines.seq_len, baselines.transformer_layers)
    inputs, targets = SequenceData(train, baselines.seq_len, stride=baselines.seq_len).batch(np.arange(max(1, params.batch_size // baselines.seq_len)), CPU)
    return median_ms(lambda: sequence_loss(model, inputs, targets, params.precision, CPU)[0].backward())


def cstar_arithmetic_ms(block: ContextBlock) -> float:
    """One position step's products and norms for CSTAR_DOCUMENTS documents (each layer: the
    recurrent product added to the hoisted input, GELU, residual, LayerNorm; the layers stacked)."""
    g = torch.Generator().manual_seed(0)
    d_c = block.cfg.context_dim
    c, hoisted = torch.randn(CSTAR_DOCUMENTS, d_c, generator=g), torch.randn(CSTAR_DOCUMENTS, d_c, generator=g)
    recurrent = [block.split_weights(layer)[0].T.contiguous() for layer in range(block.cfg.num_layers)]

    def step():
        layers, context = [], c
        for w_c, norm in zip(recurrent, block.norms):
            context = F.layer_norm(F.gelu(torch.addmm(hoisted, context, w_c)).add_(context), (d_c,), norm.weight, norm.bias, norm.eps)
            layers.append(context)
        torch.stack(layers, dim=1)

    with torch.no_grad():
        return median_ms(step, 20 * ARITHMETIC_REPEATS)


def phase1_ms(tokens: TokenSplit, embedding: torch.Tensor, cfg: ModelConfig, iterations: int, folder) -> tuple[float, int, int]:
    """(ms per mini-batch, mini-batches per iteration, iterations timed)."""
    params = Phase1Params(max_iterations=iterations, early_stop_convergence=1.0)
    generator = seed_everything(0)
    block = ContextBlock(cfg)
    x = input_features(embedding, split_windows(tokens, cfg.num_input_tokens))
    with StepClock() as clock:
        train_context_block(block, x, torch.from_numpy(tokens.doc_starts()), params, generator, Checkpoint("train_context", {}, folder))
    batches = math.ceil(len(tokens) / params.batch_tokens)
    ms, repeats = clock.ms()
    return ms / batches, batches, repeats


def phase2_ms(train: SplitData, val: SplitData, embedding: torch.Tensor, cfg: ModelConfig, params: Phase2Params, folder) -> tuple[float, int]:
    generator = seed_everything(0)
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True)
    with StepClock() as clock:
        train_token_model(model, train, val, params, CPU, generator, Checkpoint("train_token", {}, folder))
    return clock.ms()


def lstm_ms(train: TokenSplit, val: TokenSplit, embedding: torch.Tensor, cfg: ModelConfig, params: Phase2Params, folder) -> tuple[float, int]:
    baselines = BaselinesParams()
    generator = seed_everything(0)
    model = build_baseline("lstm", cfg, embedding, True, True, baselines.seq_len, baselines.transformer_layers)
    train_data = SequenceData(train, baselines.seq_len, stride=baselines.seq_len)
    val_data = SequenceData(val, baselines.seq_len, stride=baselines.seq_len // 2)
    with StepClock() as clock:
        train_baseline(model, train_data, val_data, params, CPU, generator, Checkpoint("baseline_lstm", {}, folder), "baseline lstm")
    return clock.ms()


def cstar_ms(block: ContextBlock, embedding: torch.Tensor, steps: int, repeats: int) -> float:
    """Median ms of one step of the recurrence for CSTAR_DOCUMENTS documents of `steps` tokens."""
    ids, _ = random_documents(CSTAR_DOCUMENTS * steps, np.random.default_rng(1), VOCAB)
    offsets = np.arange(CSTAR_DOCUMENTS + 1) * steps
    windows = document_windows(ids, offsets, block.cfg.num_input_tokens)
    out = np.empty((len(ids), block.cfg.num_layers, block.cfg.cstar_dim), dtype=np.float32)
    seconds = []
    for _ in range(WARMUP + repeats):
        start = time.perf_counter()
        cstar_into(block, embedding, windows, offsets, out)
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds[WARMUP:])) * 1e3 / steps


@app.command()
def main(tokens: int = typer.Option(60_000, help="training tokens: phase 1's mini-batches, phase 2's and the LSTM's steps"),
         iterations: int = typer.Option(20, help="phase 1 iterations"),
         cstar_steps: int = typer.Option(512, help="tokens of each C* document: the steps of a call"),
         cstar_repeats: int = typer.Option(10, help="timed C* calls"),
         threads: int = typer.Option(1, help="torch's threads")) -> None:
    torch.set_num_threads(threads)
    folder = workdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", tokens), ("val", VAL_TOKENS)):
        save_tokens(folder, split, *random_documents(n, rng, VOCAB))
    train_tokens, val_tokens = TokenSplit(folder, "train"), TokenSplit(folder, "val")
    embedding = torch.randn(VOCAB, WIDTH, generator=torch.Generator().manual_seed(0))
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=WIDTH, context_dim=WIDTH)
    torch.manual_seed(0)
    block = ContextBlock(cfg).eval().requires_grad_(False)
    train = SplitData(cstar_shards(folder, block, embedding, train_tokens, "train"), train_tokens, cfg.num_input_tokens)
    val = SplitData(cstar_shards(folder, block, embedding, val_tokens, "val"), val_tokens, cfg.num_input_tokens)
    params = with_device_precision(Phase2Params(epochs=1, patience=1), CPU)
    checkpoints = folder / "checkpoints"

    phase1, batches, phase1_repeats = phase1_ms(train_tokens, embedding, cfg, iterations, checkpoints)
    phase2, phase2_repeats = phase2_ms(train, val, embedding, cfg, params, checkpoints)
    cstar = cstar_ms(block, embedding, cstar_steps, cstar_repeats)
    lstm, lstm_repeats = lstm_ms(train_tokens, val_tokens, embedding, cfg, params, checkpoints)
    arithmetic = {"phase1": phase1_arithmetic_ms(train_tokens, embedding, cfg), "phase2": phase2_arithmetic_ms(train, embedding, cfg, params),
                  "cstar": cstar_arithmetic_ms(block), "lstm": lstm_arithmetic_ms(train_tokens, embedding, cfg, params)}
    shutil.rmtree(folder, ignore_errors=True)

    batch_tokens, seq_len = Phase1Params().batch_tokens, BaselinesParams().seq_len
    sequences = max(1, params.batch_size // seq_len)
    print(f"\nhost cost per step at tiny shapes: V {VOCAB:,}, d_e {WIDTH}, d_c {WIDTH}; CPU, threads {torch.get_num_threads()}, "
          f"phase 2 {params.precision}; median over the repeats after {WARMUP} warm-up ones")
    print(f"{'loop':<10}{'a step':<58}{'repeats':>8}{'ms':>9}{'arithmetic ms':>15}{'host share':>12}")
    rows = (("phase 1", f"a mini-batch of up to {batch_tokens:,} tokens ({batches} an iteration)", phase1_repeats, phase1, arithmetic["phase1"]),
            ("phase 2", f"a batch of {params.batch_size} positions", phase2_repeats, phase2, arithmetic["phase2"]),
            ("C*", f"one recurrence step of {CSTAR_DOCUMENTS} documents", cstar_repeats, cstar, arithmetic["cstar"]),
            ("LSTM", f"{sequences} sequences of {seq_len} positions", lstm_repeats, lstm, arithmetic["lstm"]))
    for loop, step, repeats, ms, alone in rows:
        print(f"{loop:<10}{step:<58}{repeats:>8}{ms:>9.4f}{alone:>15.4f}{max(0.0, 1 - alone / ms):>12.0%}")
    print(json.dumps({"phase1_ms_per_batch": round(phase1, 4), "phase2_ms_per_step": round(phase2, 4),
                      "cstar_ms_per_position_step": round(cstar, 5), "lstm_ms_per_step": round(lstm, 4),
                      "arithmetic_ms": {loop: round(ms, 5) for loop, ms in arithmetic.items()},
                      "phase1_batches_per_iteration": batches, "phase2_batch_size": params.batch_size, "phase2_precision": params.precision,
                      "cstar_documents": CSTAR_DOCUMENTS, "lstm_sequences": sequences, "lstm_seq_len": seq_len,
                      "repeats": {"phase1": phase1_repeats, "phase2": phase2_repeats, "cstar": cstar_repeats, "lstm": lstm_repeats},
                      "vocab": VOCAB, "width": WIDTH, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    app()
