"""Shared set-up for the benchmarks: offline default tokens, random documents, a ContextBlock, C*
shards in a temp folder, and running a stage as a subprocess."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctxlm.config import DataParams
from ctxlm.data.embedding import load_embedding
from ctxlm.data.files import TokenSplit, save_tokens, write_manifest
from ctxlm.data.shards import CstarReader
from ctxlm.data.sources import load_documents
from ctxlm.data.tokenizer import load_tokenizer, resolve_model_dir
from ctxlm.data.tokens import tokenize_documents
from ctxlm.generation.cstar import cstar_into, generate_split
from ctxlm.model import ContextBlock, ModelConfig
from ctxlm.weights import load_context_blocks


def batched_cstar(block: ContextBlock, embedding: torch.Tensor, docs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Several documents' (T_b, k) id windows -> their (T_b, L, d_c) C*, through ctxlm's generator
    (`cstar_into`) in memory: what the benchmarks and the tests compare with the per-token oracle."""
    windows = torch.cat(docs)
    offsets = np.concatenate([[0], np.cumsum([d.shape[0] for d in docs])])
    dtype = np.float64 if embedding.dtype == torch.float64 else np.float32
    out = np.zeros((len(windows), block.cfg.num_layers, block.cfg.cstar_dim), dtype=dtype)
    cstar_into(block, embedding, windows, offsets, out)
    result = torch.from_numpy(out)
    return [result[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def offline_tokens(folder: Path, train_tokens: int, val_tokens: int) -> tuple[TokenSplit, TokenSplit, torch.Tensor]:
    """The first tokens of the offline default corpus (Shakespeare, MiniLM), saved as token shards."""
    model_dir = resolve_model_dir("minilm")
    tokenizer = load_tokenizer(model_dir)
    documents = load_documents(DataParams(), seed=0)
    for split, budget in (("train", train_tokens), ("val", val_tokens)):
        split_tokens = tokenize_documents(tokenizer, documents.loc[documents.split == split, "text"].tolist(), budget)
        ids, offsets = split_tokens.ids, split_tokens.offsets
        save_tokens(folder, split, ids, offsets)
    return TokenSplit(folder, "train"), TokenSplit(folder, "val"), load_embedding(model_dir)


def random_documents(tokens: int, rng: np.random.Generator, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) of documents of 200-3,000 random ids below `vocab`, `tokens` in all."""
    lengths = []
    while sum(lengths) < tokens:
        lengths.append(int(min(rng.integers(200, 3000), tokens - sum(lengths))))
    return rng.integers(0, vocab, tokens, dtype=np.int32), np.concatenate([[0], np.cumsum(lengths)])


def context_block(embedding: torch.Tensor) -> tuple[ContextBlock, str]:
    """The trained block from data/context when present, else a seeded random one at default size."""
    if Path("data/context/manifest.json").is_file():
        return load_context_blocks(Path("data/context"))[0], "trained (data/context)"
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=embedding.shape[0], embed_dim=embedding.shape[1])
    return ContextBlock(cfg).eval().requires_grad_(False), "random (run dvc repro for trained weights)"


def cstar_shards(folder: Path, block: ContextBlock, embedding: torch.Tensor, tokens: TokenSplit, split: str) -> CstarReader:
    out = folder / split
    out.mkdir()
    shards = generate_split(block, embedding, tokens, out, shard_tokens=1 << 18, desc=f"C* {split}")
    write_manifest(out, {"config": block.cfg.to_metadata(), "shards": shards})
    return CstarReader(out)


REPO = Path(__file__).resolve().parents[1]


def run_stage(folder: Path, stage: str, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run `python -m stages.<stage>` in `folder` (a pipeline folder with its params.yaml), alone,
    with `env` added; -> (its peak RSS in MB, from the kernel, and its wall seconds). A failed stage
    ends the benchmark with its error."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", f"stages.{stage}"], cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read().decode()  # to the end, i.e. the stage's exit: a full pipe would stall it
    process.stderr.close()
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: stage {stage} failed in {folder}:\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def product_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, repeats: int = 20, backward: bool = True) -> float:
    """FLOP/s of plain products of the head's shapes: (m, k) x (k, n) for the logits and, with
    `backward`, (m, n) x (n, k) for the gradient of the hidden state; the fastest of `repeats`
    timings (a ceiling: on a shared machine an average would let noise lower it). The ceiling the
    head's rate is stated against."""
    h, w, g = (torch.randn(*shape, device=device).to(dtype) for shape in ((m, k), (n, k), (m, n)))
    products = (lambda: (h @ w.T, g @ w)) if backward else (lambda: h @ w.T)
    products()
    fastest = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        products()
        synchronize(device)
        fastest = min(fastest, time.perf_counter() - start)
    return (4 if backward else 2) * m * k * n / fastest


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ctxlm-bench-"))


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start

