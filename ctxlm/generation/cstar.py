"""C*: the exact ContextBlock recurrence over every token, with the block frozen.

`naive_cstar` is the oracle: one token at a time, batch 1, through the module itself.
`cstar_into` computes the same recurrence for all documents of a shard side by side:
- documents are sorted by length, longest first, so the documents still running at step t are a
  prefix of the batch: the batch shrinks by slicing, with no padding and no masks;
- the token part of each layer (W_x x_i + b) does not depend on the previous context, so it is
  hoisted out of the sequential loop: computed once per distinct token id (`hoisting_tables`) and
  gathered per window of steps, leaving one (B, d_c) x (d_c, d_c) product per layer and step;
- each window's rows go to their place in token order in the output (a memory-mapped shard).
Several ContextBlocks (model.context_blocks) are independent recurrences: each fills its own d_c
columns of the output in turn.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ctxlm import distributed
from ctxlm.cli import progress
from ctxlm.config import CstarParams
from ctxlm.data.files import TokenSplit, atomic_dir, doc_starts, sha256, write_manifest
from ctxlm.data.shards import CSTAR_STORAGE, decode_cstar, encode_cstar
from ctxlm.errors import CtxlmError
from ctxlm.model import ContextBlock, ContextBlocks, input_features, token_windows
from ctxlm.training.checkpoint import Checkpoint

HOISTED_ROWS = 1 << 16  # token slots gathered per window of steps (bounds memory)
# Below this many running documents a step is a few small kernels whose cost is thread start-up:
# measured on a 2-core VM, one thread ran the narrow steps faster than two.
WIDE_BATCH = 32


@torch.no_grad()
def naive_cstar(block: ContextBlock | ContextBlocks, x: torch.Tensor) -> torch.Tensor:
    """One document's (T, d_x) inputs -> (T, L, d_C), token by token."""
    c = torch.zeros(1, block.cfg.cstar_dim, dtype=x.dtype, device=x.device)
    out = []
    for t in range(x.shape[0]):
        layers = block(c, x[t : t + 1])  # (1, L, d_C)
        out.append(layers[0])
        c = layers[:, -1]
    return torch.stack(out)


def hoisting_tables(block: ContextBlock, embedding: torch.Tensor, ids: torch.Tensor) -> list[list[torch.Tensor] | None]:
    """Per layer and input slot j, the token part of W_l x + b for each distinct id: (U, d_c).

    x_i is k normalised embeddings side by side, so W_x x_i = sum_j W_x,j LN(E[t_{i-k+1+j}]): one
    table row per distinct id replaces a (tokens x d_x x d_c) product. The bias is folded into slot 0;
    the row of id -1 (padding) is zero apart from it. Layers without token input get None."""
    k, d_e = block.cfg.num_input_tokens, block.cfg.embed_dim
    rows = input_features(embedding, ids.unsqueeze(1))  # (U, d_e)
    tables = []
    for layer in range(block.cfg.num_layers):
        _, w_x, bias = block.split_weights(layer)
        if w_x is None:
            tables.append(None)
            continue
        slots = [rows @ w_x[:, j * d_e : (j + 1) * d_e].T for j in range(k)]
        slots[0] = slots[0] + bias
        tables.append(slots)
    return tables


def cstar_into(
    block: ContextBlock | ContextBlocks,
    embedding: torch.Tensor,
    windows: torch.Tensor,
    offsets: np.ndarray,
    out: np.ndarray,
    on_tokens: Callable[[float], None] = lambda n: None,
) -> None:
    """Write the C* of documents `offsets` (D+1 token offsets into `windows` and `out`) into
    `out` (N, L, d_C); `windows` (N, k) are the id windows (model.token_windows) of those tokens.
    Each of several blocks writes its d_c columns, and `on_tokens` hears of its share of the tokens."""
    blocks = list(block) if isinstance(block, ContextBlocks) else [block]
    d_c = blocks[0].cfg.context_dim
    for j, part in enumerate(blocks):
        counted = on_tokens if len(blocks) == 1 else lambda n: on_tokens(n / len(blocks))
        block_cstar_into(part, embedding, windows, offsets, out[..., j * d_c : (j + 1) * d_c], counted)


