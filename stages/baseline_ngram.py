"""Baseline: interpolated Kneser–Ney trigram on the same token shards -> metrics/baselines/kneser_ney.json."""

import math
import time
from pathlib import Path

import numpy as np
import torch

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import write_json_atomic
from ctxlm.data.shards import load_token_folder
from ctxlm.evaluation.metrics import split_figures
from ctxlm.evaluation.ngram import KneserNeyTrigram
from ctxlm.runtime import device_name

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("baseline_ngram", debug):
        start = time.perf_counter()
        load_params(params_file)  # reads no key, but a bad params.yaml stops every stage the same way
        meta, splits, _ = load_token_folder(Path("data/tokens"))
        train = splits["train"]
        model = KneserNeyTrigram(meta["vocab_size"]).fit(np.asarray(train.ids), train.offsets)
        figures = {}
        for split in ("test", "val"):
            tokens = splits[split]
            loss, acc = model.evaluate(np.asarray(tokens.ids), tokens.offsets)
            figures.update(split_figures(split, loss, acc, int(tokens.has_next().sum()), meta[split]))
        train_loss, _ = model.evaluate(np.asarray(train.ids), train.offsets)  # on the whole split it counted
        print(f"baseline_ngram: Kneser-Ney trigram test ppl {figures['test_ppl']:.1f}, val ppl {figures['val_ppl']:.1f}, "
              f"train ppl {math.exp(train_loss):.1f}")
        write_json_atomic(
            Path("metrics/baselines/kneser_ney.json"),
            {**figures, "train_ppl": math.exp(train_loss), "params_trainable": 0,
             "ngram_types": len(model.c3.keys) + len(model.n_vw.keys) + len(model.n_w.keys),
             "discounts": [model.d1, model.d2, model.d3], "device": device_name(torch.device("cpu")), "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
