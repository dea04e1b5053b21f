"""Several processes (torchrun through ctxlm.launch, gloo on CPU) against one: phase 2, phase 1 and
C* generation give what one process gives, and a run with a killed process stops and resumes.

The tolerances are float32 rounding: the processes' gradients are summed in another order than one
process sums its batch. Measured: phase 2's weights after one epoch differ by at most 1.2e-7
(weights of size ~1, i.e. a few units in the last place); phase 1's by 1.5e-8 after 4 iterations."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxlm import distributed
from ctxlm.errors import CtxlmError
from ctxlm.training.phase1 import process_rows

JOBS = Path(__file__).with_name("distributed_jobs.py")
ROOT = Path(__file__).parents[1]


def test_each_process_takes_a_contiguous_share_in_rank_order():
    assert [distributed.share(10, r, 3) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]


def test_the_processes_take_every_global_batch_whole_between_them():
    """Batches of 4 of 11 items: [0-3] [4-7] [8-10]; two processes split each one."""
    order = np.arange(11)
    first, second = (distributed.share_of_batches(order, 4, part, 2) for part in (0, 1))
    assert first[0].tolist() == [0, 1, 4, 5, 8] and first[1] == [2, 2, 1]
    assert second[0].tolist() == [2, 3, 6, 7, 9, 10] and second[1] == [2, 2, 2]
    assert distributed.share_of_batches(order, 4, 0, 1)[1] == [4, 4, 3]  # one process: the batches themselves


def test_phase1_shares_are_whole_mini_batches_of_the_single_process_cut(monkeypatch):
    """100 tokens in batches of at most 40: 34 + 33 + 33 (np.array_split). Process 1 of 2 takes the last two."""
    monkeypatch.setattr(distributed, "world", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    rows, batches = process_rows(100, 40)
    assert rows == slice(34, 100) and batches == [slice(0, 33), slice(33, 66)]
    monkeypatch.setattr(distributed, "world", lambda: 4)
    with pytest.raises(CtxlmError, match="cuts the 100 training tokens into 3 mini-batches .* fewer than the 4 processes"):
        process_rows(100, 40)


def test_the_launcher_refuses_a_bad_process_count():
    run = subprocess.run([sys.executable, "-m", "ctxlm.launch", "0", "stages.prepare"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "PROCESSES >= 1" in run.stderr


def launch(processes: int, job: str, out: Path, **env) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "ctxlm.launch", str(processes), str(JOBS), job, str(out)], cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True, timeout=300)


def launch_one_and_two(job: str, tmp_path: Path, **env) -> tuple[Path, Path]:
    """Run `job` in 1 and in 2 processes; -> their output folders."""
    for n in (1, 2):
        run = launch(n, job, tmp_path / f"p{n}", **env)
        assert run.returncode == 0, run.stderr[-3000:]
    return tmp_path / "p1", tmp_path / "p2"


def result(out: Path) -> dict:
    return torch.load(out / "result.pt", weights_only=True)


def assert_close_runs(one: dict, two: dict, atol: float) -> None:
    assert len(one["history"]) == len(two["history"])
    for a, b in zip(one["history"], two["history"]):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    for key, value in one["state"].items():
        assert (two["state"][key] - value).abs().max().item() <= atol, key
    changed = [key for key in one["state"] if not torch.equal(one["state"][key], two["state"][key])]
    assert changed, "two processes gave bit-identical weights: the test would not see a difference in arithmetic either"


@pytest.mark.slow
def test_phase2_in_two_processes_equals_one(tmp_path):
    one, two = launch_one_and_two("phase2", tmp_path)
    assert_close_runs(result(one), result(two), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_a_neural_baseline_in_two_processes_equals_one(tmp_path, kind):
    one, two = map(result, launch_one_and_two("baseline", tmp_path, KIND=kind))
    if kind == "transformer":
        # The attention's key bias adds the same q.b_k to every logit of a query: its true gradient is
        # zero, so its gradient is rounding noise, which Adam scales up to steps of about lr. The two
        # runs' key biases differ by ~4e-4 (measured), and change no output; the rest is compared.
        for state in (one["state"], two["state"]):
            bias = state["body.gpt.h.0.attn.c_attn.bias"]
            bias[len(bias) // 3 : 2 * len(bias) // 3] = 0.0
    assert_close_runs(one, two, atol=1e-5)


@pytest.mark.slow
def test_phase1_in_two_processes_equals_one(tmp_path):
    one, two = map(result, launch_one_and_two("phase1", tmp_path))
    assert len(one["history"]) == 4
    assert_close_runs(one, two, atol=1e-5)


@pytest.mark.slow
def test_cstar_shards_of_two_processes_are_byte_identical_to_one(tmp_path):
    one, two = (folder / "cstar" / "val" for folder in launch_one_and_two("cstar", tmp_path))
    names = sorted(p.name for p in one.iterdir())
    assert names == ["manifest.json", "shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert not (tmp_path / "p2" / "checkpoints" / "generate_cstar").exists()


@pytest.mark.slow
def test_a_killed_process_stops_the_run_and_the_rerun_resumes(tmp_path):
    """Process 1 of 2 is SIGKILLed at its 5th step of 3 epochs; the launcher stops the other and says
    which died. The rerun with 2 processes resumes to the uninterrupted result exactly; one killed the
    same way and resumed with 1 process ends within rounding of it."""
    every_step = {"EPOCHS": "3", "CHECKPOINT": "1", "CTXLM_CHECKPOINT_SECONDS": "0"}
    reference = launch(2, "phase2", tmp_path / "reference", **every_step)
    assert reference.returncode == 0, reference.stderr[-3000:]
    for resume_with in (2, 1):
        out = tmp_path / f"killed-resumed-with-{resume_with}"
        killed = launch(2, "phase2", out, KILL_AT_STEP="5", **every_step)
        assert killed.returncode == 1
        assert killed.stderr.strip().splitlines()[-1] == (
            f"ctxlm: {JOBS} stopped: process 1 (of 2 per node) was killed by signal 9 (its own error, if any, is above); "
            "the other processes were stopped")
        assert not (out / "result.pt").exists()
        resumed = launch(resume_with, "phase2", out, **every_step)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "train_token: resuming from" in resumed.stdout + resumed.stderr
        if resume_with == 2:
            same = result(out), result(tmp_path / "reference")
            assert same[0]["history"] == same[1]["history"]
            assert all(torch.equal(same[0]["state"][k], same[1]["state"][k]) for k in same[1]["state"])
        else:
            assert_close_runs(result(tmp_path / "reference"), result(out), atol=1e-5)

