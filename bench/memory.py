"""Peak resident memory of the real train_token and evaluate stages when the corpus grows 10x.

    python -m bench.memory [--small 200000] [--large 2000000] [--context-dim 512] [--dtype float32]

For each size a pipeline folder gets random token ids (validation a tenth of training), a random
small-vocabulary embedding (so that a whole epoch stays quick: the head is not what this measures),
a random ContextBlock, and C* from the real generate_cstar stage. Then train_token (one epoch) and
evaluate run as subprocesses, each alone, and their peak RSS is read from the kernel (wait4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import typer
import yaml

from bench.common import random_documents, run_stage, workdir
from ctxlm.config import Params
from ctxlm.data.files import atomic_dir, save_tokens, write_manifest
from ctxlm.data.shards import save_embedding
from ctxlm.model import ContextBlock, ModelConfig
from ctxlm.weights import CONTEXT_WEIGHTS, save_weights

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
VOCAB, EMBED_DIM = 1000, 64


def prepare_folder(folder: Path, train_tokens: int, context_dim: int, dtype: str) -> None:
    rng = np.random.default_rng(0)
    with atomic_dir(folder / "data/tokens") as out:
        counts = {}
        for split, n in (("train", train_tokens), ("val", train_tokens // 10), ("test", train_tokens // 10)):
            ids, offsets = random_documents(n, rng, VOCAB)
            save_tokens(out, split, ids, offsets)
            # random ids have no text: a nominal byte (and character) per token, so evaluate can run
            counts[split] = {"tokens": n, "documents": len(offsets) - 1, "predicted_bytes": n, "predicted_chars": n}
        save_embedding(out, torch.randn(VOCAB, EMBED_DIM, generator=torch.Generator().manual_seed(0)))
        write_manifest(out, {"embedding_model": "random", "vocab_size": VOCAB, "embed_dim": EMBED_DIM, **counts})
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, embed_dim=EMBED_DIM, context_dim=context_dim)
    with atomic_dir(folder / "data/context") as out:
        save_weights(out, CONTEXT_WEIGHTS, ContextBlock(cfg).state_dict(), cfg.to_metadata())
        write_manifest(out, {"config": cfg.to_metadata()})
    params = Params().model_dump()
    params["cstar"]["dtype"] = dtype
    params["phase2"].update(epochs=1, patience=1)
    params["evaluate"]["rank_rows"] = 2000
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


@app.command()
def main(small: int = 200_000, large: int = 2_000_000, context_dim: int = 512, dtype: str = "float32") -> None:
    root = workdir()
    rows = {}
    for label, tokens in (("small", small), ("large", large)):
        folder = root / label
        prepare_folder(folder, tokens, context_dim, dtype)
        _, generate_seconds = run_stage(folder, "generate_cstar")
        cstar_mb = sum(f.stat().st_size for f in (folder / "data/cstar").rglob("*.npy")) / 2**20
        rows[label] = {"tokens": tokens, "cstar_mb": cstar_mb, "generate_s": generate_seconds}
        for stage in ("train_token", "evaluate"):
            rows[label][stage] = run_stage(folder, stage)
    print(f"\npeak RSS of each stage alone; C* d_c {context_dim} stored {dtype}; embedding {VOCAB} x {EMBED_DIM} (random); threads {torch.get_num_threads()}")
    print(f"{'corpus':<8}{'train tokens':>14}{'C* on disk':>12}{'train_token':>14}{'evaluate':>12}{'seconds':>10}")
    for label, row in rows.items():
        seconds = row["generate_s"] + row["train_token"][1] + row["evaluate"][1]
        print(f"{label:<8}{row['tokens']:>14,}{row['cstar_mb']:>10,.0f}MB{row['train_token'][0]:>12,.0f}MB{row['evaluate'][0]:>10,.0f}MB{seconds:>10.1f}")
    peak = {label: max(row["train_token"][0], row["evaluate"][0]) for label, row in rows.items()}
    print(f"growth of the peak for {large / small:.0f}x the tokens: {peak['large'] / peak['small']:.2f}x")
    print(json.dumps({"tokens_small": small, "tokens_large": large, "peak_rss_mb_small": round(peak["small"], 1),
                      "peak_rss_mb_large": round(peak["large"], 1), "growth": round(peak["large"] / peak["small"], 3),
                      "train_token_rss_mb": {k: round(r["train_token"][0], 1) for k, r in rows.items()},
                      "evaluate_rss_mb": {k: round(r["evaluate"][0], 1) for k, r in rows.items()}}))


if __name__ == "__main__":
    app()
