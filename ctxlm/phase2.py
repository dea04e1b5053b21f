"""Phase 2: the TokenBlock (and head, and E when not frozen) trained on exact C* read from shards."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ctxlm.checkpoint import Checkpoint
from ctxlm.config import Phase2Params
from ctxlm.cstar import split_windows
from ctxlm.errors import CtxlmError
from ctxlm.model import TokenModel
from ctxlm.runtime import autocast, progress, release_free_memory, resolve_precision
from ctxlm.shards import CstarReader, TokenSplit, decode_cstar
from ctxlm.weights import load_trained_state


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of F.linear(hidden, weight, bias) against targets, a chunk of rows at a time.

    The (B, V) logits are never held whole: each chunk's logits, softmax and gradients are made and
    used at once (gradients are computed in the forward pass and scaled in backward), which halves
    the memory traffic of a 30k-word softmax. Products run in `dtype` (bf16 like autocast, or fp32);
    log-sum-exp, softmax and the gradient accumulators stay fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype, chunk):
        n = hidden.shape[0]
        w = weight.detach().to(dtype)
        h = hidden.detach().to(dtype)
        grad_hidden = torch.empty_like(hidden, dtype=torch.float32)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        b = None if bias is None else bias.detach().float()
        total = hidden.new_zeros((), dtype=torch.float32)
        for a in range(0, n, chunk):
            rows = slice(a, a + chunk)
            logits = (h[rows] @ w.T).float()
            if b is not None:
                logits += b
            lse = torch.logsumexp(logits, dim=1)
            target = targets[rows]
            total += (lse - logits.gather(1, target[:, None])[:, 0]).sum()
            probs = logits.sub_(lse[:, None]).exp_()
            probs[torch.arange(len(target)), target] -= 1.0
            probs /= n  # d(mean loss) / d logits
            grad_hidden[rows] = (probs.to(dtype) @ w).float()
            if grad_weight is not None:
                grad_weight += (probs.to(dtype).T @ h[rows]).float()
            if grad_bias is not None:
                grad_bias += probs.sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_output  # noqa: E731
        return scale(grad_hidden), scale(grad_weight), scale(grad_bias), None, None, None


def training_loss(model: TokenModel, contexts, windows, targets, precision: str, device: torch.device, chunk: int = 128) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch, through the chunked head."""
    with autocast(precision, device):
        hidden = model.hidden(contexts, windows)
    weight, bias = model.head_parameters()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return ChunkedLinearCrossEntropy.apply(hidden.float(), weight, bias, targets, dtype, chunk)


# An epoch's order is random at two scales so that C* can be read in bounded memory (see
# block_shuffled_order); LOAD_BYTES of stored C* are read at a time.
SHUFFLE_BLOCK = 2048
SHUFFLE_ROWS = 1 << 15
LOAD_BYTES = 32 << 20


