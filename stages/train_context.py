"""Phase 1: train the ContextBlock alone on the OACD loss -> data/context/context_block.safetensors."""

import time
from pathlib import Path

import numpy as np
import torch

from ctxlm import distributed
from ctxlm.checkpoint import Checkpoint, folder_digest
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.curves import CURVES, CurveLogger
from ctxlm.metrics import count
from ctxlm.model import ContextBlock, ModelConfig, input_features, token_windows
from ctxlm.phase1 import document_rows, sample_documents, train_context_block
from ctxlm.runtime import configure_device, pick_device, seed_everything
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
        configure_device(params.runtime, device)
        rows = document_rows(train.offsets, sample_documents(train.offsets, params.phase1.max_tokens, params.seed))
        doc_starts = torch.from_numpy(train.doc_starts()[rows])
        ids = torch.from_numpy(np.asarray(train.ids[rows], dtype=np.int64))
        x = input_features(embedding, token_windows(ids, doc_starts, cfg.num_input_tokens)).to(device)  # (N, d_x), N <= phase1.max_tokens
        doc_starts = doc_starts.to(device)
        inputs = {"seed": params.seed, "model": m.model_dump(), "phase1": params.phase1.model_dump(), "tokens": folder_digest(Path("data/tokens"))}
        checkpoint = Checkpoint("train_context", inputs)
        curves = CurveLogger(CURVES / "train_context", step_key="iteration") if distributed.is_main() else None
        result = train_context_block(block, x, doc_starts, params.phase1, generator, checkpoint, on_iteration=curves)
        if not distributed.is_main():
            return
        if result.iterations:
            print(f"phase 1: {result.iterations} iterations, convergence {result.convergence_rate:.1%}, {result.seconds:.1f} s")
        else:
            print("phase 1: phase1.max_iterations is 0: the seeded random ContextBlock is kept untrained (a control)")
        with atomic_dir(Path("data/context")) as out:
            save_weights(out, CONTEXT_WEIGHTS, block.state_dict(), cfg.to_metadata())
            write_manifest(out, {"config": cfg.to_metadata()})
        write_json_atomic(
            Path("metrics/train_context.json"),
            {"iterations": result.iterations, "convergence_rate": result.convergence_rate, "final_loss": result.final_loss,
             "phase1_seconds": round(result.seconds, 2), "params_context_block": count(block),
             "phase1_tokens": len(rows), "phase1_documents": int(doc_starts.sum()),
             "tokens_per_s": round(len(rows) * result.iterations / result.seconds) if result.iterations else 0, "seconds": elapsed_since(start)},
        )
        checkpoint.clear()


if __name__ == "__main__":
    app()
