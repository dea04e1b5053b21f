"""Effective rank and parameter counts."""

from __future__ import annotations

import torch


def effective_rank(rows: torch.Tensor) -> float:
    """exp(entropy(s / sum s)) over the singular values s of the (n, d) matrix `rows`."""
    s = torch.linalg.svdvals(torch.as_tensor(rows).double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
