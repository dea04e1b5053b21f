"""Effective rank and parameter counts."""

from __future__ import annotations

import numpy as np
import torch


def effective_rank(rows: np.ndarray) -> float:
    """exp(entropy(s / sum s)) over the singular values s of the (n, d) matrix `rows`."""
    s = torch.linalg.svdvals(torch.from_numpy(np.asarray(rows, dtype=np.float64)))
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
