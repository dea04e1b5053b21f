"""Process-level numerics: what makes the same seed give the same figures in every process."""

import subprocess
import sys

import pytest

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
