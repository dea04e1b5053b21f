"""Phase 1: the ContextBlock alone, trained by fixed-point iteration on the OACD diversity loss."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from ctxlm import distributed
from ctxlm.cli import progress
from ctxlm.config import Phase1Params
from ctxlm.data.files import TokenSplit
from ctxlm.errors import CtxlmError
from ctxlm.model import ContextBlock, ContextBlocks, ModelConfig, input_features, token_windows
from ctxlm.runtime import adam, autocast, clip_gradients, seed_everything
from ctxlm.training.checkpoint import Checkpoint


def oacd_loss(contexts: torch.Tensor, centroid_weight: float) -> torch.Tensor:
    """(B, d_c) contexts -> -||C - mu||_F / B + w * ||mu||^2, mu the batch centroid."""
    centroid = contexts.mean(dim=0)
    dispersion = torch.linalg.vector_norm(contexts - centroid) / contexts.shape[0]
    return -dispersion + centroid_weight * centroid.square().sum()


def previous_contexts(contexts: torch.Tensor, doc_starts: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """(N, d_c) -> (N, d_c) with row i = contexts[i-1] (row 0: `before`, the context of the token
    before these rows, when given), and zeros at each document's first token."""
    prev = torch.roll(contexts, 1, dims=0)
    if before is not None:
        prev[0] = before
    return torch.where(doc_starts[:, None], 0.0, prev)  # not prev[doc_starts] = 0: a boolean mask waits for the device


def noise_source(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """Where phase 1's context noise is drawn: on a CPU the run's generator itself (after the initial
    contexts); on a GPU a generator of that device seeded with the run's seed, so the noise never
    crosses from the host. A CPU run and a GPU run of the same seed so draw different noise, each
    reproducible on its own device."""
    if device.type == "cpu":
        return generator
    return torch.Generator(device).manual_seed(generator.initial_seed())


@dataclass
class Phase1Result:
    iterations: int
    convergence_rate: float | None  # None after no iteration (phase1.max_iterations: 0)
    final_loss: float | None
    seconds: float
    history: list[dict]


def sample_documents(offsets: np.ndarray, max_tokens: int, seed: int) -> np.ndarray:
    """The documents phase 1 trains on (sorted indices): all when they hold at most `max_tokens`
    tokens; else whole documents in a seeded random order, each one taken if it still fits, until
    no more tokens fit. Bounds phase 1's memory and time, which grow with its tokens."""
    lengths = np.diff(offsets)
    if lengths.sum() <= max_tokens:
        return np.arange(len(lengths))
    chosen, total = [], 0
    for doc in np.random.default_rng(seed).permutation(len(lengths)):
        if total + lengths[doc] <= max_tokens:
            chosen.append(doc)
            total += int(lengths[doc])
    if not chosen:
        raise CtxlmError(f"phase1.max_tokens is {max_tokens:,}, shorter than every training document (the shortest has "
                         f"{int(lengths.min()):,} tokens); raise it")
    return np.sort(np.asarray(chosen))


def document_rows(offsets: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """The token indices of `documents` (sorted), in order."""
    return np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in documents]) if len(documents) else np.zeros(0, dtype=np.int64)


def process_rows(n: int, batch_tokens: int) -> tuple[slice, list[slice]]:
    """The tokens this process trains on in phase 1, and its mini-batches (slices of those rows).

    The stream's mini-batches are the same for any number of processes (consecutive, equal, about
    `batch_tokens` each: the OACD loss of a batch depends on which tokens it holds); each process
    takes a contiguous share of them."""
    batches = np.array_split(np.arange(n), math.ceil(n / batch_tokens))
    if len(batches) < distributed.world():
        raise CtxlmError(f"phase 1 cuts the {n:,} training tokens into {len(batches)} mini-batches (phase1.batch_tokens "
                         f"{batch_tokens}), fewer than the {distributed.world()} processes; lower phase1.batch_tokens or runtime.processes")
    mine = batches[distributed.share(len(batches))]
    lo, hi = int(mine[0][0]), int(mine[-1][-1]) + 1
    return slice(lo, hi), [slice(int(idx[0]) - lo, int(idx[-1]) + 1 - lo) for idx in mine]


