"""Cost per generated token at early and late context positions: ctxlm (a fixed-size context, one
recurrence step a token) against a GPT-2-style model of the baseline's width with its key/value
cache (attention over every earlier position), in the same process.

Each model is brought to position p (ctxlm: p steps of the ContextBlock; the Transformer: one
forward pass that fills its cache), then `--steps` tokens are generated one at a time and timed.
The ceiling is a plain (1, d_e) x (d_e, V) matmul, the head's product that every token pays.
Random weights at the default size: timing needs no training.

    python -m bench.generate [--positions 64,1024,8192] [--steps 32]
"""

from __future__ import annotations

import json

import torch
import typer

from bench.common import Timer
from ctxlm.config import BaselinesParams
from ctxlm.evaluation.baselines import BaselineConfig, BaselineLM, build_baseline
from ctxlm.generation.inference import CtxlmStepper
from ctxlm.model import ContextBlock, ModelConfig, TokenModel, input_features
from ctxlm.runtime import one_thread

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
VOCAB, EMBED = 30522, 384  # the offline default's MiniLM vocabulary and width


class CachedTransformer:
    """The GPT-2-style baseline stepping with its key/value cache (positions up to n_positions)."""

    def __init__(self, model):
        self.model = model.eval()
        self.weight, self.bias = model.head_parameters()

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor):
        body = self.model.body
        x = input_features(self.model.embedding, ids[None, :, None])
        return body.gpt(inputs_embeds=body.inp(x), use_cache=True).cache

    @torch.no_grad()
    def read(self, cache, token: int):
        body = self.model.body
        with one_thread():  # as ctxlm's stepper: the small kernels on one thread, the head on all
            x = input_features(self.model.embedding, torch.tensor([[[token]]]))
            out = body.gpt(inputs_embeds=body.inp(x), cache=cache, use_cache=True)
            hidden = self.model.norm(body.out(out.last_hidden_state))[0, -1]
        return out.cache, torch.nn.functional.linear(hidden, self.weight, self.bias)


def ctxlm_at(stepper: CtxlmStepper, ids: torch.Tensor):
    """The stepper's state after reading `ids`, through the ContextBlock alone (no logits needed)."""
    state = stepper.initial()
    for token in ids.tolist():
        state, _ = stepper.advance(state, token)
    return state


def time_steps(read, state, steps: int) -> float:
    """Seconds per token of `steps` generated tokens (greedy), from `state`."""
    state, logits = read(state, 1)  # warm-up step, not timed
    with Timer() as t:
        for _ in range(steps):
            state, logits = read(state, int(logits.argmax()))
    return t.seconds / steps


def head_matmul_ms(embedding: torch.Tensor, repeats: int) -> float:
    """Milliseconds of the head's plain (1, d_e) x (d_e, V) product: the ceiling of a token's cost."""
    hidden = torch.randn(1, embedding.shape[1])
    hidden @ embedding.T
    with Timer() as t:
        for _ in range(repeats):
            hidden @ embedding.T
    return t.seconds / repeats * 1e3


@app.command()
def main(positions: str = "64,1024,8192", steps: int = 32) -> None:
    points = [int(p) for p in positions.split(",")]
    torch.manual_seed(0)
    embedding = torch.randn(VOCAB, EMBED)
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=EMBED)
    stepper = CtxlmStepper(ContextBlock(cfg).eval(), TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True).eval())
    defaults = BaselinesParams()  # the baseline's width at the default size, built with positions for the longest context
    width = build_baseline("transformer", cfg, embedding, True, True, defaults.seq_len, defaults.transformer_layers).cfg.width
    transformer = BaselineLM(BaselineConfig("transformer", EMBED, width, max(points) + steps + 2, defaults.transformer_layers),
                             embedding, weight_tying=True, freeze_embedding=True)
    cached = CachedTransformer(transformer)

    ids = torch.randint(0, VOCAB, (max(points),))
    rows = []
    for p in points:  # the ceiling measured beside each point: the machine's load drifts
        ctxlm_ms = time_steps(stepper.read, ctxlm_at(stepper, ids[:p]), steps) * 1e3
        head_ms = head_matmul_ms(embedding, steps)
        transformer_ms = time_steps(cached.read, cached.prefill(ids[:p]), steps) * 1e3
        rows.append({"position": p, "ctxlm_ms": ctxlm_ms, "transformer_ms": transformer_ms, "head_ms": head_ms})
    first, last = rows[0], rows[-1]
    print(f"\ncost per generated token; V {VOCAB}, d_e {EMBED}, ctxlm d_c {cfg.context_dim}; GPT-2-style width "
          f"{width} (the baseline's at seq_len {defaults.seq_len}), {defaults.transformer_layers} layers, KV cache; threads {torch.get_num_threads()}; {steps} tokens per point")
    print(f"ceiling: the head's (1, {EMBED}) x ({EMBED}, {VOCAB}) matmul alone, measured beside each point")
    print(f"{'position':>9}{'head ms':>9}{'ctxlm ms':>10}{'x head':>8}{'ctxlm tok/s':>13}{'GPT-2 ms':>10}{'x head':>8}")
    for r in rows:
        print(f"{r['position']:>9,}{r['head_ms']:>9.3f}{r['ctxlm_ms']:>10.3f}{r['ctxlm_ms'] / r['head_ms']:>8.2f}{1e3 / r['ctxlm_ms']:>13,.0f}"
              f"{r['transformer_ms']:>10.3f}{r['transformer_ms'] / r['head_ms']:>8.2f}")
    ctxlm_ratio, transformer_ratio = last["ctxlm_ms"] / first["ctxlm_ms"], last["transformer_ms"] / first["transformer_ms"]
    in_ceilings = {model: (last[f"{model}_ms"] / last["head_ms"]) / (first[f"{model}_ms"] / first["head_ms"]) for model in ("ctxlm", "transformer")}
    print(f"late / early cost (position {last['position']:,} / {first['position']:,}): ctxlm {ctxlm_ratio:.2f}x, "
          f"GPT-2-style {transformer_ratio:.2f}x; in units of the ceiling measured beside each (steadier on a loaded "
          f"machine): ctxlm {in_ceilings['ctxlm']:.2f}x, GPT-2-style {in_ceilings['transformer']:.2f}x")
    print(json.dumps({"points": rows, "ctxlm_late_early_ratio": ctxlm_ratio,
                      "transformer_late_early_ratio": transformer_ratio,
                      "ctxlm_late_early_ratio_in_ceilings": in_ceilings["ctxlm"], "transformer_late_early_ratio_in_ceilings": in_ceilings["transformer"], "ctxlm_tokens_per_s": 1e3 / last["ctxlm_ms"],
                      "transformer_width": transformer.cfg.width, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    app()
