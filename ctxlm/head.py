"""The output head's cross-entropy over the whole vocabulary, a chunk of rows at a time.

Phase 2's work is the head: per predicted token 2·V·d_e FLOPs for the logits and as many for the
gradient of the hidden state (as many again for the head's gradient when it trains). These
functions never hold the (B, V) logits whole: each chunk's logits are made, turned into what is
needed and dropped, with one exponential pass over them (the log-sum-exp and the softmax share it).
ctxlm's phase 2, its evaluation and the neural baselines all score through here."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

# Rows of logits made at a time: 512 x 30,522 fp32 logits are 62 MB, which bounds the memory of a
# larger batch. Chosen by measurement (python -m bench.phase2 --chunks, docs/benchmarks.md): on a
# 2-core AVX2 CPU the head ran 10-17% faster in chunks of 512 rows than of 128; narrower products
# lose more than their cache-sized softmax passes save.
CHUNK = 512


def _shifted_exp_(logits: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """(c, V) fp32 logits, in place -> exp(logits - top), `top` (c,) the rows' maxima; returns the
    rows' (c,) sums of those exponentials: log-sum-exp = top + log(sum), softmax = exponentials / sum."""
    return logits.sub_(top[:, None]).exp_().sum(dim=1)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of F.linear(hidden, weight, bias) against targets, a chunk of rows at a time.

    The gradients are computed in the forward pass, while each chunk's softmax is at hand, and scaled
    in backward. Products run with `operand` (the weight, or its bf16 copy: product_operand) and
    hidden cast to its dtype; log-sum-exp, softmax and the gradient accumulators stay fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, operand, chunk):
        n, dtype = hidden.shape[0], operand.dtype
        h = hidden.detach().to(dtype)
        b = None if bias is None else bias.detach().float()
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if b is not None and ctx.needs_input_grad[2] else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for a in range(0, n, chunk):
            rows, target = slice(a, a + chunk), targets[a : a + chunk]
            logits = (h[rows] @ operand.T).float()
            if b is not None:
                logits += b
            target_logit = logits.gather(1, target[:, None])[:, 0]
            top = logits.amax(dim=1)
            total_exp = _shifted_exp_(logits, top)
            total += (top + total_exp.log() - target_logit).sum()
            probs = logits.mul_((1.0 / (total_exp * n))[:, None])  # softmax / n: d(mean loss) / d logits ...
            probs[torch.arange(len(target), device=probs.device), target] -= 1.0 / n  # ... minus one-hot / n
            grad_hidden[rows] = (probs.to(dtype) @ operand).float()
            if grad_weight is not None:
                grad_weight += (probs.to(dtype).T @ h[rows]).float()
            if grad_bias is not None:
                grad_bias += probs.sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_output  # noqa: E731
        return scale(grad_hidden), scale(grad_weight), scale(grad_bias), None, None, None


_frozen_cast: dict = {}  # the last frozen weight cast: {"weight": weakref, "version": int, "cast": tensor}


def product_operand(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` as the head's products read it: itself, or a copy in `dtype` (bf16). A frozen
    weight's copy is made once and kept while the weight is unchanged (same tensor, same in-place
    version), not every step; a trained weight changes every step and is cast every step."""
    if weight.dtype == dtype:
        return weight.detach()
    if weight.requires_grad:
        return weight.detach().to(dtype)
    kept = _frozen_cast.get("weight")
    if kept is None or kept() is not weight or _frozen_cast["version"] != weight._version or _frozen_cast["cast"].dtype != dtype:
        _frozen_cast.update(weight=weakref.ref(weight), version=weight._version, cast=weight.to(dtype))
    return _frozen_cast["cast"]


def head_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
              precision: str, chunk: int = CHUNK) -> torch.Tensor:
    """Mean next-token cross-entropy of (B, d_e) hidden states through the head (weight (V, d_e),
    bias (V,) or None), the products in bf16 when `precision` is bf16, else fp32."""
    operand = product_operand(weight, torch.bfloat16 if precision == "bf16" else torch.float32)
    return ChunkedLinearCrossEntropy.apply(hidden.float(), weight, bias, targets, operand, chunk)


@torch.no_grad()
def head_scores(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, d_e) hidden states -> the (B,) fp32 cross-entropy of each target and (B,) whether the
    target is the argmax (the first of tied maxima), all in fp32."""
    losses = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    correct = torch.empty(len(targets), dtype=torch.bool, device=hidden.device)
    weight, bias = weight.float(), None if bias is None else bias.float()
    for a in range(0, len(targets), chunk):
        rows, target = slice(a, a + chunk), targets[a : a + chunk]
        logits = F.linear(hidden[rows].float(), weight, bias)
        target_logit = logits.gather(1, target[:, None])[:, 0]
        top, best = logits.max(dim=1)
        correct[rows] = best == target
        losses[rows] = top + _shifted_exp_(logits, top).log() - target_logit
    return losses, correct
