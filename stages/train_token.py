"""Phase 2: train the TokenBlock on (C*, x) with cross-entropy -> data/token_model (best epoch)."""

import time
from dataclasses import replace
from pathlib import Path

from ctxlm import distributed
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import atomic_dir, write_json_atomic, write_manifest
from ctxlm.data.shards import CstarReader, load_token_folder
from ctxlm.model import ModelConfig, TokenModel
from ctxlm.runtime import configure_device, device_name, pick_device, seed_everything
from ctxlm.training.checkpoint import Checkpoint, folder_digest
from ctxlm.training.curves import CURVES, CurveLogger
from ctxlm.training.phase2 import SplitData, train_token_model, with_device_precision
from ctxlm.weights import TOKEN_WEIGHTS, save_weights

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("train_token", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        _, splits, embedding = load_token_folder(Path("data/tokens"))
        train_cstar, val_cstar = CstarReader(Path("data/cstar/train")), CstarReader(Path("data/cstar/val"))
        cfg = replace(ModelConfig.from_metadata(train_cstar.meta["config"]), prev_contexts=params.model.prev_contexts)
        train = SplitData(train_cstar, splits["train"], cfg.num_input_tokens, cfg.prev_contexts)
        val = SplitData(val_cstar, splits["val"], cfg.num_input_tokens, cfg.prev_contexts)
        device = pick_device()
        generator = seed_everything(params.seed)
        phase2 = with_device_precision(params.phase2, device)
        m = params.model
        model = TokenModel(cfg, embedding, weight_tying=m.weight_tying, freeze_embedding=m.freeze_embedding).to(device)
        configure_device(params.runtime, device, [model.token_block])
        inputs = {"seed": params.seed, "model": m.model_dump(), "phase2": phase2.model_dump(),
                  "data": [folder_digest(Path(f)) for f in ("data/tokens", "data/cstar/train", "data/cstar/val")]}
        checkpoint = Checkpoint("train_token", inputs)
        curves = CurveLogger(CURVES / "train_token", step_key="epoch") if distributed.is_main() else None
        result = train_token_model(model, train, val, phase2, device, generator, checkpoint, sample_seed=params.seed, on_epoch=curves)
        if not distributed.is_main():
            return
        metadata = {**cfg.to_metadata(), "weight_tying": str(m.weight_tying), "freeze_embedding": str(m.freeze_embedding)}
        with atomic_dir(Path("data/token_model")) as out:
            save_weights(out, TOKEN_WEIGHTS, result.best_state, metadata)
            write_manifest(out, {"config": metadata})
        best = result.history[result.best_epoch - 1]
        write_json_atomic(
            Path("metrics/train_token.json"),
            {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "train_ppl": best["train_ppl"],
             "train_acc": best["train_acc"], "train_sample_positions": min(len(train), len(val)), "val_ppl_at_best_epoch": best["val_ppl"], "phase2_seconds": round(result.seconds, 2), "precision": phase2.precision,
             "tokens_per_s": round(len(train) * result.epochs_run / result.seconds), "device": device_name(device), "seconds": elapsed_since(start)},
        )
        checkpoint.clear()


if __name__ == "__main__":
    app()
