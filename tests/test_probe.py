"""Linear probes against representations whose content is known: a feature that encodes the token 3
positions back, the same features shuffled, and the earlier-token targets by hand."""

import math

import numpy as np
import torch

from ctxlm.metrics import earlier_tokens, linear_probe

VOCAB = 20


def test_earlier_tokens_by_hand():
    """Documents 0-2 and 3-6: a target before its position's document is -1."""
    ids = np.array([10, 11, 12, 13, 14, 15, 16])
    offsets = np.array([0, 3, 7])
    positions = np.array([0, 1, 2, 3, 4, 6])
    assert earlier_tokens(ids, offsets, positions, 0).tolist() == [10, 11, 12, 13, 14, 16]
    assert earlier_tokens(ids, offsets, positions, 1).tolist() == [-1, 10, 11, -1, 13, 15]
    assert earlier_tokens(ids, offsets, positions, 3).tolist() == [-1, -1, -1, -1, -1, 13]


def features_of_the_token_three_back(n: int, rng) -> tuple[np.ndarray, torch.Tensor]:
    """A random sequence of VOCAB symbols and, at each position i >= 3, the one-hot of t_{i-3} plus
    noise, beside 12 columns of pure noise."""
    ids = rng.integers(0, VOCAB, size=n)
    x = np.concatenate([np.eye(VOCAB)[np.roll(ids, 3)], np.zeros((n, 12))], axis=1) + 0.1 * rng.standard_normal((n, VOCAB + 12))
    return ids, torch.from_numpy(x).float()


def probe_at(ids, x, k, train, test, seed=0):
    offsets = np.array([0, len(ids)])
    y = torch.from_numpy(earlier_tokens(ids, offsets, np.arange(len(ids)), k))
    return linear_probe(x[train], y[train], x[test], y[test], VOCAB, seed)


def test_a_probe_reads_the_token_its_features_encode_and_nothing_further_back():
    rng = np.random.default_rng(0)
    ids, x = features_of_the_token_three_back(6000, rng)
    train, test = np.arange(10, 4500), np.arange(4500, 6000)
    unigram = np.bincount(ids[test], minlength=VOCAB).max() / len(test)  # the most frequent symbol's share, ~1/20
    three = probe_at(ids, x, 3, train, test)
    assert three.accuracy > 0.99 and three.bits < 0.1
    eight = probe_at(ids, x, 8, train, test)
    assert eight.accuracy < 2 * unigram
    assert abs(eight.bits - math.log2(VOCAB)) < 0.2  # chance: about log2(20) = 4.32 bits


def test_a_probe_of_features_shuffled_against_their_positions_is_at_chance():
    rng = np.random.default_rng(1)
    ids, x = features_of_the_token_three_back(6000, rng)
    shuffled = x[torch.from_numpy(rng.permutation(len(x)))]
    train, test = np.arange(10, 4500), np.arange(4500, 6000)
    unigram = np.bincount(ids[test], minlength=VOCAB).max() / len(test)
    assert probe_at(ids, shuffled, 3, train, test).accuracy < 2 * unigram
