"""Process-level numerics: what makes the same seed give the same figures in every process."""

import copy
import subprocess
import sys

import pytest
import torch

from ctxlm.runtime import adam, clip_gradients

# The first vector-math call of a process, split over torch's threads right after a large matrix
# product (evaluation's head does exactly this): each thread's share must come out as one thread
# computes it alone. Without ctxlm.runtime's settling call, 13 of 100 processes failed on an AMX Xeon,
# so 40 processes pass by chance with probability (1 - 11/84)**40 < 0.4% if the call is dropped.
FIRST_EXP = """
import ctxlm.runtime
import torch
g = torch.Generator().manual_seed(0)
logits = torch.randn(512, 384, generator=g) @ torch.randn(384, 30522, generator=g)
threaded = (logits - 40).exp()
torch.set_num_threads(1)
print(torch.equal(threaded, (logits - 40).exp()))
"""


@pytest.mark.slow
def test_the_first_threaded_exp_of_every_process_matches_one_thread():
    results = [subprocess.run([sys.executable, "-c", FIRST_EXP], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(40)]
    assert results == ["True"] * 40


def test_adam_and_clipping_step_as_torchs_per_parameter_loop():
    """ctxlm's Adam (foreach on a CPU) and clipping, 20 steps of a small net: bit for bit the weights
    of torch's per-parameter (single-tensor) Adam and clipping loop."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.GELU(), torch.nn.LayerNorm(12), torch.nn.Linear(12, 5))
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))

    def trained(make_optimizer, clip):
        model = copy.deepcopy(net)
        optimizer = make_optimizer(list(model.parameters()))
        for _ in range(20):
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            clip(list(model.parameters()), 0.5)
            optimizer.step()
        return list(model.parameters())

    ours = trained(lambda p: adam(p, 0.01, torch.device("cpu")), clip_gradients)
    loop = trained(lambda p: torch.optim.Adam(p, lr=0.01, foreach=False),
                   lambda p, norm: torch.nn.utils.clip_grad_norm_(p, norm, foreach=False))
    assert all(torch.equal(a, b) for a, b in zip(ours, loop, strict=True))
    assert not torch.equal(ours[0], net[0].weight)  # it trained


def test_only_the_first_process_shows_progress_bars(monkeypatch):
    """Under torchrun (RANK set) every process but rank 0 keeps its bars off; alone, bars show."""
    from ctxlm.cli import progress

    monkeypatch.delenv("RANK", raising=False)
    assert not progress(range(3)).disable
    monkeypatch.setenv("RANK", "1")
    assert progress(range(3)).disable
    monkeypatch.setenv("RANK", "0")
    assert not progress(range(3)).disable
