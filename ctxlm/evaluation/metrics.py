"""Effective rank, parameter counts, a split's figures (perplexity, accuracy, bits per byte), and
linear probes: what a representation at position i keeps of the token k positions back."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctxlm.data.files import document_first


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


def earlier_tokens(ids: np.ndarray, offsets: np.ndarray, positions: np.ndarray, k: int) -> np.ndarray:
    """t_{i-k} for each of `positions` i (token ids `ids` of documents `offsets`), -1 where i - k
    falls before the start of i's document."""
    back = positions - k
    return np.where(back >= document_first(offsets, positions), np.asarray(ids)[np.maximum(back, 0)], -1)


@dataclass(frozen=True)
class ProbeScore:
    accuracy: float  # argmax accuracy on the scored rows
    bits: float  # mean cross-entropy on them, in bits
    epochs: int  # the epoch whose weights early stopping kept (0: the unigram start)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, classes: int,
                 seed: int, held_out: float = 0.1, lr: float = 1e-3, batch: int = 512, max_epochs: int = 100,
                 patience: int = 3) -> ProbeScore:
    """Multinomial logistic regression from (n, d) features to labels in [0, classes): Adam on the
    training rows but a seeded `held_out` share of them, early-stopped on that share's loss (the best
    epoch's weights kept), then scored on the test rows. Features are standardized with the training
    rows' mean and spread. The probe starts as the unigram guess (zero weights, the bias the log of
    the training labels' frequencies, add-one smoothed) and that start competes as epoch 0, so
    a representation with nothing to read scores the prior, not below it (no seed enters there)."""
    generator = torch.Generator().manual_seed(seed)
    mean, spread = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    standardize = lambda x: (x.float() - mean) / spread  # noqa: E731
    order = torch.randperm(len(train_x), generator=generator)
    cut = max(1, int(held_out * len(order)))
    stop_rows, fit_rows = order[:cut], order[cut:]
    x, y = standardize(train_x[fit_rows]), train_y[fit_rows]
    stop_x, stop_y = standardize(train_x[stop_rows]), train_y[stop_rows]
    probe = torch.nn.Linear(train_x.shape[1], classes)
    with torch.no_grad():
        probe.weight.zero_()
        probe.bias.copy_((torch.bincount(y, minlength=classes) + 1.0).log())
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, foreach=True)
    best, best_state, best_epoch, stale = math.inf, None, 0, 0
    for epoch in range(max_epochs + 1):
        if epoch:  # epoch 0: the start itself
            for rows in torch.randperm(len(x), generator=generator).split(batch):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(probe(x[rows]), y[rows]).backward()
                optimizer.step()
        with torch.no_grad():
            loss = F.cross_entropy(probe(stop_x), stop_y).item()
        if loss < best:
            best, best_state, best_epoch, stale = loss, {k: v.clone() for k, v in probe.state_dict().items()}, epoch, 0
        else:
            stale += 1
            if stale >= patience:
                break
    probe.load_state_dict(best_state)
    with torch.no_grad():
        logits = probe(standardize(test_x))
        bits = F.cross_entropy(logits, test_y).item() / math.log(2)
        accuracy = (logits.argmax(1) == test_y).float().mean().item()
    return ProbeScore(accuracy, bits, best_epoch)
