"""The exact C* of every train, validation and test token, with the trained ContextBlock frozen -> data/cstar."""

import time
from pathlib import Path

from ctxlm import distributed
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import write_json_atomic
from ctxlm.data.shards import load_token_folder
from ctxlm.generation.cstar import write_cstar
from ctxlm.runtime import device_name, pick_device
from ctxlm.training.checkpoint import Checkpoint, folder_digest
from ctxlm.weights import load_context_blocks

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("generate_cstar", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        _, splits, embedding = load_token_folder(Path("data/tokens"))
        block, _ = load_context_blocks(Path("data/context"))
        device = pick_device()
        block, embedding = block.to(device), embedding.to(device)
        inputs = {"cstar": params.cstar.model_dump(), "tokens": folder_digest(Path("data/tokens")), "context": folder_digest(Path("data/context"))}
        rates = write_cstar(block, embedding, splits, Path("data/cstar"), params.cstar, Checkpoint("generate_cstar", inputs))
        if not distributed.is_main():
            return
        print(f"generate_cstar: {rates}")
        write_json_atomic(
            Path("metrics/generate_cstar.json"),
            {**{f"{split}_tokens": len(tokens) for split, tokens in splits.items()}, **rates, "device": device_name(device), "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
