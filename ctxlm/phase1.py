"""Phase 1: the ContextBlock alone, trained by fixed-point iteration on the OACD diversity loss."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ctxlm.checkpoint import Checkpoint
from ctxlm.config import Phase1Params
from ctxlm.errors import CtxlmError
from ctxlm.model import ContextBlock
from ctxlm.runtime import autocast, progress


def oacd_loss(contexts: torch.Tensor, centroid_weight: float) -> torch.Tensor:
    """(B, d_c) contexts -> -||C - mu||_F / B + w * ||mu||^2, mu the batch centroid."""
    centroid = contexts.mean(dim=0)
    dispersion = torch.linalg.vector_norm(contexts - centroid) / contexts.shape[0]
    return -dispersion + centroid_weight * centroid.square().sum()


def previous_contexts(contexts: torch.Tensor, doc_starts: torch.Tensor) -> torch.Tensor:
    """(N, d_c) -> (N, d_c) with row i = contexts[i-1], and zeros at each document's first token."""
    prev = torch.roll(contexts, 1, dims=0)
    prev[doc_starts] = 0.0
    return prev


@dataclass
class Phase1Result:
    iterations: int
    convergence_rate: float
    final_loss: float
    seconds: float
    history: list[dict]


def train_context_block(
    block: ContextBlock,
    x: torch.Tensor,
    doc_starts: torch.Tensor,
    params: Phase1Params,
    generator: torch.Generator,
    checkpoint: Checkpoint | None = None,
    on_iteration: Callable[[list[dict]], None] | None = None,
) -> Phase1Result:
    """Train `block` in place on the (N, d_x) token inputs of the training stream.

    Each iteration recomputes every context in parallel from the previous iteration's contexts
    (plus Gaussian noise, not at document starts), sums the OACD loss over equal mini-batches
    weighted by their size, clips the gradient and takes one Adam step. With a checkpoint, the state
    after an iteration (weights, Adam, the noise generator, the contexts) is saved every few
    minutes, and a killed run resumes from it exactly. `on_iteration(history)` follows every
    iteration (the history holds a dict per iteration so far, from the checkpoint's too when resumed)."""
    n = x.shape[0]
    d_c = block.cfg.context_dim
    device = x.device
    contexts = (torch.randn(n, d_c, generator=generator) * params.init_std).to(device)  # iteration 0
    batches = np.array_split(np.arange(n), math.ceil(n / params.batch_tokens))
    optimizer = torch.optim.Adam(block.parameters(), lr=params.lr)
    not_start = (~doc_starts).unsqueeze(1).float()
    history: list[dict] = []
    seconds_before = 0.0
    saved = checkpoint.load() if checkpoint else None
    if saved:
        block.load_state_dict(saved["block"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["rng"])
        contexts, history, seconds_before = saved["contexts"].to(device), saved["history"], saved["seconds"]
        print(f"train_context: resuming from {checkpoint.folder} after iteration {len(history)}", flush=True)
    start = time.perf_counter()
    bar = progress(range(len(history) + 1, params.max_iterations + 1), initial=len(history), total=params.max_iterations, desc="phase 1", unit="it")
    for iteration in bar:
        if history and history[-1]["convergence_rate"] >= params.early_stop_convergence:
            break
        prev = previous_contexts(contexts, doc_starts)
        if params.context_noise > 0:
            prev += torch.randn(n, d_c, generator=generator).to(device) * params.context_noise * not_start
        optimizer.zero_grad(set_to_none=True)
        new = torch.empty_like(contexts)
        total = 0.0
        for idx in batches:
            idx = torch.from_numpy(idx).to(device)
            with autocast(params.precision, device):
                out = block(prev[idx], x[idx])[:, -1]  # (B, d_c) final layer
            out = out.float()
            loss = oacd_loss(out, params.centroid_weight) * (len(idx) / n)
            if not torch.isfinite(loss):
                raise CtxlmError(
                    f"train_context: the OACD loss became {loss.item()} at iteration {iteration}; "
                    f"lower phase1.lr (now {params.lr}) or phase1.context_noise (now {params.context_noise})"
                )
            loss.backward()
            total += loss.item()
            new[idx] = out.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(block.parameters(), params.gradient_clip)
        if not torch.isfinite(grad_norm):
            raise CtxlmError(f"train_context: the gradient became {grad_norm.item()} at iteration {iteration}; lower phase1.lr")
        optimizer.step()
        moved = (new - contexts).square().mean(dim=1)  # (N,) per-token MSE since last iteration
        convergence = (moved < params.convergence_threshold).float().mean().item()
        contexts = new
        history.append({"iteration": iteration, "loss": total, "convergence_rate": convergence})
        if on_iteration:
            on_iteration(history)
        bar.set_postfix(loss=f"{total:.4f}", converged=f"{convergence:.1%}", refresh=False)
        if checkpoint and checkpoint.due():
            checkpoint.save({"block": block.state_dict(), "optimizer": optimizer.state_dict(), "rng": generator.get_state(),
                             "contexts": contexts.cpu(), "history": history, "seconds": seconds_before + time.perf_counter() - start})
    bar.close()
    return Phase1Result(
        iterations=len(history),
        convergence_rate=history[-1]["convergence_rate"],
        final_loss=history[-1]["loss"],
        seconds=seconds_before + time.perf_counter() - start,
        history=history,
    )
