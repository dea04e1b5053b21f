"""Phase 1: train the ContextBlock(s) alone on the OACD loss -> data/context/context_block.safetensors."""

import time
from pathlib import Path

from ctxlm import distributed
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import atomic_dir, write_json_atomic, write_manifest
from ctxlm.data.shards import load_token_folder
from ctxlm.evaluation.metrics import count
from ctxlm.model import ModelConfig
from ctxlm.runtime import configure_device, device_name, pick_device
from ctxlm.training.checkpoint import folder_digest
from ctxlm.training.curves import CURVES, CurveLogger
from ctxlm.training.phase1 import Phase1Result, train_context_blocks
from ctxlm.weights import CONTEXT_WEIGHTS, context_state, save_weights

app = make_app()


def block_figures(result: Phase1Result, tokens: int, documents: int) -> dict:
    return {"iterations": result.iterations, "convergence_rate": result.convergence_rate, "final_loss": result.final_loss,
            "phase1_seconds": round(result.seconds, 2), "phase1_tokens": tokens, "phase1_documents": documents,
            "tokens_per_s": round(tokens * result.iterations / result.seconds) if result.iterations else 0}


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("train_context", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        _, splits, embedding = load_token_folder(Path("data/tokens"))
        cfg = ModelConfig.from_params(params.model, embedding)
        device = pick_device()
        configure_device(params.runtime, device)
        several = cfg.context_blocks > 1

        def curves(block: int):  # one DVCLive folder, or one per block
            return CurveLogger(CURVES / "train_context" / (f"block{block}" if several else ""), step_key="iteration") if distributed.is_main() else None

        inputs = {"seed": params.seed, "model": params.model.model_dump(), "phase1": params.phase1.model_dump(),
                  "tokens": folder_digest(Path("data/tokens"))}
        trained = train_context_blocks(cfg, embedding, splits["train"], params.phase1, params.seed, device, inputs, curves)
        if not distributed.is_main():
            return
        per_block = [block_figures(*figures) for figures in zip(trained.results, trained.tokens, trained.documents)]
        for j, result in enumerate(trained.results):
            which = f"phase 1, block {j}" if several else "phase 1"
            if result.iterations:
                print(f"{which}: {result.iterations} iterations, convergence {result.convergence_rate:.1%}, {result.seconds:.1f} s")
            else:
                print(f"{which}: phase1.max_iterations is 0: the seeded random ContextBlock is kept untrained (a control)")
        with atomic_dir(Path("data/context")) as out:
            save_weights(out, CONTEXT_WEIGHTS, context_state(trained.blocks), cfg.to_metadata())
            write_manifest(out, {"config": cfg.to_metadata()})
        if several:  # the sums over the blocks (the lowest convergence, the mean loss), then each block's figures
            ran = [r for r in trained.results if r.iterations]
            figures = {"iterations": sum(f["iterations"] for f in per_block),
                       "convergence_rate": min(r.convergence_rate for r in ran) if ran else None,
                       "final_loss": sum(r.final_loss for r in ran) / len(ran) if ran else None,
                       "phase1_seconds": round(sum(r.seconds for r in trained.results), 2),
                       "phase1_tokens": sum(trained.tokens), "phase1_documents": sum(trained.documents),
                       **{f"block_{j}": f for j, f in enumerate(per_block)}}
        else:
            figures = per_block[0]
        write_json_atomic(Path("metrics/train_context.json"),
                          {**figures, "params_context_block": count(trained.blocks), "device": device_name(device), "seconds": elapsed_since(start)})
        for checkpoint in trained.checkpoints:
            checkpoint.clear()


if __name__ == "__main__":
    app()
