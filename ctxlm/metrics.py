"""Effective rank, parameter counts and a split's figures (perplexity, accuracy, bits per byte)."""

from __future__ import annotations

import math

import torch


def effective_rank(rows: torch.Tensor) -> float:
    """exp(entropy(s / sum s)) over the singular values s of the (n, d) matrix `rows`."""
    s = torch.linalg.svdvals(torch.as_tensor(rows).double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def split_figures(split: str, loss: float, accuracy: float, positions: int, text: dict) -> dict[str, float]:
    """A split's headline figures from its mean cross-entropy `loss` (nats) over `positions` predicted
    tokens: perplexity, accuracy, and bits per byte and per character of the text those tokens
    cover (`text`: the split's entry in the tokens manifest), which do not depend on the tokenizer."""
    bits = loss * positions / math.log(2)
    return {
        f"{split}_ppl": math.exp(loss),
        f"{split}_acc": accuracy,
        f"{split}_loss": loss,
        f"{split}_bits_per_byte": bits / text["predicted_bytes"],
        f"{split}_bits_per_char": bits / text["predicted_chars"],
        f"{split}_positions": positions,
    }