def train_context_block(
    block: ContextBlock,
    x: torch.Tensor,
    doc_starts: torch.Tensor,
    params: Phase1Params,
    generator: torch.Generator,
    checkpoint: Checkpoint | None = None,
    on_iteration: Callable[[list[dict]], None] | None = None,
) -> Phase1Result:
    """Train `block` in place on the (N, d_x) token inputs of the training stream.

    Each iteration recomputes every context in parallel from the previous iteration's contexts
    (plus Gaussian noise, not at document starts), sums the OACD loss over equal mini-batches
    weighted by their size, clips the gradient and takes one Adam step. With several processes
    (ctxlm.distributed) each keeps and recomputes the contexts of its share of the mini-batches
    (process_rows), takes the last context of the share before it, and the gradients are summed
    over the processes before the step: the same arithmetic as one process, to rounding.

    With a checkpoint, the state after an iteration (weights, Adam, the noise generator, the
    contexts, these in a memory-mapped file that each process writes its rows of) is saved every few
    minutes, and a killed run resumes from it exactly, with any number of processes.
    `on_iteration(history)` follows every iteration (the history holds a dict per iteration so far,
    from the checkpoint's too when resumed)."""
    n = x.shape[0]
    d_c = block.cfg.context_dim
    device = x.device
    rows, batches = process_rows(n, params.batch_tokens)
    x, doc_starts = x[rows], doc_starts[rows]
    contexts = (torch.randn(n, d_c, generator=generator)[rows] * params.init_std).to(device)  # iteration 0, (n_mine, d_c)
    noise_generator = noise_source(generator, device)
    optimizer = adam(block.parameters(), params.lr, device)
    not_start = (~doc_starts).unsqueeze(1).float()
    history: list[dict] = []
    seconds_before = 0.0
    saved = checkpoint.load() if checkpoint else None
    if saved:
        block.load_state_dict(saved["block"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["rng"])
        noise_generator.set_state(saved["noise_rng"])
        history, seconds_before = saved["history"], saved["seconds"]
        contexts = torch.from_numpy(np.array(np.load(checkpoint.folder / saved["contexts_file"], mmap_mode="r")[rows])).to(device)
        if distributed.is_main():
            print(f"train_context: resuming from {checkpoint.folder} after iteration {len(history)}", flush=True)
    start = time.perf_counter()
    bar = progress(range(len(history) + 1, params.max_iterations + 1), initial=len(history), total=params.max_iterations, desc="phase 1", unit="it")
    for iteration in bar:
        if history and history[-1]["convergence_rate"] >= params.early_stop_convergence:
            break
        prev = previous_contexts(contexts, doc_starts, before=distributed.previous_row(contexts[-1]))  # the share before ends with it
        if params.context_noise > 0:
            noise = torch.randn(n, d_c, generator=noise_generator, device=device)[rows]  # drawn whole: the same noise for any number of processes
            prev += noise * params.context_noise * not_start
        optimizer.zero_grad(set_to_none=True)
        new = torch.empty_like(contexts)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batches:
            with autocast(params.precision, device):
                out = block(prev[batch], x[batch])[:, -1]  # (B, d_c) final layer
            out = out.float()
            loss = oacd_loss(out, params.centroid_weight) * (len(out) / n)
            loss.backward()
            total += loss.detach().double()
            new[batch] = out.detach()
        moved = (new - contexts).square().mean(dim=1)  # (n_mine,) per-token MSE since last iteration
        sums = distributed.all_sum(torch.stack([total, (moved < params.convergence_threshold).sum().double()]))
        loss_sum, converged = sums.tolist()
        if not math.isfinite(loss_sum):
            raise CtxlmError(
                f"train_context: the OACD loss became {loss_sum} at iteration {iteration}; "
                f"lower phase1.lr (now {params.lr}) or phase1.context_noise (now {params.context_noise})"
            )
        for p in block.parameters():
            distributed.all_sum(p.grad)
        grad_norm = clip_gradients(block.parameters(), params.gradient_clip)
        if not torch.isfinite(grad_norm):
            raise CtxlmError(f"train_context: the gradient became {grad_norm.item()} at iteration {iteration}; lower phase1.lr")
        optimizer.step()
        convergence = float(np.float32(converged) / np.float32(n))  # as a float32 mean of the 0/1 flags: earlier runs' figures stand
        contexts = new
        history.append({"iteration": iteration, "loss": loss_sum, "convergence_rate": convergence})
        if on_iteration and distributed.is_main():
            on_iteration(history)
        bar.set_postfix(loss=f"{loss_sum:.4f}", converged=f"{convergence:.1%}", refresh=False)
        if checkpoint and distributed.agree(checkpoint.due()):
            name = f"contexts-{iteration:05d}.npy"
            distributed.write_rows(checkpoint.folder / name, contexts.cpu().numpy(), rows, n)
            checkpoint.save({"block": block.state_dict(), "optimizer": optimizer.state_dict(), "rng": generator.get_state(), "noise_rng": noise_generator.get_state(),
                             "contexts_file": name, "history": history, "seconds": seconds_before + time.perf_counter() - start})
            if distributed.is_main():
                for old in checkpoint.folder.glob("contexts-*.npy"):
                    if old.name != name:
                        old.unlink()
    bar.close()
    return Phase1Result(
        iterations=len(history),
        convergence_rate=history[-1]["convergence_rate"] if history else None,
        final_loss=history[-1]["loss"] if history else None,
        seconds=seconds_before + time.perf_counter() - start,
        history=history,
    )


def stream_parts(offsets: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """The training documents cut into `parts` contiguous runs of whole documents, about equal in
    tokens: the j-th cut is the document boundary nearest to j/parts of the stream's tokens (the
    earlier one on a tie). [(first_doc, end_doc)], one per part."""
    documents, total = len(offsets) - 1, int(offsets[-1])
    targets = np.arange(1, parts) * total / parts
    after = np.clip(np.searchsorted(offsets, targets), 1, documents)  # the first boundary at or after each target
    cuts = np.where(targets - offsets[after - 1] <= offsets[after] - targets, after - 1, after)
    bounds = [0, *map(int, cuts), documents]
    ranges = list(zip(bounds[:-1], bounds[1:]))
    if any(first >= end for first, end in ranges):
        raise CtxlmError(f"model.context_blocks is {parts}, but the {documents:,} training documents ({total:,} tokens) "
                         f"cannot be cut into {parts} non-empty parts of about {total // parts:,} tokens; "
                         "lower model.context_blocks or train on more documents")
    return ranges


def block_seed(seed: int, block: int) -> int:
    """Block j's own seed: the run's seed for the first block (a one-block model is seeded as it
    always was), else one drawn from (seed, j), so that no other run's seed repeats it."""
    return seed if block == 0 else int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def initial_block(cfg: ModelConfig, seed: int, j: int) -> tuple[ContextBlock, torch.Generator]:
    """ContextBlock j of `cfg` as phase 1 starts it (from block_seed(seed, j)), and the generator
    that phase 1 then draws from: untrained, it is the control of `phase1.max_iterations: 0`."""
    generator = seed_everything(block_seed(seed, j))
    return ContextBlock(replace(cfg, context_blocks=1)), generator


@dataclass
class TrainedBlocks:
    blocks: ContextBlocks
    results: list[Phase1Result]  # one per block
    tokens: list[int]  # the tokens each block trained on
    documents: list[int]
    checkpoints: list[Checkpoint]  # to clear once the stage's outputs are written


def train_context_blocks(
    cfg: ModelConfig,
    embedding: torch.Tensor,
    train: TokenSplit,
    params: Phase1Params,
    seed: int,
    device: torch.device,
    inputs: dict,
    on_iteration: Callable[[int], Callable[[list[dict]], None] | None] = lambda block: None,
) -> TrainedBlocks:
    """Phase 1 of every ContextBlock of `cfg`, one after the other: block j is created from its own
    seed (block_seed) and trained on a seeded sample (phase1.max_tokens) of the j-th part of the
    training documents (stream_parts). `inputs` fingerprint the checkpoints (one per block; a
    finished block's weights are kept in its own, so that a run killed in a later block resumes
    there); `on_iteration(j)` gives block j's iteration callback."""
    trained, results, tokens, documents, checkpoints = [], [], [], [], []
    several = cfg.context_blocks > 1
    for j, (first, end) in enumerate(stream_parts(train.offsets, cfg.context_blocks)):
        block, generator = initial_block(cfg, seed, j)
        block = block.to(device)
        part_offsets = train.offsets[first : end + 1]
        rows = document_rows(train.offsets, first + sample_documents(part_offsets - part_offsets[0], params.max_tokens, block_seed(seed, j)))
        doc_starts = torch.from_numpy(train.doc_starts()[rows])
        ids = torch.from_numpy(np.asarray(train.ids[rows], dtype=np.int64))
        x = input_features(embedding, token_windows(ids, doc_starts, cfg.num_input_tokens)).to(device)  # (N_j, d_x), N_j <= max_tokens
        checkpoint = Checkpoint(f"train_context-block{j}" if several else "train_context", {**inputs, "block": j})
        saved = checkpoint.load() if several else None
        if saved and "finished" in saved:
            block.load_state_dict(saved["finished"]["block"])
            result = Phase1Result(**saved["finished"]["result"])
            if distributed.is_main():
                print(f"train_context: block {j} was trained by an earlier run (kept in {checkpoint.folder})", flush=True)
        else:
            if several and distributed.is_main():
                print(f"train_context: block {j} (of {cfg.context_blocks}): documents {first}-{end - 1}, {len(rows):,} tokens", flush=True)
            result = train_context_block(block, x, doc_starts.to(device), params, generator, checkpoint, on_iteration(j))
            if several:  # kept until the stage's outputs are written
                checkpoint.clear()
                checkpoint.save({"finished": {"block": block.state_dict(), "result": asdict(result)}})
        trained.append(block)
        results.append(result)
        tokens.append(len(rows))
        documents.append(int(doc_starts.sum()))
        checkpoints.append(checkpoint)
    return TrainedBlocks(ContextBlocks(cfg, trained), results, tokens, documents, checkpoints)
