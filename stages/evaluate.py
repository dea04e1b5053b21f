"""Test and validation perplexity, accuracy and bits per byte, effective rank of the validation C*, parameter counts -> metrics/eval.json."""

import json
import time
from pathlib import Path

import numpy as np

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import write_json_atomic
from ctxlm.data.shards import CstarReader, load_token_folder
from ctxlm.evaluation.metrics import count, effective_rank, split_figures
from ctxlm.runtime import device_name, pick_device
from ctxlm.training.phase2 import SplitData, evaluate_split
from ctxlm.weights import load_context_blocks, load_token_model

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("evaluate", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        meta, splits, embedding = load_token_folder(Path("data/tokens"))
        context_block, cfg = load_context_blocks(Path("data/context"))
        model = load_token_model(Path("data/token_model"), embedding)
        device = pick_device()
        readers = {split: CstarReader(Path(f"data/cstar/{split}")) for split in ("test", "val")}  # each verified once
        figures = {}
        for split, reader in readers.items():
            data = SplitData(reader, splits[split], cfg.num_input_tokens, model.cfg.prev_contexts)
            data.place(device, f"the {split} split")
            loss, acc = evaluate_split(model.to(device), data, device, desc=f"evaluate {split}")
            figures.update(split_figures(split, loss, acc, len(data), meta[split]))

        val_cstar = readers["val"]
        rng = np.random.default_rng(params.seed)
        rows = np.sort(rng.choice(len(val_cstar), size=min(params.evaluate.rank_rows, len(val_cstar)), replace=False))
        sample = val_cstar.gather(rows)  # (rank_rows, L, d_C)
        ranks = {f"layer_{l + 1}": effective_rank(sample[:, l]) for l in range(sample.shape[1])}
        rank = ranks[f"layer_{sample.shape[1]}"]  # the final layer's C*: what OACD acts on

        phase2 = json.loads(Path("metrics/train_token.json").read_text())
        head = 0 if model.head is None else count(model.head)
        trainable_phase2 = count(model, trainable_only=True)
        metrics = {
            **figures,
            "train_ppl": phase2["train_ppl"],
            "train_val_ppl_ratio": phase2["train_ppl"] / figures["val_ppl"],
            "best_epoch": phase2["best_epoch"],
            "epochs_run": phase2["epochs_run"],
            "effective_rank": rank,
            "effective_rank_ratio": rank / cfg.cstar_dim,
            "effective_rank_by_layer": ranks,
            "params_total": count(context_block) + count(model),
            "params_trainable": count(context_block) + trainable_phase2,
            "params_trainable_phase1": count(context_block),
            "params_trainable_phase2": trainable_phase2,
            "params_blocks": count(context_block) + count(model.token_block),  # without E and head: what baselines match
            "params_embedding": model.embedding.numel(),
            "params_head": head,
            "val_tokens": len(splits["val"]),
            "test_tokens": len(splits["test"]),
            "device": device_name(device),
            "seconds": elapsed_since(start),
        }
        write_json_atomic(Path("metrics/eval.json"), metrics)
        print(f"evaluate: test ppl {figures['test_ppl']:.1f}, val ppl {figures['val_ppl']:.1f}, test acc {figures['test_acc']:.2%}, "
              f"test {figures['test_bits_per_byte']:.3f} bits/byte, effective rank {rank:.1f} ({rank / cfg.cstar_dim:.1%})")


if __name__ == "__main__":
    app()