def block_shuffled_order(n: int, generator: torch.Generator) -> np.ndarray:
    """A seeded permutation of range(n): blocks of SHUFFLE_BLOCK consecutive items in random order,
    then every SHUFFLE_ROWS items shuffled among themselves. A batch so mixes 16 random places of
    the corpus, while a reader needs the rows of one such group at a time, not the whole split."""
    blocks = torch.randperm(-(-n // SHUFFLE_BLOCK), generator=generator).numpy()
    order = (blocks[:, None] * SHUFFLE_BLOCK + np.arange(SHUFFLE_BLOCK)).reshape(-1)
    order = order[order < n]
    for a in range(0, n, SHUFFLE_ROWS):
        group = order[a : a + SHUFFLE_ROWS]
        order[a : a + SHUFFLE_ROWS] = group[torch.randperm(len(group), generator=generator).numpy()]
    return order


class SplitData:
    """A split's training examples: position i (C*_i and the id window ending at i) -> target t_{i+1}."""

    def __init__(self, cstar: CstarReader, tokens: TokenSplit, k: int):
        if len(cstar) != len(tokens):
            raise CtxlmError(f"C* has {len(cstar)} rows but the token split {len(tokens)} tokens; rerun: dvc repro --force generate_cstar")
        self.cstar = cstar
        # int32 per token: these are the only arrays that grow with the corpus (C* is read as needed)
        self.positions = np.flatnonzero(tokens.has_next()).astype(np.int32)  # (M,)
        self.windows = split_windows(tokens, k).int()  # (N, k)
        self.targets = torch.zeros(len(tokens), dtype=torch.int32)
        self.targets[:-1] = torch.from_numpy(np.array(tokens.ids[1:], dtype=np.int32))

    def __len__(self) -> int:
        return len(self.positions)

    def _examples(self, positions: np.ndarray, contexts: torch.Tensor, device: torch.device):
        index = torch.from_numpy(positions).long()
        return contexts.to(device), self.windows[index].long().to(device), self.targets[index].long().to(device)

    def batch(self, positions: np.ndarray, device: torch.device):
        """-> (B, L, d_c) C*, (B, k) windows, (B,) targets."""
        return self._examples(positions, self.cstar.gather(positions), device)

    def batches(self, order: np.ndarray, batch_size: int, device: torch.device):
        """The batches of consecutive `batch_size` examples of `order` (indices into positions).
        C* is read about LOAD_BYTES at a time, in file order, and decoded a batch at a time."""
        load = batch_size * max(1, LOAD_BYTES // (self.cstar.row_bytes * batch_size))
        for a in range(0, len(order), load):
            positions = self.positions[order[a : a + load]]
            ordered, where = np.unique(positions, return_inverse=True)
            stored = self.cstar.read(ordered)
            for b in range(0, len(positions), batch_size):
                rows = where[b : b + batch_size]
                yield self._examples(positions[b : b + batch_size], decode_cstar(stored[rows]), device)
            del stored
            release_free_memory()


@torch.no_grad()
def evaluate_split(model: TokenModel, data: SplitData, device: torch.device, batch: int = 4096,
                   desc: str = "evaluate", sample: np.ndarray | None = None) -> tuple[float, float]:
    """Mean cross-entropy (nats) and argmax accuracy, in fp32, over every position of the split or
    over the examples `sample` (sorted indices into data.positions)."""
    model.eval()
    order = np.arange(len(data)) if sample is None else sample
    batches = ((model(contexts, windows), targets) for contexts, windows, targets in data.batches(order, batch, device))
    return score_batches(batches, len(order), desc)


def score_batches(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], positions: int, desc: str) -> tuple[float, float]:
    """Mean cross-entropy (nats) and argmax accuracy, in fp32, of (logits, targets) batches that
    hold `positions` positions in all: the scoring that ctxlm and the neural baselines share."""
    loss_sum, correct, scored = 0.0, 0, 0
    bar = progress(total=positions, desc=desc, unit="tok", unit_scale=True, leave=False)
    for logits, targets in batches:
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct += (logits.argmax(dim=1) == targets).sum().item()
        scored += len(targets)
        bar.update(len(targets))
    bar.close()
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
    batches: Callable[[np.ndarray], Iterator]  # an order of items -> its batches, batch_examples items each
    loss: Callable[[object], tuple[torch.Tensor, int]]  # a batch -> (mean loss, tokens it predicts)
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

    sample = seeded_sample(len(train), len(val), sample_seed)
    task = TrainingTask(
        examples=len(train), batch_examples=params.batch_size, tokens=len(train),
        batches=lambda order: train.batches(order, params.batch_size, device), loss=loss,
        validate=lambda: evaluate_split(model, val, device, desc="validate"),
        measure_train=lambda: evaluate_split(model, train, device, desc="train sample", sample=sample),
    )
    return train_epochs(model, task, params, generator, checkpoint, "train_token", on_epoch)


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
    optimizer = torch.optim.Adam(trainable, lr=params.lr)
    run = {"epoch": 1, "step": 0, "loss_sum": 0.0, "epoch_rng": generator.get_state(), "history": [],
           "best_loss": math.inf, "best_epoch": 0, "best_state": None, "stale": 0, "stopped": False, "seconds": 0.0}
    saved = checkpoint.load() if checkpoint else None
    if saved:
        load_trained_state(model, saved["model"], str(checkpoint.folder), f"delete that folder and rerun {name}")
        optimizer.load_state_dict(saved["optimizer"])
        run = saved["run"]
        print(f"{name}: resuming from {checkpoint.folder} at epoch {run['epoch']}, step {run['step']}", flush=True)
    start, seconds_before = time.perf_counter(), run["seconds"]

    def save() -> None:
        if checkpoint:
            run["seconds"] = seconds_before + time.perf_counter() - start
            checkpoint.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "run": run})

    steps_per_epoch = math.ceil(task.examples / task.batch_examples)
    while run["epoch"] <= params.epochs and not run["stopped"]:
        epoch = run["epoch"]
        generator.set_state(run["epoch_rng"])
        order = block_shuffled_order(task.examples, generator)
        model.train()
        bar = progress(total=steps_per_epoch, initial=run["step"], desc=f"{name} epoch {epoch}/{params.epochs}", unit="step")
        for batch in task.batches(order[run["step"] * task.batch_examples :]):
            loss, tokens = task.loss(batch)
            if not torch.isfinite(loss):
                raise CtxlmError(
                    f"{name}: loss became {loss.item()} at epoch {epoch}, step {run['step'] + 1}; "
                    f"lower phase2.lr (now {params.lr}) or use phase2.precision: fp32"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, params.gradient_clip)
            optimizer.step()
            run["loss_sum"] += loss.item() * tokens
            run["step"] += 1
            if run["step"] % 50 == 1:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            bar.update()
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
