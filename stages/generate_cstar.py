"""The exact C* of every train and validation token, with the trained ContextBlock frozen -> data/cstar."""

import time
from pathlib import Path

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.cstar import generate_split
from ctxlm.runtime import pick_device
from ctxlm.shards import atomic_dir, load_context_block, load_token_folder, write_json_atomic, write_manifest

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("generate_cstar", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        _, train, val, embedding = load_token_folder(Path("data/tokens"))
        block, cfg = load_context_block(Path("data/context"))
        device = pick_device()
        block, embedding = block.to(device), embedding.to(device)
        rates = {}
        with atomic_dir(Path("data/cstar")) as out:
            for split, tokens in (("train", train), ("val", val)):
                split_start = time.perf_counter()
                (out / split).mkdir()
                shards = generate_split(block, embedding, tokens, out / split, params.cstar.shard_tokens, f"C* {split}", params.cstar.dtype)
                write_manifest(out / split, {"config": cfg.to_metadata(), "rows": len(tokens), "dtype": params.cstar.dtype, "shards": shards})
                rates[f"{split}_tokens_per_s"] = round(len(tokens) / (time.perf_counter() - split_start))
        print(f"generate_cstar: {rates}")
        write_json_atomic(
            Path("metrics/generate_cstar.json"),
            {"train_tokens": len(train), "val_tokens": len(val), **rates, "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
