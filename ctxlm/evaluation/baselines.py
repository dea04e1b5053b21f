"""Standard language models on ctxlm's tokens: an LSTM and a small GPT-2, as baselines.

They read the same input features x_t = LayerNorm(E[t]) and predict through the same head (E tied,
or an untied copy of E) as ctxlm; only the body between them differs. Each body is sized so that
its trainable parameters match ctxlm's trained blocks (ContextBlock(s) + TokenBlock), and it is
trained by phase 2's loop (train_epochs): same optimiser, batch tokens, epochs and early stopping.

Shapes: S sequences, T = seq_len positions, d_e embedding width, V vocabulary.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctxlm import distributed
from ctxlm.config import Phase2Params
from ctxlm.data.files import TokenSplit
from ctxlm.evaluation.metrics import count
from ctxlm.head import head_loss, head_scores
from ctxlm.model import ContextBlocks, ModelConfig, TokenBlock, head_parameters, input_features, untied_head
from ctxlm.runtime import autocast
from ctxlm.training.checkpoint import Checkpoint
from ctxlm.training.phase2 import Phase2Result, TrainingTask, batch_bounds, score_batches, train_epochs
from ctxlm.weights import load_trained_state, load_weights

KINDS = ("lstm", "transformer")
IGNORE = -100  # target of a padded or already-scored position
HEADS = 4  # attention heads of the transformer; its width is a multiple of this
BASELINE_WEIGHTS = "model.safetensors"  # in data/baselines/<kind>/, with the metadata that rebuilds the model


class LSTMBody(nn.Module):
    """One LSTM layer of width `hidden`, projected back to d_e."""

    def __init__(self, embed_dim: int, hidden: int):
        super().__init__()
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(S, T, d_e) -> (S, T, d_e), from the zero state."""
        return self.run(x)[0]

    def run(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        """(S, T, d_e) and the LSTM's (h, c) (None: zeros) -> (S, T, d_e) and (h, c) after the last
        position. The recurrence runs in fp32 even under bf16 autocast: oneDNN has no bf16 LSTM on
        CPUs without AVX-512 (it fails to build one)."""
        with torch.autocast(x.device.type, enabled=False):
            out, state = self.lstm(x.float(), state)
            return self.out(out), state


class TransformerBody(nn.Module):
    """transformers' GPT2Model (causal, learned positions, no dropout) of width `width`, fed
    projected input features instead of its own token embedding, projected back to d_e."""

    def __init__(self, embed_dim: int, width: int, layers: int, seq_len: int):
        super().__init__()
        from transformers import GPT2Config, GPT2Model  # here, not at the top: the LSTM's stage would pay ~1 s to import transformers

        config = GPT2Config(vocab_size=1, n_positions=seq_len, n_embd=width, n_layer=layers, n_head=HEADS,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
        self.inp = nn.Linear(embed_dim, width)
        self.gpt = GPT2Model(config)
        self.gpt.wte.requires_grad_(False)  # never used: inputs_embeds replaces it
        self.out = nn.Linear(width, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(S, T, d_e) -> (S, T, d_e)."""
        return self.out(self.gpt(inputs_embeds=self.inp(x)).last_hidden_state)


@dataclass(frozen=True)
class BaselineConfig:
    kind: str  # lstm | transformer
    embed_dim: int  # d_e
    width: int  # the LSTM's hidden size, the Transformer's n_embd
    seq_len: int  # T: the Transformer's positions
    transformer_layers: int

    def body(self) -> nn.Module:
        if self.kind == "lstm":
            return LSTMBody(self.embed_dim, self.width)
        if self.kind == "transformer":
            return TransformerBody(self.embed_dim, self.width, self.transformer_layers, self.seq_len)
        raise ValueError(f"unknown baseline {self.kind!r}; one of {', '.join(KINDS)}")

    def to_metadata(self) -> dict[str, str]:
        return {key: str(value) for key, value in asdict(self).items()}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "BaselineConfig":
        return cls(**{key: meta[key] if key == "kind" else int(meta[key]) for key in cls.__dataclass_fields__})


class BaselineLM(nn.Module):
    """x_t = LN(E[t]) -> body -> LayerNorm -> head; E frozen or trained, the head tied or an untied copy."""

    def __init__(self, cfg: BaselineConfig, embedding: torch.Tensor, weight_tying: bool, freeze_embedding: bool):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Parameter(embedding.clone().float(), requires_grad=not freeze_embedding)
        self.body = cfg.body()
        self.norm = nn.LayerNorm(embedding.shape[1])
        self.head = None if weight_tying else untied_head(embedding)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """(S, T) ids -> (S, T, d_e)."""
        return self.norm(self.body(input_features(self.embedding, ids[..., None])))

    def head_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return head_parameters(self.embedding, self.head)


def _closest_width(target: int, widths: range, build: Callable[[int], nn.Module]) -> int:
    """The width whose body (+ the final LayerNorm) has trainable parameters closest to `target`
    (they grow with the width, so a bisection finds it)."""
    def trainable(width: int) -> int:
        with torch.device("meta"):  # shapes only: no memory, no initialisation work
            return count(build(width), trainable_only=True)
    first_above = bisect.bisect_left(widths, target, key=trainable)
    candidates = widths[max(0, first_above - 1) : first_above + 1]
    return min(candidates, key=lambda width: abs(trainable(width) - target))


def build_baseline(kind: str, cfg: ModelConfig, embedding: torch.Tensor, weight_tying: bool, freeze_embedding: bool,
                   seq_len: int, transformer_layers: int) -> BaselineLM:
    """A baseline whose trainable body has about as many parameters as ctxlm's ContextBlock(s) + TokenBlock
    of `cfg` (both sides share E and the head, so those are left out of the match)."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; one of {', '.join(KINDS)}")
    with torch.device("meta"):
        target = count(ContextBlocks(cfg)) + count(TokenBlock(cfg))
    sized = lambda width: BaselineConfig(kind, cfg.embed_dim, width, seq_len, transformer_layers)  # noqa: E731
    build = lambda width: nn.Sequential(sized(width).body(), nn.LayerNorm(cfg.embed_dim))  # noqa: E731
    widths = range(4, 4097, 4) if kind == "lstm" else range(HEADS * 8, 4097, HEADS)
    return BaselineLM(sized(_closest_width(target, widths, build)), embedding, weight_tying, freeze_embedding)


def baseline_metadata(model: BaselineLM) -> dict[str, str]:
    """What load_baseline needs to rebuild `model`: its config and its head's settings."""
    return {**model.cfg.to_metadata(), "weight_tying": str(model.head is None),
            "freeze_embedding": str(not model.embedding.requires_grad)}


def load_baseline(folder: Path, embedding: torch.Tensor) -> BaselineLM:
    """data/baselines/<kind> -> the BaselineLM of its best epoch (E from the tokens folder when it was frozen)."""
    state, meta = load_weights(folder, BASELINE_WEIGHTS, f"baselines/dvc.yaml:baseline_neural@{Path(folder).name}")
    model = BaselineLM(BaselineConfig.from_metadata(meta), embedding, meta["weight_tying"] == "True", meta["freeze_embedding"] == "True")
    load_trained_state(model, state, str(Path(folder) / BASELINE_WEIGHTS),
                       f"rerun it with: dvc repro --force baselines/dvc.yaml:baseline_neural@{meta['kind']}")
    return model.eval().requires_grad_(False)


class SequenceData:
    """A split cut into windows of at most T input positions, none crossing a document boundary.

    Window j reads ids[start_j : start_j + length_j] and predicts each next token, except its first
    skip_j positions (already scored by the window before). Windows step by `stride` through each
    document: stride = T makes disjoint training sequences; stride < T lets validation give every
    position at least T - stride tokens of context, while each position is still scored exactly once
    (the same positions as ctxlm's: every token with a next token in its document)."""

    def __init__(self, tokens: TokenSplit, seq_len: int, stride: int):
        self.ids = torch.from_numpy(np.asarray(tokens.ids, dtype=np.int64))  # (N,)
        self.seq_len = seq_len
        offsets = tokens.offsets.astype(np.int64)
        positions = np.maximum(offsets[1:] - offsets[:-1] - 1, 0)  # (D,) predicted positions per document
        windows = 1 + np.maximum(0, -(-(positions - seq_len) // stride))  # (D,) ceil, at least one
        windows[positions == 0] = 0
        doc = np.repeat(np.arange(len(positions)), windows)
        step = np.arange(len(doc)) - np.repeat(np.cumsum(windows) - windows, windows)  # window index in its document
        self.starts = offsets[:-1][doc] + step * stride  # (W,)
        self.lengths = np.minimum(seq_len, offsets[1:][doc] - 1 - self.starts)  # (W,)
        self.skips = np.where(step == 0, 0, seq_len - stride)  # (W,)
        self.tokens = int(positions.sum())
        self.windows = torch.from_numpy(np.stack([self.starts, self.lengths, self.skips], axis=1))  # (W, 3): what batches gather

    def __len__(self) -> int:
        return len(self.starts)

    def to(self, device: torch.device) -> "SequenceData":
        """Keep the ids (8 bytes a token) and the windows on `device`, where every batch is then built."""
        self.ids, self.windows = self.ids.to(device), self.windows.to(device)
        return self

    def batch(self, index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `index` -> (S, T) input ids (padding 0) and (S, T) targets (IGNORE where not scored)."""
        return self._gather(torch.from_numpy(np.asarray(index, dtype=np.int64)).to(self.ids.device), device)

    def _gather(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        column = torch.arange(self.seq_len, device=index.device)
        start, length, skip = self.windows[index].unbind(1)  # (S,) each
        start = start[:, None] + column  # (S, T)
        scored = (column < length[:, None]) & (column >= skip[:, None])
        inputs = self.ids[start.clamp(max=len(self.ids) - 1)]
        targets = torch.where(scored, self.ids[(start + 1).clamp(max=len(self.ids) - 1)], IGNORE)
        return inputs.to(device), targets.to(device)

    def batches(self, order: np.ndarray, sizes: int | Sequence[int], device: torch.device):
        """The batches of consecutive windows of `order`: `sizes` windows each (an int) or the given
        sizes; built where the data is kept (`to`), the order copied there once."""
        bounds = batch_bounds(len(order), sizes)
        order = torch.from_numpy(np.asarray(order, dtype=np.int64)).to(self.ids.device)
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield self._gather(order[a:b], device)


def sequence_loss(model: BaselineLM, inputs: torch.Tensor, targets: torch.Tensor, precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the scored positions, through phase 2's chunked head."""
    with autocast(precision, device):
        hidden = model.hidden(inputs)
    scored = targets != IGNORE
    return head_loss(hidden[scored], *model.head_parameters(), targets[scored], precision), scored.sum()


@torch.no_grad()
def evaluate_sequences(model: BaselineLM, data: SequenceData, device: torch.device, sequences: int = 32,
                       desc: str = "evaluate", sample: np.ndarray | None = None) -> tuple[float, float]:
    """Mean cross-entropy (nats) and argmax accuracy, in fp32, over every scored position of the
    split, or of the windows `sample`."""
    model.eval()
    order = np.arange(len(data)) if sample is None else sample
    order = order[distributed.share(len(order))]
    weight, bias = model.head_parameters()

    def scores():
        for inputs, targets in data.batches(order, sequences, device):
            scored = targets != IGNORE
            yield head_scores(model.hidden(inputs)[scored], weight, bias, targets[scored])

    return score_batches(scores(), int((data.lengths[order] - data.skips[order]).sum()), desc, device, shared=True)


def window_sample(data: SequenceData, tokens: int, seed: int) -> np.ndarray:
    """Seeded random windows of `data` (sorted) that score at least `tokens` positions, or all of
    them: the fixed sample that measures the train loss after every epoch."""
    shuffled = np.random.default_rng(seed).permutation(len(data))
    scored = np.cumsum(data.lengths[shuffled] - data.skips[shuffled])
    return np.sort(shuffled[: int(np.searchsorted(scored, tokens)) + 1])


def train_baseline(model: BaselineLM, train: SequenceData, val: SequenceData, params: Phase2Params, device: torch.device,
                   generator: torch.Generator, checkpoint: Checkpoint | None, name: str, sample_seed: int = 0,
                   on_epoch: Callable[[list[dict]], None] | None = None) -> Phase2Result:
    """Phase 2's loop on whole sequences: phase2.batch_size // seq_len of them a step; the train
    loss is measured after every epoch on seeded windows scoring as many positions as `val`."""
    sequences = max(1, params.batch_size // train.seq_len)
    train, val = train.to(device), val.to(device)
    sample = window_sample(train, val.tokens, sample_seed)
    task = TrainingTask(
        examples=len(train), batch_examples=sequences, tokens=train.tokens,
        batches=lambda order, sizes: train.batches(order, sizes, device),
        loss=lambda batch: sequence_loss(model, *batch, params.precision, device),
        validate=lambda: evaluate_sequences(model, val, device, desc="validate"),
        measure_train=lambda: evaluate_sequences(model, train, device, desc="train sample", sample=sample),
    )
    return train_epochs(model, task, params, generator, checkpoint, name, on_epoch)
