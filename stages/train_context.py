"""Phase 1: train the ContextBlock alone on the OACD loss -> data/context/context_block.safetensors."""

import time
from pathlib import Path

import torch

from ctxlm.checkpoint import Checkpoint, folder_digest
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.cstar import split_windows
from ctxlm.curves import CURVES, CurveLogger
from ctxlm.metrics import count
from ctxlm.model import ContextBlock, ModelConfig, input_features
from ctxlm.phase1 import train_context_block
from ctxlm.runtime import pick_device, seed_everything
from ctxlm.shards import atomic_dir, load_token_folder, write_json_atomic, write_manifest
from ctxlm.weights import CONTEXT_WEIGHTS, save_weights

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("train_context", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        _, splits, embedding = load_token_folder(Path("data/tokens"))
        train = splits["train"]
        m = params.model
        cfg = ModelConfig.from_params(m, embedding)
        device = pick_device()
        generator = seed_everything(params.seed)
        block = ContextBlock(cfg).to(device)
        x = input_features(embedding, split_windows(train, cfg.num_input_tokens)).to(device)  # (N, d_x)
        doc_starts = torch.from_numpy(train.doc_starts()).to(device)
        inputs = {"seed": params.seed, "model": m.model_dump(), "phase1": params.phase1.model_dump(), "tokens": folder_digest(Path("data/tokens"))}
        checkpoint = Checkpoint("train_context", inputs)
        curves = CurveLogger(CURVES / "train_context", step_key="iteration")
        result = train_context_block(block, x, doc_starts, params.phase1, generator, checkpoint, on_iteration=curves)
        print(f"phase 1: {result.iterations} iterations, convergence {result.convergence_rate:.1%}, {result.seconds:.1f} s")
        with atomic_dir(Path("data/context")) as out:
            save_weights(out, CONTEXT_WEIGHTS, block.state_dict(), cfg.to_metadata())
            write_manifest(out, {"config": cfg.to_metadata()})
        write_json_atomic(
            Path("metrics/train_context.json"),
            {"iterations": result.iterations, "convergence_rate": result.convergence_rate, "final_loss": result.final_loss,
             "phase1_seconds": round(result.seconds, 2), "params_context_block": count(block),
             "tokens_per_s": round(len(train) * result.iterations / result.seconds), "seconds": elapsed_since(start)},
        )
        checkpoint.clear()


if __name__ == "__main__":
    app()
