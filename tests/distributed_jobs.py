"""Jobs that tests/test_distributed.py runs through `python -m ctxlm.launch N tests/distributed_jobs.py JOB OUT`:
the same tiny training or generation in 1 or N processes, rank 0 saving what it produced to OUT/result.pt.
Each process builds its own copy of the (seeded, identical) data under OUT/data-<rank>."""

import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from ctxlm import distributed
from ctxlm.config import CstarParams, Phase1Params, Phase2Params
from ctxlm.evaluation.baselines import SequenceData, build_baseline, train_baseline
from ctxlm.generation.cstar import write_cstar
from ctxlm.model import ModelConfig, TokenModel
from ctxlm.training.checkpoint import Checkpoint
from ctxlm.training.phase1 import train_context_block
from ctxlm.training.phase2 import train_token_model, training_loss
from conftest import make_block, make_token_split
from test_phase2 import setup

CPU = torch.device("cpu")


def own_data_folder(out: Path) -> Path:
    """OUT/data-<rank>, new, or emptied of a rerun's files."""
    data = out / f"data-{os.environ.get('RANK', '0')}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    return data


def phase2_data(out: Path):
    """test_phase2's tiny data, made by each process for itself before the processes join."""
    return setup(own_data_folder(out))


def phase2(out: Path, data) -> dict:
    """One epoch (or EPOCHS, with CHECKPOINT a checkpoint) of phase 2 on test_phase2's tiny data;
    with KILL_AT_STEP, process 1 kills itself at that step."""
    cfg, embedding, train, val = data
    kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
    if kill_at and distributed.rank() == 1:
        steps = 0

        def dying(*args, **kwargs):
            nonlocal steps
            steps += 1
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return training_loss(*args, **kwargs)

        import ctxlm.training.phase2
        ctxlm.training.phase2.training_loss = dying
    torch.manual_seed(3)
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=False)
    epochs = int(os.environ.get("EPOCHS", "1"))
    params = Phase2Params(epochs=epochs, patience=epochs, batch_size=32, lr=0.01, precision="fp32")
    checkpoint = Checkpoint("train_token", {"test": 1}, root=out / "checkpoints") if os.environ.get("CHECKPOINT") else None
    result = train_token_model(model, train, val, params, CPU, torch.Generator().manual_seed(3), checkpoint, sample_seed=3)
    return {"history": result.history, "state": result.best_state}


def phase1(out: Path, data) -> dict:
    """4 iterations of phase 1 on 100 tokens, documents every 25, 3 mini-batches (34, 33, 33 tokens):
    with 2 processes the second's share starts inside a document, at token 34."""
    torch.manual_seed(1)
    block = make_block(torch.float32, num_layers=2)
    x = torch.randn(100, 8)
    starts = torch.zeros(100, dtype=torch.bool)
    starts[::25] = True
    params = Phase1Params(max_iterations=4, batch_tokens=40)
    checkpoint = Checkpoint("train_context", {"test": 1}, root=out / "checkpoints") if os.environ.get("CHECKPOINT") else None
    result = train_context_block(block, x, starts, params, torch.Generator().manual_seed(1), checkpoint)
    return {"history": result.history, "state": block.state_dict()}


def cstar_data(out: Path):
    return make_token_split(own_data_folder(out), [7, 30, 1, 12, 25, 9, 14])


def cstar(out: Path, tokens) -> dict:
    """The C* of 7 documents in shards of about 20 tokens (3 shards) -> OUT/cstar."""
    torch.manual_seed(0)
    block = make_block(torch.float32, num_input_tokens=2)
    embedding = torch.randn(50, block.cfg.embed_dim)
    write_cstar(block, embedding, {"val": tokens}, out / "cstar", CstarParams(shard_tokens=20), Checkpoint("generate_cstar", {}, root=out / "checkpoints"))
    return {}


def baseline_data(out: Path):
    """Documents of 60, 45, 80, 33 and 51 random ids (train) and 30, 25 (val), each process its own copy."""
    data = own_data_folder(out)
    return make_token_split(data, [60, 45, 80, 33, 51], vocab=40, seed=1), make_token_split(data, [30, 25], vocab=40, seed=2, split="val")


def baseline(out: Path, data) -> dict:
    """Two epochs of the LSTM baseline (KIND: lstm or transformer), 5 windows of 8 a step: the
    scored tokens per process differ, and the last step has fewer windows than the others."""
    train, val = SequenceData(data[0], 8, 8), SequenceData(data[1], 8, 4)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, embed_dim=16, context_dim=16)
    model = build_baseline(os.environ.get("KIND", "lstm"), cfg, torch.randn(40, 16), weight_tying=False, freeze_embedding=True, seq_len=8,
                           transformer_layers=1)
    params = Phase2Params(epochs=2, patience=2, batch_size=40, lr=0.01, precision="fp32")
    result = train_baseline(model, train, val, params, CPU, torch.Generator().manual_seed(0), None, "baseline", sample_seed=3)
    return {"history": result.history, "state": result.best_state}


JOBS = {"baseline": (baseline_data, baseline), "phase1": (lambda out: None, phase1), "phase2": (phase2_data, phase2), "cstar": (cstar_data, cstar)}

if __name__ == "__main__":
    job, out = sys.argv[1], Path(sys.argv[2])
    prepare, run = JOBS[job]
    data = prepare(out)
    distributed.start()
    result = run(out, data)
    if distributed.is_main():
        torch.save(result, out / "result.pt")
    distributed.finish()
