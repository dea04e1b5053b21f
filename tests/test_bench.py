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
    _, last = run_bench(tmp_path, "bench.phase2", "--steps", "2", "--val-tokens", "600", "--batch", "64", "--profile", "--chunks", "16,64", "--baselines")
    assert {"plain_train", "ctxlm_train", "plain_val", "ctxlm_val", "train_ceiling_tflops", "val_ceiling_tflops"} <= set(last)
    assert last["val_ppl_ctxlm"] == pytest.approx(last["val_ppl_baseline"], rel=0.05)  # the same model, trained on the same batches
    assert set(last["chunk_ms"]) == {"16", "64"} and {"lstm_train", "transformer_train"} <= set(last)
    assert last["profile_seconds"]["head matmuls"] > 0


@pytest.mark.slow
def test_bench_memory(tmp_path):
    stdout, last = run_bench(tmp_path, "bench.memory", "--small", "3000", "--large", "30000", "--context-dim", "16", "--dtype", "bfloat16")
    assert {"tokens_small", "tokens_large", "peak_rss_mb_small", "peak_rss_mb_large", "growth"} <= set(last)
    assert last["tokens_large"] == 30000 and last["peak_rss_mb_small"] > 100 and last["growth"] > 0.5
    assert "stored bfloat16" in stdout


@pytest.mark.slow
def test_bench_corpus(tmp_path):
    stdout, last = run_bench(tmp_path, "bench.corpus", "--documents", "3000")
    for form in ("txt.gz", "jsonl.gz", "parquet", "arrow"):
        runs = last["forms"][form]
        assert runs["whole"]["documents"] == 3000 and runs["budgeted"]["documents"] < 3000, form  # the budgets stop the reading
    assert "whole corpus / budgeted" in stdout


@pytest.mark.slow
def test_bench_generate(tmp_path):
    stdout, last = run_bench(tmp_path, "bench.generate", "--positions", "16,64", "--steps", "2")
    assert [p["position"] for p in last["points"]] == [16, 64] and {"ctxlm_late_early_ratio", "transformer_late_early_ratio", "transformer_width"} <= set(last)
    assert "late / early cost (position 64 / 16)" in stdout


def test_smoke_overhead_bench_prints_its_json(tmp_path):
    """bench.overhead runs its four real loops at its tiny shapes, a few steps each, and ends with
    its figures (their presence only: the timings are not checked)."""
    _, last = run_bench(tmp_path, "bench.overhead", "--tokens", "6000", "--iterations", "4", "--cstar-steps", "8", "--cstar-repeats", "1")
    for key in ("phase1_ms_per_batch", "phase2_ms_per_step", "cstar_ms_per_position_step", "lstm_ms_per_step"):
        assert last[key] > 0, key
    assert last["vocab"] == 1024 and last["width"] == 32 and last["cstar_documents"] == 256 and last["phase2_batch_size"] == 512
    assert all(last["arithmetic_ms"][loop] > 0 for loop in ("phase1", "phase2", "cstar", "lstm"))

def test_the_benchmark_s_cached_transformer_steps_give_its_whole_sequence_logits():
    """bench.generate times a real key/value-cache path: its logits are the full forward pass's."""
    import torch

    from bench.generate import CachedTransformer
    from ctxlm.evaluation.baselines import build_baseline
    from ctxlm.model import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, embed_dim=16, context_dim=16)
    model = build_baseline("transformer", cfg, torch.randn(40, 16), weight_tying=True, freeze_embedding=True, seq_len=32, transformer_layers=2)
    cached = CachedTransformer(model)
    ids = torch.randint(0, 40, (20,))
    state = cached.prefill(ids[:12])
    stepped = []
    for token in ids[12:].tolist():
        state, logits = cached.read(state, token)
        stepped.append(logits)
    with torch.no_grad():
        whole = model.eval().hidden(ids[None])[0, 12:] @ model.embedding.T
    assert torch.allclose(torch.stack(stepped), whole, atol=1e-5)


@pytest.mark.slow
def test_bench_gpu_runs_its_pipeline_and_checks_cstar_on_a_cpu(tmp_path):
    """The GPU benchmark's own code, on a CPU with tiny params: every stage ran, and the fp32 C* it
    computes agrees with the fp64 reference (the check it makes on a GPU, here on the CPU's fp32).
    Its rates are a smoke check only."""
    _, last = run_bench(tmp_path, "bench.gpu", "--device", "cpu", "--tiny", "--steps", "3", "--check-tokens", "500")
    assert list(last["stage_seconds"]) == ["prepare", "tokenize", "train_context", "generate_cstar", "train_token", "evaluate"]
    assert last["cstar_check_tokens"] >= 500 and 0 < last["cstar_max_abs_error_vs_cpu_fp64"] < 1e-4
    assert last["phase2_tokens_per_s"] > 0 and 0 < last["head_fraction_of_ceiling"]


def test_the_phase1_benchmark_s_plain_loop_is_phase_1_with_several_layers():
    """bench.phase1's baseline, the obvious loop, trains as train_context_block does with 2 layers:
    the OACD loss and the carried contexts are the final layer's in both (fast: no benchmark run)."""
    import torch

    from bench.phase1 import plain_loop
    from conftest import make_block
    from ctxlm.config import Phase1Params
    from ctxlm.training.phase1 import train_context_block

    x = torch.randn(40, 8)
    starts = torch.zeros(40, dtype=torch.bool)
    starts[[0, 13, 27]] = True
    params = Phase1Params(max_iterations=3, batch_tokens=10, context_noise=0.1, early_stop_convergence=1.0, lr=0.01)
    blocks = [make_block(num_layers=2).train() for _ in range(2)]
    blocks[1].load_state_dict(blocks[0].state_dict())
    before = blocks[0].linears[1].weight.detach().clone()
    plain_loop(blocks[0], x, starts, params, torch.Generator().manual_seed(5))
    train_context_block(blocks[1], x, starts, params, torch.Generator().manual_seed(5))
    for (name, a), b in zip(blocks[0].named_parameters(), blocks[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(blocks[0].linears[1].weight, before)  # they trained
