"""The benchmarks run (tiny sizes, from a folder without data/, so random weights) and end with their JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(tmp_path, *args) -> tuple[str, dict]:
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True,
    )
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_bench_cstar(tmp_path):
    stdout, last = run_bench(tmp_path, "bench.cstar", "--tokens", "3000", "--naive-tokens", "300")
    assert {"naive_tokens_per_s", "fast_tokens_per_s", "speedup", "ceiling_tokens_per_s", "max_abs_diff", "max_abs_diff_fp64", "tokens"} <= set(last)
    assert last["tokens"] == 3000 and last["max_abs_diff_fp64"] < 1e-9 and last["max_abs_diff"] < 1e-4
    assert "weights: random" in stdout


@pytest.mark.slow
def test_bench_phase1(tmp_path):
    _, last = run_bench(tmp_path, "bench.phase1", "--tokens", "2000", "--iterations", "2")
    assert {"baseline_tokens_per_s", "fast_tokens_per_s", "speedup", "convergence_baseline", "convergence_fast"} <= set(last)


@pytest.mark.slow
def test_bench_phase2(tmp_path):
    _, last = run_bench(tmp_path, "bench.phase2", "--steps", "2", "--val-tokens", "600", "--batch", "64")
    assert {"baseline_tokens_per_s", "fast_tokens_per_s", "speedup", "val_ppl_baseline", "val_ppl_fast"} <= set(last)
    assert last["val_ppl_fast"] == pytest.approx(last["val_ppl_baseline"], rel=0.05)


@pytest.mark.slow
def test_bench_memory(tmp_path):
    stdout, last = run_bench(tmp_path, "bench.memory", "--small", "3000", "--large", "30000", "--context-dim", "16", "--dtype", "bfloat16")
    assert {"tokens_small", "tokens_large", "peak_rss_mb_small", "peak_rss_mb_large", "growth"} <= set(last)
    assert last["tokens_large"] == 30000 and last["peak_rss_mb_small"] > 100 and last["growth"] > 0.5
    assert "stored bfloat16" in stdout
