"""Baselines: an LSTM or a small GPT-2 trained like phase 2 on the same tokens -> metrics/baselines/<kind>.json."""

import math
import time
from pathlib import Path

import pandas as pd
import typer

from ctxlm.baselines import KINDS, SequenceData, build_baseline, evaluate_sequences, train_baseline
from ctxlm.checkpoint import Checkpoint, folder_digest
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.errors import CtxlmError
from ctxlm.metrics import count
from ctxlm.model import ModelConfig
from ctxlm.runtime import pick_device, seed_everything
from ctxlm.shards import load_token_folder, write_csv_atomic, write_json_atomic

app = make_app()


@app.command()
def main(kind: str = typer.Argument(..., help=" | ".join(KINDS)), params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run(f"baseline_neural {kind}", debug):
        start = time.perf_counter()
        if kind not in KINDS:
            raise CtxlmError(f"unknown baseline {kind!r}; one of {', '.join(KINDS)}")
        params = load_params(params_file)
        _, train_tokens, val_tokens, embedding = load_token_folder(Path("data/tokens"))
        m, seq_len = params.model, params.baselines.seq_len
        device = pick_device()
        generator = seed_everything(params.seed)
        model = build_baseline(kind, ModelConfig.from_params(m, embedding), embedding, m.weight_tying, m.freeze_embedding,
                               seq_len, params.baselines.transformer_layers).to(device)
        train = SequenceData(train_tokens, seq_len, stride=seq_len)
        val = SequenceData(val_tokens, seq_len, stride=max(1, seq_len // 2))
        inputs = {"seed": params.seed, "model": m.model_dump(), "phase2": params.phase2.model_dump(),
                  "baselines": params.baselines.model_dump(), "tokens": folder_digest(Path("data/tokens"))}
        checkpoint = Checkpoint(f"baseline_{kind}", inputs)
        result = train_baseline(model, train, val, params.phase2, device, generator, checkpoint, f"baseline {kind}")
        model.load_state_dict(result.best_state, strict=False)  # strict=False: frozen E is not in it
        val_loss, val_acc = evaluate_sequences(model, val, device)
        best = result.history[result.best_epoch - 1]
        out = Path("metrics/baselines")
        write_csv_atomic(out / f"{kind}_curve.csv", pd.DataFrame(result.history))
        write_json_atomic(
            out / f"{kind}.json",
            {"val_ppl": math.exp(val_loss), "val_acc": val_acc, "val_loss": val_loss, "train_ppl": best["train_ppl"],
             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
             "params_trainable": count(model, trainable_only=True),
             "params_trainable_body": count(model.body, trainable_only=True) + count(model.norm),
             "tokens_per_s": round(train.tokens * result.epochs_run / result.seconds),
             "seconds": elapsed_since(start)},
        )
        print(f"baseline_neural {kind}: val ppl {math.exp(val_loss):.1f}, val acc {val_acc:.2%}, "
              f"{count(model, trainable_only=True):,} trainable parameters")
        checkpoint.clear()


if __name__ == "__main__":
    app()
