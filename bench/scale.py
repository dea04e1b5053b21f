"""The whole pipeline at two corpus sizes: does any stage's memory or time grow faster than its work?

    python -m bench.scale [--small 1000000] [--large 10000000] [--context-dim 32]

For each size: a synthetic corpus (a .txt file of documents of 200-3,000 words drawn from a
Zipf-like vocabulary of 2,000 made-up words, blank lines between documents) large enough for
`size` training tokens, and a small local embedding model (a word-level fast tokenizer and a seeded
random 2,001 x 32 embedding, so that the head does not dominate). Then prepare -> tokenize ->
train_context -> generate_cstar -> train_token (one epoch) -> evaluate run as subprocesses, each
alone, in a folder of their own, with the default params but for: the source and model, the
training budget, 100k validation and test tokens at both sizes, 5 phase-1 iterations, C* stored
as bfloat16, and one epoch. Printed per stage and size: peak RSS (from the kernel, wait4), wall
time, and the disk its outputs take; then the growth ratios large/small. Phase 1 trains on at most
`phase1.max_tokens` (500k) tokens: the --phase1-all flag lifts the bound, to measure the other way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import typer
import yaml
from safetensors.torch import save_file

from bench.common import run_stage, workdir
from ctxlm.config import Params

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
WORDS, EMBED_DIM = 2000, 32
STAGES = ["prepare", "tokenize", "train_context", "generate_cstar", "train_token", "evaluate"]
OUTPUTS = {"prepare": ["data/corpus"], "tokenize": ["data/tokens"], "train_context": ["data/context"], "generate_cstar": ["data/cstar"],
           "train_token": ["data/token_model"], "evaluate": []}
HELD_OUT = 100_000


def write_corpus(path: Path, words: int, rng: np.random.Generator) -> None:
    """Documents of 200-3,000 words, `words` in all, one block of lines each (10 words a line)."""
    probabilities = 1.0 / np.arange(1, WORDS + 1)
    probabilities /= probabilities.sum()
    with path.open("w") as f:
        written = 0
        while written < words:
            n = int(min(rng.integers(200, 3000), words - written))
            ids = rng.choice(WORDS, size=n, p=probabilities)
            lines = [" ".join(f"w{i}" for i in ids[a : a + 10]) for a in range(0, n, 10)]
            f.write("\n".join(lines) + "\n\n")
            written += n


def write_embedding_model(folder: Path) -> None:
    """A word-level fast tokenizer over w0..w1999 (+ [UNK]) and a seeded random embedding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0} | {f"w{i}": i + 1 for i in range(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    embedding = torch.randn(len(vocab), EMBED_DIM, generator=torch.Generator().manual_seed(0))
    save_file({"embeddings.word_embeddings.weight": embedding}, folder / "model.safetensors")


def prepare_folder(folder: Path, train_tokens: int, context_dim: int, phase1_all: bool) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # 5% of documents for validation and 5% for test; the corpus is big enough for every budget
    write_corpus(folder / "corpus.txt", int(train_tokens / 0.9) + 20 * HELD_OUT, rng)
    write_embedding_model(folder / "embedding")
    params = Params().model_dump()
    params["data"].update(source="corpus.txt", val_fraction=0.05, test_fraction=0.05, max_train_tokens=train_tokens,
                          max_val_tokens=HELD_OUT, max_test_tokens=HELD_OUT)
    params["embedding"]["model"] = "embedding"
    params["model"]["context_dim"] = context_dim
    params["phase1"]["max_iterations"] = 5
    if phase1_all:
        params["phase1"]["max_tokens"] = 10 * train_tokens
    params["cstar"]["dtype"] = "bfloat16"
    params["phase2"].update(epochs=1, patience=1)
    params["evaluate"]["rank_rows"] = 2000
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def disk_mb(folder: Path, paths: list[str]) -> float:
    return sum(f.stat().st_size for p in paths for f in (folder / p).rglob("*") if f.is_file()) / 2**20


@app.command()
def main(small: int = 1_000_000, large: int = 10_000_000, context_dim: int = 32, phase1_all: bool = False, keep: bool = False) -> None:
    root = workdir()
    rows: dict[str, dict] = {}
    for label, tokens in (("small", small), ("large", large)):
        folder = root / label
        prepare_folder(folder, tokens, context_dim, phase1_all)
        rows[label] = {}
        for stage in STAGES:
            rss, seconds = run_stage(folder, stage)
            rows[label][stage] = {"peak_rss_mb": round(rss, 1), "seconds": round(seconds, 2), "disk_mb": round(disk_mb(folder, OUTPUTS[stage]), 1)}
            print(f"{label} {tokens:,} tokens: {stage:<15} peak RSS {rss:8,.0f} MB  {seconds:8.1f} s  "
                  f"outputs {rows[label][stage]['disk_mb']:8,.1f} MB", flush=True)
        if not keep:
            shutil.rmtree(folder / "data")
    growth = {stage: {"rss": round(rows["large"][stage]["peak_rss_mb"] / rows["small"][stage]["peak_rss_mb"], 3),
                      "time": round(rows["large"][stage]["seconds"] / rows["small"][stage]["seconds"], 2)} for stage in STAGES}
    print(f"\n{large / small:.0f}x the training tokens; embedding {WORDS + 1} x {EMBED_DIM}; d_c {context_dim}; threads {torch.get_num_threads()}; "
          f"phase 1 on {'every token' if phase1_all else 'at most phase1.max_tokens'}")
    print(f"{'stage':<16}{'RSS small':>11}{'RSS large':>11}{'growth':>8}{'time small':>12}{'time large':>12}{'growth':>8}{'disk large':>12}")
    for stage in STAGES:
        s, l = rows["small"][stage], rows["large"][stage]
        print(f"{stage:<16}{s['peak_rss_mb']:>9,.0f}MB{l['peak_rss_mb']:>9,.0f}MB{growth[stage]['rss']:>7.2f}x"
              f"{s['seconds']:>11.1f}s{l['seconds']:>11.1f}s{growth[stage]['time']:>7.2f}x{l['disk_mb']:>10,.0f}MB")
    print(json.dumps({"tokens_small": small, "tokens_large": large, "context_dim": context_dim, "phase1_all": phase1_all,
                      "stages": rows, "growth": growth,
                      "max_rss_growth": max(g["rss"] for g in growth.values()), "max_time_growth": max(g["time"] for g in growth.values())}))


if __name__ == "__main__":
    app()
