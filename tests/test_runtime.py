"""Process-level numerics: what makes the same seed give the same figures in every process."""

import subprocess
import sys

import pytest

# The first vector-math call of a process, split over torch's threads right after a large matrix
# product (evaluation's head does exactly this): each thread's share must come out as one thread
# computes it alone. Without ctxlm.runtime's settling call, about 1 process in 6 failed on an AMX Xeon.
FIRST_EXP = """
import ctxlm.shards
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
               for _ in range(16)]
    assert results == ["True"] * 16
