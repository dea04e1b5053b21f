"""Phase 2: the TokenBlock (and head, and E when not frozen) trained on exact C* read from shards."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ctxlm import distributed
from ctxlm.cli import progress
from ctxlm.config import Phase2Params
from ctxlm.data.files import TokenSplit, document_first
from ctxlm.data.shards import CstarReader, decode_cstar, decode_rows, stored_tensor
from ctxlm.errors import CtxlmError
from ctxlm.generation.cstar import document_windows, shard_ranges
from ctxlm.head import CHUNK, head_loss, head_scores
from ctxlm.model import TokenModel
from ctxlm.runtime import adam, autocast, clip_gradients, release_free_memory, resolve_precision
from ctxlm.training.checkpoint import Checkpoint
from ctxlm.weights import load_trained_state


def training_loss(model: TokenModel, contexts, windows, targets, precision: str, device: torch.device, chunk: int = CHUNK) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch, through the chunked head."""
    with autocast(precision, device):
        hidden = model.hidden(contexts, windows)
    return head_loss(hidden, *model.head_parameters(), targets, precision, chunk)


# An epoch's order is random at two scales so that C* can be read in bounded memory (see
# block_shuffled_order); LOAD_BYTES of stored C* are read at a time.
SHUFFLE_BLOCK = 2048
SHUFFLE_ROWS = 1 << 15
LOAD_BYTES = 32 << 20
WINDOW_ROWS = 1 << 20  # tokens whose id windows are built at once (their int64 temporaries bound the memory)


