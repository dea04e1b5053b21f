import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_cstar_prints_its_json_last(tmp_path):
    """A small run from a folder without data/context (random weights): the last line is the JSON."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.cstar", "--tokens", "3000", "--naive-tokens", "300"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True,
    )
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"naive_tokens_per_s", "fast_tokens_per_s", "speedup", "ceiling_tokens_per_s", "max_abs_diff", "max_abs_diff_fp64", "tokens"} <= set(last)
    assert last["tokens"] == 3000 and last["max_abs_diff_fp64"] < 1e-9 and last["max_abs_diff"] < 1e-4
    assert "weights: random" in result.stdout
