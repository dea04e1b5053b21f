import numpy as np
import pytest
import torch

from ctxlm.model import ContextBlock, ModelConfig
from ctxlm.shards import save_tokens, TokenSplit


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, embed_dim=8, context_dim=12, num_layers=2, num_input_tokens=1, token_input_all_layers=True)
    return ModelConfig(**{**base, **overrides})


def make_block(dtype=torch.float32, **overrides) -> ContextBlock:
    block = ContextBlock(make_config(**overrides)).to(dtype).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine, so tests see it used
        for norm in block.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return block


def make_token_split(tmp_path, doc_lengths, vocab=50, seed=0, split="train") -> TokenSplit:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)])
    ids = rng.integers(0, vocab, size=int(offsets[-1]))
    save_tokens(tmp_path, split, ids, offsets)
    return TokenSplit(tmp_path, split)


class Killed(Exception):
    """Stands for a SIGKILL in the middle of a stage."""


class Dying:
    """Wraps `fn`: counts its calls and raises Killed at call number `kill_at` (None: never)."""

    def __init__(self, fn, kill_at: int | None):
        self.fn, self.kill_at, self.calls = fn, kill_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed
        return self.fn(*args, **kwargs)