def block_shuffled_order(n: int, generator: torch.Generator) -> np.ndarray:
    """A seeded permutation of range(n): blocks of SHUFFLE_BLOCK consecutive items in random order,
    then every SHUFFLE_ROWS items shuffled among themselves. A batch so mixes 16 random places of
    the corpus, while a reader needs the rows of one such group at a time, not the whole split."""
    blocks = torch.randperm(-(-n // SHUFFLE_BLOCK), generator=generator).numpy().astype(np.int32)  # int32: half the memory
    order = (blocks[:, None] * SHUFFLE_BLOCK + np.arange(SHUFFLE_BLOCK, dtype=np.int32)).reshape(-1)
    order = order[order < n]
    for a in range(0, n, SHUFFLE_ROWS):
        group = order[a : a + SHUFFLE_ROWS]
        order[a : a + SHUFFLE_ROWS] = group[torch.randperm(len(group), generator=generator).numpy()]
    return order


def example_rows(positions: np.ndarray, offsets: np.ndarray, p: int) -> np.ndarray:
    """(M,) positions -> (M, 1 + p) the C* rows each example reads: its own, then previous_positions."""
    rows = positions[:, None].astype(np.int64)
    return np.concatenate([rows, previous_positions(positions, offsets, p)], axis=1) if p else rows


def previous_positions(positions: np.ndarray, offsets: np.ndarray, p: int) -> np.ndarray:
    """(M,) token positions -> (M, p) the positions 1 .. p before each, -1 where that is before the
    start of the position's document (`offsets`: the split's document offsets)."""
    first = document_first(offsets, positions)  # (M,)
    previous = positions[:, None].astype(np.int64) - np.arange(1, p + 1)
    return np.where(previous >= first[:, None], previous, -1)


def with_previous(stored: np.ndarray, index: np.ndarray, p: int) -> torch.Tensor:
    """Decoded C* of `index` (M, 1 + p) rows of `stored` (-1: none): (M, L + p, d_c), each
    position's L layers followed by the final layer of its p previous positions, zeros for -1."""
    contexts = decode_cstar(stored[index[:, 0]])  # (M, L, d_c)
    if p == 0:
        return contexts
    previous = decode_cstar(stored[np.maximum(index[:, 1:], 0).ravel()])[:, -1].reshape(len(index), p, stored.shape[-1])  # (M, p, d_c); M may be 0
    previous = torch.where(torch.from_numpy(index[:, 1:] >= 0)[..., None], previous, 0.0)
    return torch.cat([contexts, previous], dim=1)


# A split is kept whole on a GPU (SplitData.keep_on) when it takes at most this share of the GPU's
# free memory: the rest stays for the model, its activations and the optimizer.
RESIDENT_SHARE = 0.25


def resident_budget(device: torch.device) -> int:
    """The most bytes a split may take to be kept whole on `device`: RESIDENT_SHARE of a GPU's free
    memory; on a CPU, LOAD_BYTES, what reading from the shards holds at a time anyway, so that the
    process's memory stays as bounded as streaming keeps it (reading costs a CPU little; a GPU
    pays for it with a copy and a wait every batch)."""
    if device.type == "cuda":
        return int(RESIDENT_SHARE * torch.cuda.mem_get_info(device)[0])
    return LOAD_BYTES


@dataclass
class ResidentSplit:
    """A whole split on one device: (N, L, d_C) C* as stored (bf16 or float), (N, k) int32 windows,
    (N,) int32 targets, (N,) int32 first token of each token's document."""

    cstar: torch.Tensor
    windows: torch.Tensor
    targets: torch.Tensor
    document_first: torch.Tensor

    def examples(self, positions: torch.Tensor, p: int):
        """(B,) int64 positions on the device -> what SplitData.batch gives: (B, L + p, d_C) C*, its
        last layer's p previous rows after it (zeros before the document's start), windows, targets."""
        contexts = decode_rows(self.cstar[positions])  # (B, L, d_C)
        if p:
            previous = positions[:, None] - torch.arange(1, p + 1, device=positions.device)  # (B, p)
            inside = previous >= self.document_first[positions][:, None].long()
            rows = decode_rows(self.cstar[previous.clamp(min=0), -1])  # (B, p, d_C)
            contexts = torch.cat([contexts, torch.where(inside[..., None], rows, 0.0)], dim=1)
        return contexts, self.windows[positions].long(), self.targets[positions].long()


class SplitData:
    """A split's training examples: position i (C*_i, with the final-layer C* of the `prev_contexts`
    positions before it, and the id window ending at i) -> target t_{i+1}."""

    def __init__(self, cstar: CstarReader, tokens: TokenSplit, k: int, prev_contexts: int = 0):
        if len(cstar) != len(tokens):
            raise CtxlmError(f"C* has {len(cstar)} rows but the token split {len(tokens)} tokens; rerun: dvc repro --force generate_cstar")
        self.cstar = cstar
        self.prev_contexts, self.offsets = prev_contexts, tokens.offsets
        # int32 per token: these are the only arrays that grow with the corpus (C* is read as needed)
        self.positions = np.flatnonzero(tokens.has_next()).astype(np.int32)  # (M,)
        self.windows = torch.empty(len(tokens), k, dtype=torch.int32)  # (N, k), built a group of documents at a time
        for first, end in shard_ranges(tokens.offsets, WINDOW_ROWS):
            a, b = int(tokens.offsets[first]), int(tokens.offsets[end])
            self.windows[a:b] = document_windows(tokens.ids[a:b], tokens.offsets[first : end + 1] - a, k)
        self.targets = torch.zeros(len(tokens), dtype=torch.int32)
        self.targets[:-1] = torch.from_numpy(np.array(tokens.ids[1:], dtype=np.int32))
        self.resident: ResidentSplit | None = None

    def resident_bytes(self) -> int:
        """What keeping the split on a device takes: its stored C*, windows, targets and document starts."""
        return len(self.cstar) * self.cstar.row_bytes + self.windows.nbytes + 2 * self.targets.nbytes

    def keep_on(self, device: torch.device, budget: int | None = None) -> bool:
        """Load the whole split onto `device` once, when it takes at most `budget` bytes (by default
        resident_budget(device)); its batches are then gathered there. Otherwise (False) they keep
        being read from the shards, in bounded memory."""
        budget = resident_budget(device) if budget is None else budget
        if self.resident_bytes() > budget:
            return False
        cstar = stored_tensor(self.cstar.read(np.arange(len(self.cstar))))
        first = document_first(self.offsets, np.arange(len(self.cstar))).astype(np.int32)  # (N,)
        self.resident = ResidentSplit(cstar.to(device), self.windows.to(device), self.targets.to(device), torch.from_numpy(first).to(device))
        return True

    def place(self, device: torch.device, name: str) -> None:
        """keep_on(device) unless already resident, saying which way the split `name` is read."""
        if self.resident is None:
            resident = self.keep_on(device)
            if distributed.is_main():
                how = f"kept on {device}" if resident else f"read from its shards (over the {resident_budget(device) / 2**20:,.0f} MiB kept whole on {device})"
                print(f"{name}: {self.resident_bytes() / 2**20:,.1f} MiB, {how}", flush=True)

    def __len__(self) -> int:
        return len(self.positions)

    def _examples(self, positions: np.ndarray, contexts: torch.Tensor, device: torch.device):
        index = torch.from_numpy(positions).long()
        batch = (contexts, self.windows[index].long(), self.targets[index].long())
        if device.type == "cuda":  # from pinned memory, a copy to the GPU does not wait for the GPU's queue
            return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
        return batch

    def _read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The stored C* rows that `positions` need, each read once in file order, and (M, 1 + p)
        indices into them (-1: before the document's start)."""
        rows = example_rows(positions, self.offsets, self.prev_contexts)
        ordered, where = np.unique(rows[rows >= 0], return_inverse=True)
        index = np.full(rows.shape, -1, dtype=np.int64)
        index[rows >= 0] = where.ravel()
        return self.cstar.read(ordered), index

    def batch(self, positions: np.ndarray, device: torch.device):
        """-> (B, L + p, d_c) C* with the previous contexts, (B, k) windows, (B,) targets."""
        if self.resident is not None:
            batch = self.resident.examples(torch.from_numpy(positions).to(self.resident.cstar.device, torch.int64), self.prev_contexts)
            return tuple(t.to(device) for t in batch)
        stored, index = self._read(positions)
        return self._examples(positions, with_previous(stored, index, self.prev_contexts), device)

    def batches(self, order: np.ndarray, sizes: int | Sequence[int], device: torch.device):
        """The batches of consecutive examples of `order` (indices into positions): `sizes` examples
        each (an int) or the given sizes. C* is read about LOAD_BYTES at a time, in file order, and
        decoded a batch at a time; or, when the split is resident (keep_on), gathered on its device
        (the epoch's positions copied there once)."""
        bounds = batch_bounds(len(order), sizes)
        if self.resident is not None:
            positions = torch.from_numpy(self.positions[order]).to(self.resident.cstar.device, torch.int64)
            for a, b in zip(bounds[:-1], bounds[1:]):
                yield tuple(t.to(device) for t in self.resident.examples(positions[a:b], self.prev_contexts))
            return
        rows_per_example = (1 + self.prev_contexts) * self.cstar.row_bytes
        per_load = max(1, LOAD_BYTES // (rows_per_example * max(1, int(np.diff(bounds).max(initial=1)))))
        for g in range(0, len(bounds) - 1, per_load):
            group = bounds[g : g + per_load + 1]
            positions = self.positions[order[group[0] : group[-1]]]
            stored, index = self._read(positions)
            for a, b in zip(group[:-1] - group[0], group[1:] - group[0]):
                yield self._examples(positions[a:b], with_previous(stored, index[a:b], self.prev_contexts), device)
            del stored
            release_free_memory()


def batch_bounds(n: int, sizes: int | Sequence[int]) -> np.ndarray:
    """Offsets [0, ..., n] of consecutive batches of n items: `sizes` items each (an int, the last
    batch smaller), or the given sizes."""
    if isinstance(sizes, int):
        return np.append(np.arange(0, n, sizes), n) if n else np.zeros(1, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])


@torch.no_grad()
def evaluate_split(model: TokenModel, data: SplitData, device: torch.device, batch: int = 4096,
                   desc: str = "evaluate", sample: np.ndarray | None = None) -> tuple[float, float]:
    """Mean cross-entropy (nats) and argmax accuracy, in fp32, over every position of the split or
    over the examples `sample` (sorted indices into data.positions)."""
    model.eval()
    order = np.arange(len(data)) if sample is None else sample
    order = order[distributed.share(len(order))]
    weight, bias = model.head_parameters()
    batches = (head_scores(model.hidden(contexts, windows), weight, bias, targets) for contexts, windows, targets in data.batches(order, batch, device))
    return score_batches(batches, len(order), desc, device, shared=True)


def score_batches(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], positions: int, desc: str,
                  device: torch.device, shared: bool = False) -> tuple[float, float]:
    """Mean cross-entropy (nats) and argmax accuracy of batches of (B,) losses and (B,) hits
    (head.head_scores) that hold `positions` positions in all: the scoring that ctxlm and the neural
    baselines share. The sums stay on `device`, the losses' device, until the end (no wait for it per
    batch); `shared`: the batches are this process's share of the positions, and the sums are added
    over the processes."""
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, scored
    bar = progress(total=positions, desc=desc, unit="tok", unit_scale=True, leave=False)
    for losses, correct in batches:
        totals[0] += losses.double().sum()
        totals[1] += correct.sum()
        totals[2] += len(losses)
        bar.update(len(losses))
    bar.close()
    if shared:
        distributed.all_sum(totals)
    loss_sum, correct, scored = totals.tolist()
    return loss_sum / scored, correct / scored


def with_device_precision(params: Phase2Params, device: torch.device) -> Phase2Params:
    """`params` with precision "auto" resolved to what `device` runs natively (runtime.resolve_precision)."""
    return params.model_copy(update={"precision": resolve_precision(params.precision, device)})


def seeded_sample(population: int, size: int, seed: int) -> np.ndarray:
    """`size` distinct indices of range(population) (all when size >= population), seeded, sorted.

    The fixed sample of training examples that measures the train loss after every epoch: drawn
    with its own generator, so that measuring changes nothing else (not the shuffling)."""
    if size >= population:
        return np.arange(population)
    return np.sort(np.random.default_rng(seed).choice(population, size=size, replace=False))


def trained_state(model: TokenModel) -> dict[str, torch.Tensor]:
    """A copy of the model's state without its frozen parameters (E when frozen): what training changes."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


@dataclass
class Phase2Result:
    best_state: dict
    best_epoch: int
    epochs_run: int
    history: list[dict]
    seconds: float


@dataclass
class TrainingTask:
    """What the epoch loop needs of a model and its data; phase 2 and the neural baselines fill it in."""

    examples: int  # items an epoch shuffles (positions, or sequences of positions)
    batch_examples: int  # items per optimizer step
    tokens: int  # predicted tokens per epoch: the train loss is per token
    batches: Callable[[np.ndarray, list[int]], Iterator]  # (items in order, batch sizes) -> the batches
    loss: Callable[[object], tuple[torch.Tensor, int | torch.Tensor]]  # a batch -> (mean loss, tokens it predicts)
    validate: Callable[[], tuple[float, float]]  # -> (validation loss, validation accuracy)
    measure_train: Callable[[], tuple[float, float]]  # -> (loss, accuracy) on a fixed sample of training examples, fp32


def train_token_model(
    model: TokenModel,
    train: SplitData,
    val: SplitData,
    params: Phase2Params,
    device: torch.device,
    generator: torch.Generator,
    checkpoint: Checkpoint | None = None,
    sample_seed: int = 0,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> Phase2Result:
    """Phase 2: the TokenModel trained on the C* of `train`, validated on `val` after every epoch;
    the train loss is measured after every epoch on a seeded sample of as many training examples
    as `val` has."""

    def loss(batch) -> tuple[torch.Tensor, int]:
        contexts, windows, targets = batch
        return training_loss(model, contexts, windows, targets, params.precision, device), len(targets)

    train.place(device, "the training split")
    val.place(device, "the validation split")
    sample = seeded_sample(len(train), len(val), sample_seed)
    task = TrainingTask(
        examples=len(train), batch_examples=params.batch_size, tokens=len(train),
        batches=lambda order, sizes: train.batches(order, sizes, device), loss=loss,
        validate=lambda: evaluate_split(model, val, device, desc="validate"),
        measure_train=lambda: evaluate_split(model, train, device, desc="train sample", sample=sample),
    )
    return train_epochs(model, task, params, generator, checkpoint, "train_token", on_epoch)


class Objective(nn.Module):
    """A training step's loss as a module's forward: the form DistributedDataParallel wraps.

    Each process computes the mean loss of its share of the batch; DDP averages the processes'
    gradients, so the loss is scaled by (its tokens x processes / the batch's tokens): the average is
    then the gradient of the whole batch's mean loss, as one process computes it. Also returns
    (loss x tokens, tokens) of the share, for the epoch's running loss."""

    def __init__(self, model: nn.Module, loss: Callable[[object], tuple[torch.Tensor, int | torch.Tensor]]):
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if len(batch[-1]):
            loss, tokens = self.loss(batch)
        else:  # a last batch with fewer examples than processes: this one joins with zero gradients
            loss, tokens = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0, 0
        # a count made on the device (new_full), not copied to it: a copy from the host would wait for the GPU
        tokens = loss.new_full((), tokens, dtype=torch.float64) if isinstance(tokens, int) else tokens.double()
        totals = torch.stack([loss.detach().double() * tokens, tokens])
        if distributed.world() > 1:
            loss = loss * (tokens * distributed.world() / distributed.all_sum(tokens.clone())).float()
        return loss, totals


def train_epochs(
    model: torch.nn.Module,
    task: TrainingTask,
    params: Phase2Params,
    generator: torch.Generator,
    checkpoint: Checkpoint | None,
    name: str,
    on_epoch: Callable[[list[dict]], None] | None = None,
) -> Phase2Result:
    """Adam over shuffled (seeded) batches; after every epoch the train loss measured on a fixed
    sample (fp32) and the validation loss; early stop after `patience` epochs without a better
    validation loss; returns the best epoch's weights. `on_epoch(history)` follows every epoch's end
    (the history holds a dict per epoch so far, from the checkpoint's too when resumed).

    With a checkpoint, the whole state (weights, Adam, the shuffling generator, the epoch's progress)
    is saved every few minutes and after every epoch, and a killed run resumes from it exactly:
    the result equals that of a run never interrupted."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    optimizer = adam(trainable, params.lr, device)
    run = {"epoch": 1, "step": 0, "loss_sum": 0.0, "epoch_rng": generator.get_state(), "history": [],
           "best_loss": math.inf, "best_epoch": 0, "best_state": None, "stale": 0, "stopped": False, "seconds": 0.0}
    saved = checkpoint.load() if checkpoint else None
    if saved:
        load_trained_state(model, saved["model"], str(checkpoint.folder), f"delete that folder and rerun {name}")
        optimizer.load_state_dict(saved["optimizer"])
        run = saved["run"]
        if distributed.is_main():
            print(f"{name}: resuming from {checkpoint.folder} at epoch {run['epoch']}, step {run['step']}", flush=True)
    start, seconds_before = time.perf_counter(), run["seconds"]

    def save() -> None:
        if checkpoint:
            run["seconds"] = seconds_before + time.perf_counter() - start
            checkpoint.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "run": run})

    step = Objective(model, task.loss)
    if distributed.world() > 1:
        step = DistributedDataParallel(step)
    # The losses are summed on the device and read (a wait for the device) every `flush_every` steps
    # and at the epoch's end: every step on a CPU, where reading costs nothing and a NaN is caught
    # at its step; less often on a GPU, whose queue of work a read would drain.
    flush_every = 1 if device.type == "cpu" else 50
    pending = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, tokens since the last read

    def flush(epoch: int) -> None:
        loss_sum, tokens = distributed.all_sum(pending).tolist()
        pending.zero_()
        if not math.isfinite(loss_sum):
            raise CtxlmError(
                f"{name}: loss became {loss_sum} at epoch {epoch}, step {run['step']}; "
                f"lower phase2.lr (now {params.lr}) or use phase2.precision: fp32"
            )
        run["loss_sum"] += loss_sum
        if tokens:
            bar.set_postfix(loss=f"{loss_sum / tokens:.3f}", refresh=False)

    steps_per_epoch = math.ceil(task.examples / task.batch_examples)
    while run["epoch"] <= params.epochs and not run["stopped"]:
        epoch = run["epoch"]
        generator.set_state(run["epoch_rng"])
        order = block_shuffled_order(task.examples, generator)
        mine, sizes = distributed.share_of_batches(order[run["step"] * task.batch_examples :], task.batch_examples)
        model.train()
        bar = progress(total=steps_per_epoch, initial=run["step"], desc=f"{name} epoch {epoch}/{params.epochs}", unit="step")
        for batch in task.batches(mine, sizes):
            loss, totals = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(trainable, params.gradient_clip)
            optimizer.step()
            pending += totals
            run["step"] += 1
            bar.update()
            if run["step"] % flush_every == 0 or run["step"] == steps_per_epoch:
                flush(epoch)
                if checkpoint and checkpoint.due():
                    save()
        bar.close()
        running_loss = run["loss_sum"] / task.tokens
        train_loss, train_acc = task.measure_train()
        val_loss, val_acc = task.validate()
        if not math.isfinite(val_loss):
            raise CtxlmError(f"{name}: the validation loss became {val_loss} after epoch {epoch}; "
                             f"lower phase2.lr (now {params.lr}) or use phase2.precision: fp32")
        run["history"].append(
            {"epoch": epoch, "train_loss": train_loss, "train_ppl": math.exp(train_loss), "train_acc": train_acc,
             "running_train_ppl": math.exp(running_loss), "val_loss": val_loss, "val_ppl": math.exp(val_loss), "val_acc": val_acc}
        )
        if distributed.is_main():
            if on_epoch:
                on_epoch(run["history"])
            print(f"{name} epoch {epoch}: train ppl {math.exp(train_loss):.1f}, val ppl {math.exp(val_loss):.1f}, val acc {val_acc:.2%}", flush=True)
        if val_loss < run["best_loss"]:
            run.update(best_loss=val_loss, best_epoch=epoch, stale=0, best_state=trained_state(model))
        else:
            run["stale"] += 1
            run["stopped"] = run["stale"] >= params.patience
        run.update(epoch=epoch + 1, step=0, loss_sum=0.0, epoch_rng=generator.get_state())
        save()
    seconds = seconds_before + time.perf_counter() - start
    return Phase2Result(run["best_state"], run["best_epoch"], len(run["history"]), run["history"], seconds)
