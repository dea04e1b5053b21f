"""Baselines: an LSTM or a small GPT-2 trained like phase 2 on the same tokens -> data/baselines/<kind>
(the best epoch's weights) and metrics/baselines/<kind>.json."""

import time
from pathlib import Path

import typer

from ctxlm import distributed
from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import atomic_dir, write_json_atomic, write_manifest
from ctxlm.data.shards import load_token_folder
from ctxlm.errors import CtxlmError
from ctxlm.evaluation.baselines import BASELINE_WEIGHTS, KINDS, SequenceData, baseline_metadata, build_baseline, evaluate_sequences, train_baseline
from ctxlm.evaluation.metrics import count, split_figures
from ctxlm.model import ModelConfig
from ctxlm.runtime import configure_device, device_name, pick_device, seed_everything
from ctxlm.training.checkpoint import Checkpoint, folder_digest
from ctxlm.training.curves import BASELINE_CURVES, CurveLogger
from ctxlm.training.phase2 import with_device_precision
from ctxlm.weights import load_trained_state, save_weights

app = make_app()


@app.command()
def main(kind: str = typer.Argument(..., help=" | ".join(KINDS)), params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run(f"baseline_neural {kind}", debug):
        start = time.perf_counter()
        if kind not in KINDS:
            raise CtxlmError(f"unknown baseline {kind!r}; one of {', '.join(KINDS)}")
        params = load_params(params_file)
        meta, splits, embedding = load_token_folder(Path("data/tokens"))
        m, seq_len = params.model, params.baselines.seq_len
        device = pick_device()
        generator = seed_everything(params.seed)
        phase2 = with_device_precision(params.phase2, device)
        model = build_baseline(kind, ModelConfig.from_params(m, embedding), embedding, m.weight_tying, m.freeze_embedding,
                               seq_len, params.baselines.transformer_layers).to(device)
        configure_device(params.runtime, device, [model.body])
        train = SequenceData(splits["train"], seq_len, stride=seq_len)
        val = SequenceData(splits["val"], seq_len, stride=max(1, seq_len // 2))
        inputs = {"seed": params.seed, "model": m.model_dump(), "phase2": phase2.model_dump(),
                  "baselines": params.baselines.model_dump(), "tokens": folder_digest(Path("data/tokens"))}
        checkpoint = Checkpoint(f"baseline_{kind}", inputs)
        curves = CurveLogger(BASELINE_CURVES / kind, step_key="epoch") if distributed.is_main() else None
        result = train_baseline(model, train, val, phase2, device, generator, checkpoint, f"baseline {kind}", sample_seed=params.seed,
                                on_epoch=curves)
        load_trained_state(model, result.best_state, f"baseline {kind}'s best epoch", "a bug: please report it")
        figures = {}
        for split in ("test", "val"):  # every process scores its share
            data = val if split == "val" else SequenceData(splits[split], seq_len, stride=max(1, seq_len // 2))
            loss, acc = evaluate_sequences(model, data, device)
            figures.update(split_figures(split, loss, acc, data.tokens, meta[split]))
        if not distributed.is_main():
            return
        metadata = baseline_metadata(model)
        with atomic_dir(Path("data/baselines") / kind) as weights:
            save_weights(weights, BASELINE_WEIGHTS, result.best_state, metadata)
            write_manifest(weights, {"config": metadata})
        best = result.history[result.best_epoch - 1]
        out = Path("metrics/baselines")
        write_json_atomic(
            out / f"{kind}.json",
            {**figures, "train_ppl": best["train_ppl"], "train_acc": best["train_acc"],
             "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
             "params_trainable": count(model, trainable_only=True),
             "params_trainable_body": count(model.body, trainable_only=True) + count(model.norm),
             "tokens_per_s": round(train.tokens * result.epochs_run / result.seconds), "precision": phase2.precision,
             "device": device_name(device), "seconds": elapsed_since(start)},
        )
        print(f"baseline_neural {kind}: test ppl {figures['test_ppl']:.1f}, val ppl {figures['val_ppl']:.1f}, "
              f"{count(model, trainable_only=True):,} trainable parameters")
        checkpoint.clear()


if __name__ == "__main__":
    app()