@torch.no_grad()
def block_cstar_into(
    block: ContextBlock, embedding: torch.Tensor, windows: torch.Tensor, offsets: np.ndarray, out: np.ndarray, on_tokens: Callable[[int], None]
) -> None:
    """`cstar_into` for one block: `out` (N, L, d_c) may be a column slice of a wider array."""
    L, d_c = block.cfg.num_layers, block.cfg.context_dim
    device = embedding.device
    ids, slot_rows = torch.unique(windows, return_inverse=True)  # slot_rows: (N, k) rows into the tables
    tables = hoisting_tables(block, embedding, ids)
    weights = [block.split_weights(layer) for layer in range(L)]
    biases = [bias for _, _, bias in weights]
    recurrent = [w_c.T.contiguous() for w_c, _, _ in weights]  # (d_c, d_c)
    norms = [(norm.weight, norm.bias, norm.eps) for norm in block.norms]
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts = torch.from_numpy(offsets[:-1][order])  # (D,) longest document first
    running = np.sort(lengths)  # ascending, to count the documents still running at step t
    total = int(lengths.max()) if len(lengths) else 0
    c = torch.zeros(len(order), d_c, dtype=recurrent[0].dtype, device=device)
    t0, threads = 0, torch.get_num_threads()
    while t0 < total:
        n = len(running) - int(np.searchsorted(running, t0, side="right"))  # documents still running
        steps = max(1, min(total - t0, HOISTED_ROWS // n))
        at = t0 + np.arange(steps)
        width = len(running) - np.searchsorted(running, at, side="right")  # (steps,) running at each step
        index = (torch.from_numpy(at)[:, None] + starts[None, :n]).clamp(max=len(windows) - 1)  # (steps, n)
        valid = torch.arange(n)[None, :] < torch.from_numpy(width)[:, None]
        slots = slot_rows[index.to(device)]  # (steps, n, k) rows into the tables
        hoisted = []  # per layer: (steps, n, d_c)
        for layer in range(L):
            if tables[layer] is None:
                hoisted.append(biases[layer].expand(steps, n, d_c))
            else:
                hoisted.append(functools.reduce(torch.Tensor.add_, [table[slots[..., j]] for j, table in enumerate(tables[layer])]))
        computed = torch.empty(int(width.sum()), L, d_c, dtype=c.dtype, device=device)  # in the order of index[valid]: step-major, sorted documents
        first_row = np.concatenate([[0], np.cumsum(width)])
        for s in range(steps):
            m = int(width[s])
            c = c[:m]
            torch.set_num_threads(threads if m >= WIDE_BATCH else 1)
            layers = []
            for layer in range(L):
                weight, bias, eps = norms[layer]
                update = F.gelu(torch.addmm(hoisted[layer][s, :m], c, recurrent[layer])).add_(c)
                c = F.layer_norm(update, (d_c,), weight, bias, eps)
                layers.append(c)
            torch.stack(layers, dim=1, out=computed[first_row[s] : first_row[s + 1]])
        torch.set_num_threads(threads)
        if not torch.stack(torch.aminmax(computed)).isfinite().all():  # NaN propagates to min and max: one pass, no (N, L, d_c) mask
            raise CtxlmError(
                f"C* is not finite (NaN or inf) by step {t0 + steps} of a document: the ContextBlock weights are bad; "
                "retrain them (dvc repro --force train_context), with a lower phase1.lr if they diverged"
            )
        out[index[valid].numpy()] = encode_cstar(computed, out.dtype)
        on_tokens(int(valid.sum()))
        t0 += steps


def split_windows(tokens: TokenSplit, k: int) -> torch.Tensor:
    """(N, k) id windows of a whole split (see model.token_windows)."""
    return document_windows(tokens.ids, tokens.offsets, k)


def document_windows(ids: np.ndarray, offsets: np.ndarray, k: int) -> torch.Tensor:
    """(N, k) id windows of the whole documents `ids` (N,) with `offsets` (D+1,) from 0 to N."""
    return token_windows(torch.from_numpy(np.asarray(ids, dtype=np.int64)), torch.from_numpy(doc_starts(offsets, len(ids))), k)


def shard_ranges(offsets: np.ndarray, shard_tokens: int) -> list[tuple[int, int]]:
    """Split documents into consecutive groups of whole documents of about `shard_tokens` tokens:
    [(first_doc, end_doc)]."""
    ranges, first = [], 0
    for d in range(1, len(offsets)):
        if offsets[d] - offsets[first] >= shard_tokens or d == len(offsets) - 1:
            ranges.append((first, d))
            first = d
    return ranges


def cstar_bytes(tokens: int, cfg, dtype: str) -> int:
    """Size on disk of the C* of `tokens` tokens stored as `dtype`."""
    return tokens * cfg.num_layers * cfg.cstar_dim * CSTAR_STORAGE[dtype].itemsize


def generate_split(
    block: ContextBlock | ContextBlocks,
    embedding: torch.Tensor,
    tokens: TokenSplit,
    folder,
    shard_tokens: int,
    desc: str,
    dtype: str = "float32",
    done: Sequence[dict] = (),
    on_shard: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Write the exact C* of every token of `tokens` as .npy shards in `folder`, in token order,
    stored as `dtype` (computed in fp32, rounded once when stored); returns the shard list for the
    manifest. The first len(done) shards are taken as already in `folder` (a resumed run);
    `on_shard(entry)` is called once each new shard is complete on disk. With several processes
    (ctxlm.distributed) they take the shards in turn, a round of one shard each at a time, and
    `on_shard` follows each round, in the first process only."""
    device = next(block.parameters()).device
    L, d_c = block.cfg.num_layers, block.cfg.cstar_dim
    shards = list(done)
    ranges = shard_ranges(tokens.offsets, shard_tokens)
    bar = progress(total=len(tokens), initial=sum(s["rows"] for s in shards), desc=desc, unit="tok", unit_scale=True)
    processes = distributed.world()
    for round_start in range(len(shards), len(ranges), processes):
        this_round = []
        for index in range(round_start, min(round_start + processes, len(ranges))):
            first, end = ranges[index]
            a, b = int(tokens.offsets[first]), int(tokens.offsets[end])
            this_round.append({"file": f"shard-{index:05d}.npy", "rows": b - a})
            if index - round_start != distributed.rank():
                continue
            name = this_round[-1]["file"]
            out = np.lib.format.open_memmap(folder / name, mode="w+", dtype=CSTAR_STORAGE[dtype], shape=(b - a, L, d_c))
            offsets = tokens.offsets[first : end + 1] - a
            windows = document_windows(tokens.ids[a:b], offsets, block.cfg.num_input_tokens).to(device)  # a shard's only: memory
            cstar_into(block, embedding, windows, offsets, out, bar.update)
            out.flush()
            for doc in sorted({first, end - 1}):  # the first and the last document: the last must start from a reset context
                start, stop = int(tokens.offsets[doc]), int(tokens.offsets[doc + 1])
                check_against_oracle(block, embedding, windows[start - a : stop - a], out[start - a : stop - a], f"{desc}, {name}, document {doc}")
            del out
        distributed.barrier()  # the round's shards are all on disk
        bar.update(sum(entry["rows"] for entry in this_round[1:]))  # the other processes' shards
        shards += this_round
        if on_shard and distributed.is_main():
            for entry in this_round:
                on_shard(entry)
    bar.close()
    return shards


ORACLE_TOKENS = 16
STORAGE_RTOL = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}  # one unit in the last place stored


def check_against_oracle(block: ContextBlock | ContextBlocks, embedding: torch.Tensor, document: torch.Tensor, stored: np.ndarray, where: str) -> None:
    """Compare the stored C* of a document's first tokens with `naive_cstar`, the per-token oracle:
    a cheap guard, on every device, that the fast recurrence computed what the model means
    (tolerance: fp32 rounding, plus the rounding of the storage dtype)."""
    n = min(ORACLE_TOKENS, len(document))
    expected = naive_cstar(block, input_features(embedding, document[:n])).float().cpu()
    got = decode_cstar(np.asarray(stored[:n])).float()
    rtol = STORAGE_RTOL.get("bfloat16" if stored.dtype == np.uint16 else str(stored.dtype), 0.0)  # float64 (tests): 0
    error = (got - expected).abs() - rtol * expected.abs()
    if error.max().item() > 1e-4:
        token = int(error.amax(dim=(1, 2)).argmax())
        raise CtxlmError(f"{where}: the C* generator disagrees with the per-token recurrence at the document's token {token} "
                         f"by {error.max().item():.2e} (beyond rounding): a bug or a numerical fault on {embedding.device}; please report it")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse before any work when the disk of `folder` has less than `needed` bytes free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CtxlmError(f"{what} needs {human_bytes(needed)} but {Path(folder).resolve()} has only {human_bytes(free)} free")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _intact_prefix(folder: Path, recorded: list[dict]) -> list[dict]:
    """The recorded shards up to the first whose file is missing or changed since."""
    intact = []
    for entry in recorded:
        path = folder / entry["file"]
        if not path.is_file() or sha256(path) != entry["sha256"]:
            break
        intact.append(entry)
    return intact


def write_cstar(
    block: ContextBlock | ContextBlocks, embedding: torch.Tensor, splits: dict[str, TokenSplit], final: Path, params: CstarParams, checkpoint: Checkpoint
) -> dict[str, float]:
    """The C* of every split -> `final`/<split>/ shards with manifests; returns tokens/s per split.

    Shards are written into the checkpoint's folder and recorded (with their checksum) as each one
    completes, so a killed run redoes at most one shard (per process); the splits move into `final`
    when all are done. With several processes, every process returns the rates; the first writes."""
    cfg = block.cfg
    state = checkpoint.load() or {"done": {split: [] for split in splits}}
    for split in splits:
        state["done"][split] = _intact_prefix(checkpoint.folder / split, state["done"][split])
    remaining = sum(len(tokens) - sum(e["rows"] for e in state["done"][split]) for split, tokens in splits.items())
    check_free_space(  # twice: the shards, then DVC's copy of them in its cache
        final.parent, 2 * cstar_bytes(remaining, cfg, params.dtype),
        f"C* ({remaining:,} tokens x {cfg.num_layers} layer(s) x {cfg.cstar_dim} x {params.dtype}, and DVC's cache copy)",
    )
    rates = {}
    for split, tokens in splits.items():
        start = time.perf_counter()
        folder = checkpoint.folder / split
        folder.mkdir(parents=True, exist_ok=True)

        def record(entry: dict, split=split, folder=folder) -> None:
            state["done"][split].append({**entry, "sha256": sha256(folder / entry["file"])})
            checkpoint.save(state)

        done = [{"file": e["file"], "rows": e["rows"]} for e in state["done"][split]]
        shards = generate_split(block, embedding, tokens, folder, params.shard_tokens, f"C* {split}", params.dtype, done, record)
        if distributed.is_main():
            checksums = {entry["file"]: entry["sha256"] for entry in state["done"][split]}
            write_manifest(folder, {"config": cfg.to_metadata(), "rows": len(tokens), "dtype": params.dtype, "shards": shards}, checksums)
        rates[f"{split}_tokens_per_s"] = round(len(tokens) / (time.perf_counter() - start))
    if not distributed.is_main():
        return rates
    with atomic_dir(final) as out:
        for split in splits:
            os.replace(checkpoint.folder / split, out / split)
    checkpoint.clear()
    return rates
