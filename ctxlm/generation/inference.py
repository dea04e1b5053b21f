"""Using a trained model: generate text one token at a time, and score a text token by token.

A *stepper* reads one token and returns the logits of the next. ctxlm's keeps only the final
layer's context c_i (d_c numbers) and the last k ids, so a step costs the same at any position:
    c*_i = ContextBlock(c_{i-1}, x_i)   (L, d_c), c_0 = 0 at the start of a text
    logits_i = TokenModel(c*_i, window_i) predicts token i+1
which is the recurrence `generate_cstar` runs (cstar.naive_cstar) and the TokenModel phase 2 trained.
The baselines step the same way: the LSTM carries (h, c); the GPT-2-style model reads its last
seq_len tokens again each step (it was trained on windows of that many).

A text with no tokens yet (an empty prompt) has no prediction for its first token: the steppers
read one zero input (PAD, the padding slot of input_features) from the initial state for it, and
the first token is then read from the zero context, as every document starts in training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ctxlm.data.files import doc_starts, has_next
from ctxlm.data.tokens import TokenizedSplit
from ctxlm.errors import CtxlmError
from ctxlm.evaluation.metrics import earlier_tokens, linear_probe
from ctxlm.generation.cstar import cstar_into
from ctxlm.head import head_scores
from ctxlm.model import ContextBlock, ContextBlocks, TokenModel, input_features, token_windows
from ctxlm.runtime import one_thread
from ctxlm.training.phase2 import example_rows, score_batches, with_previous

if TYPE_CHECKING:
    from ctxlm.evaluation.baselines import BaselineLM

PAD = -1  # the id of a zero input (model.input_features)
SCORE_BATCH = 4096  # positions per scoring batch: evaluate's, so that both sum the same batches


class Stepper(Protocol):
    def initial(self) -> object:
        """The state before any token of a text."""

    def read(self, state: object, token: int) -> tuple[object, torch.Tensor]:
        """Read `token` -> (the new state, (V,) fp32 logits of the next token)."""


class CtxlmStepper:
    """The ContextBlock's recurrence and the TokenModel, one token at a time (state: the final-layer
    contexts of the last p + 1 tokens, newest first (1, 1 + p, d_C), and the window (1, k))."""

    def __init__(self, block: ContextBlock | ContextBlocks, model: TokenModel):
        self.block, self.model = block.eval(), model.eval()

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.block.cfg
        return torch.zeros(1, 1 + self.model.cfg.prev_contexts, cfg.cstar_dim), torch.full((1, cfg.num_input_tokens), PAD)

    @torch.no_grad()
    def advance(self, state, token: int):
        """Read `token` through the ContextBlock(s) alone -> (the new state, (1, L + p, d_C): this
        token's C* and the p previous final-layer contexts, as phase 2 reads them)."""
        recent, window = state
        window = torch.cat([window[:, 1:], torch.tensor([[token]])], dim=1)  # (1, k), oldest first
        with one_thread():  # vectors of a few hundred numbers: waking more threads costs more than it saves
            layers = self.block(recent[:, 0], input_features(self.model.embedding, window))
        previous = recent[:, : recent.shape[1] - 1]  # c_{i-1} .. c_{i-p}
        return (torch.cat([layers[:, -1:], previous], dim=1), window), torch.cat([layers, previous], dim=1)

    @torch.no_grad()
    def read(self, state, token: int):
        state, contexts = self.advance(state, token)
        with one_thread():
            hidden = self.model.hidden(contexts, state[1])  # (1, d_e)
        return state, self.model.logits(hidden)[0].float()  # only the head's product is worth the threads


class LSTMStepper:
    """The LSTM baseline carrying its (h, c) state from token to token."""

    def __init__(self, model: BaselineLM):
        self.model = model.eval()

    def initial(self):
        return None

    @torch.no_grad()
    def read(self, state, token: int):
        with one_thread():
            x = input_features(self.model.embedding, torch.tensor([[[token]]]))  # (1, 1, d_e)
            out, state = self.model.body.run(x, state)
            hidden = self.model.norm(out)[0, -1]
        weight, bias = self.model.head_parameters()
        return state, F.linear(hidden, weight, bias).float()


class TransformerStepper:
    """The GPT-2-style baseline reading its last seq_len tokens (at most its positions) each step."""

    def __init__(self, model: BaselineLM):
        self.model = model.eval()

    def initial(self):
        return []

    @torch.no_grad()
    def read(self, state, token: int):
        state = [*state, token][-self.model.cfg.seq_len :]
        weight, bias = self.model.head_parameters()
        return state, F.linear(self.model.hidden(torch.tensor([state]))[0, -1], weight, bias).float()


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    greedy: bool = False

    def __post_init__(self):
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise CtxlmError(f"--temperature must be a positive number, got {self.temperature} (use --greedy for the argmax)")
        if self.top_k < 0:
            raise CtxlmError(f"--top-k must be 0 (no limit) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise CtxlmError(f"--top-p must be in (0, 1], got {self.top_p}")


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """A token drawn from (V,) logits: the argmax, or softmax(logits / temperature) restricted to the
    top_k most likely tokens and to the smallest set of them whose probability reaches top_p."""
    if sampling.greedy:
        return int(logits.argmax())
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if sampling.top_p < 1:
        probs, order = torch.sort(torch.softmax(logits, dim=0), descending=True)
        outside = torch.cumsum(probs, dim=0) - probs >= sampling.top_p  # the mass before it already reaches top_p
        logits = logits.index_fill(0, order[outside], -math.inf)
    return int(torch.multinomial(torch.softmax(logits, dim=0), 1, generator=generator))


def generate_ids(stepper: Stepper, prompt: list[int], max_tokens: int, sampling: Sampling, seed: int) -> Iterator[int]:
    """The ids that follow `prompt`, one at a time: the prompt is read once, then each new token
    once (the past is never recomputed)."""
    generator = torch.Generator().manual_seed(seed)
    state, logits = stepper.initial(), None
    for token in prompt:
        state, logits = stepper.read(state, token)
    if logits is None:  # an empty prompt: the first token's distribution from a zero input; the state stays initial
        _, logits = stepper.read(state, PAD)
    for n in range(max_tokens):
        token = next_token(logits, sampling, generator)
        yield token
        if n + 1 < max_tokens:
            state, logits = stepper.read(state, token)


# A later token can still change this many characters at the end of a decoded text: a byte-level
# BPE shows a character split over two tokens as U+FFFD until its second byte comes, and cleaning up
# tokenization spaces rewrites patterns of up to 4 characters (" n't"). Earlier text is final.
UNSETTLED_CHARS = 4


def stream_text(tokenizer, prompt: list[int], ids: Iterator[int]) -> Iterator[str]:
    """The decoded continuation of `prompt` piece by piece as `ids` come: joined, the pieces are
    decode(prompt + ids) after decode(prompt). The last UNSETTLED_CHARS characters wait for the next
    token (or the end), so no piece is ever taken back."""
    start = len(tokenizer.decode(prompt))
    sequence, shown = list(prompt), start  # shown: the characters of the whole text yielded so far
    text = ""
    for token in ids:
        sequence.append(token)
        text = tokenizer.decode(sequence)
        if len(text) - UNSETTLED_CHARS > shown:
            yield text[shown : len(text) - UNSETTLED_CHARS]
            shown = len(text) - UNSETTLED_CHARS
    if len(text) > shown:
        yield text[shown:]


@dataclass
class Scores:
    """Per predicted token (every token of a document but its first) and the totals."""

    document: np.ndarray  # (M,) which document
    position: np.ndarray  # (M,) the predicted token's index in its document
    token_id: np.ndarray  # (M,)
    logprob: np.ndarray  # (M,) natural log-probability the model gave it
    loss: float  # mean cross-entropy (nats): -mean(logprob)
    accuracy: float  # argmax accuracy
    predicted_bytes: int
    predicted_chars: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.loss * len(self.logprob) / math.log(2) / self.predicted_bytes


@torch.no_grad()
def score_tokens(block: ContextBlock | ContextBlocks, model: TokenModel, tokens: TokenizedSplit) -> Scores:
    """Every predicted token of `tokens` scored the way `evaluate` scores a split: C* by the exact
    recurrence (cstar_into, the generator's), the TokenModel in fp32, batches of SCORE_BATCH
    consecutive positions, the totals summed by phase2.score_batches."""
    ids = torch.from_numpy(tokens.ids.astype(np.int64))
    n, offsets = len(ids), tokens.offsets
    if not has_next(offsets, n).any():
        raise CtxlmError("the text has no token to predict: every document is a single token (or the text is empty)")
    windows = token_windows(ids, torch.from_numpy(doc_starts(offsets, n)), block.cfg.num_input_tokens)
    cstar = np.zeros((n, block.cfg.num_layers, block.cfg.cstar_dim), dtype=np.float32)
    cstar_into(block, model.embedding.detach(), windows, offsets, cstar)
    positions = np.flatnonzero(has_next(offsets, n))
    logprobs = []
    model.eval()

    p = model.cfg.prev_contexts
    index = example_rows(np.arange(n), offsets, p)  # (n, 1 + p)

    def batches():
        for a in range(0, len(positions), SCORE_BATCH):
            rows = positions[a : a + SCORE_BATCH]
            losses, correct = head_scores(model.hidden(with_previous(cstar, index[rows], p), windows[rows]), *model.head_parameters(), ids[rows + 1])
            logprobs.append(-losses.double().numpy())
            yield losses, correct

    loss, accuracy = score_batches(batches(), len(positions), "score", torch.device("cpu"))
    document = np.searchsorted(offsets, positions, side="right") - 1
    return Scores(document, positions + 1 - offsets[document], ids[positions + 1].numpy(), np.concatenate(logprobs),
                  loss, accuracy, tokens.predicted_bytes, tokens.predicted_chars)


def text_to_documents(source: str, one_document: bool = False) -> list[str]:
    """`ctxlm score`'s input -> documents, cut as `data.source` cuts a corpus (ctxlm.data.sources: a text
    file at blank lines, a record file a record each, a folder a file each, ...); '-' reads standard
    input as a .txt file; with `one_document`, the documents joined by blank lines, as one."""
    import sys
    import tempfile
    from pathlib import Path

    from ctxlm.data.sources import HF_PREFIX, source_documents

    if source == "-":  # through a .txt file, so that ctxlm.data.sources alone decides where documents end
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "stdin.txt").write_text(sys.stdin.read(), encoding="utf-8")
            return text_to_documents(str(Path(folder) / "stdin.txt"), one_document)
    if not source.startswith(HF_PREFIX) and not Path(source).exists():
        raise CtxlmError(f"{source}: no such file or folder")
    documents = [text for _, _, text in source_documents(source)]
    return ["\n\n".join(documents)] if one_document else documents


def write_scores(path, scores: Scores, tokenizer) -> None:
    """Per-token figures as CSV (a row a token) or JSON (the rows and the totals)."""
    import json

    import pandas as pd

    rows = pd.DataFrame({
        "document": scores.document, "position": scores.position, "token_id": scores.token_id,
        "token": tokenizer.convert_ids_to_tokens(scores.token_id.tolist()),
        "logprob": scores.logprob, "surprisal_bits": -scores.logprob / math.log(2),
    })
    if str(path).endswith(".json"):
        totals = {"tokens": len(rows), "loss": scores.loss, "perplexity": scores.perplexity, "accuracy": scores.accuracy,
                  "bits_per_byte": scores.bits_per_byte, "predicted_bytes": scores.predicted_bytes}
        path.write_text(json.dumps({"totals": totals, "tokens": rows.to_dict(orient="records")}, indent=1) + "\n")
    else:
        rows.to_csv(path, index=False)


# What C* remembers (`ctxlm probe`): linear probes for the token k positions back, k = 0 .. PROBE_DEPTH.
PROBE_DEPTH = 16
BAG_TOKENS = PROBE_DEPTH + 1  # the reference: the mean embedding of t_{i-16} .. t_i, which keeps them all but not their order


def sampled_documents(offsets: np.ndarray, positions: int, seed: int) -> np.ndarray:
    """Whole documents in a seeded order until they hold `positions` predicted positions (or all), sorted."""
    predicted = np.maximum(np.diff(offsets) - 1, 0)
    order = np.random.default_rng(seed).permutation(len(predicted))
    return np.sort(order[: int(np.searchsorted(np.cumsum(predicted[order]), positions)) + 1])


def documents_of(ids: np.ndarray, offsets: np.ndarray, documents: np.ndarray) -> tuple[TokenizedSplit, np.ndarray]:
    """`documents` of a split as their own TokenizedSplit, and the split's rows they came from."""
    rows = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in documents])
    lengths = np.diff(offsets)[documents]
    return TokenizedSplit(np.asarray(ids)[rows].astype(np.int32), np.concatenate([[0], np.cumsum(lengths)]), 0, 0), rows


@torch.no_grad()
def probe_features(docs: TokenizedSplit, trained: np.ndarray, control: ContextBlocks, embedding: torch.Tensor,
                   lstm=None) -> dict[str, torch.Tensor]:
    """Each representation at every predicted position of `docs` (in order): (M, features) each.

    "ctxlm": the trained C* (`trained`, the split's stored rows of docs, (N, L, d_C)); "untrained":
    the C* of `control`, the ContextBlocks as phase 1 starts them; "lstm": the LSTM's final hidden
    state, from the windows evaluation scores it with (each position once); "bag": the mean of the
    last BAG_TOKENS embeddings within the document."""
    ids, offsets = torch.from_numpy(docs.ids.astype(np.int64)), docs.offsets
    n = len(ids)
    positions = np.flatnonzero(has_next(offsets, n))
    starts = torch.from_numpy(doc_starts(offsets, n))
    untrained = np.zeros((n, control.cfg.num_layers, control.cfg.cstar_dim), dtype=np.float32)
    cstar_into(control, embedding, token_windows(ids, starts, control.cfg.num_input_tokens), offsets, untrained)
    bag = token_windows(ids, starts, BAG_TOKENS)  # (N, BAG_TOKENS), -1 before the document
    embedded = embedding[bag.clamp(min=0)] * (bag >= 0)[..., None]
    features = {"ctxlm": torch.from_numpy(trained[positions].reshape(len(positions), -1)).float(),
                "untrained": torch.from_numpy(untrained[positions].reshape(len(positions), -1)),
                "bag": (embedded.sum(1) / (bag >= 0).sum(1, keepdim=True))[positions]}
    if lstm is not None:
        from ctxlm.evaluation.baselines import IGNORE, SequenceData

        data = SequenceData(docs, lstm.cfg.seq_len, stride=lstm.cfg.seq_len // 2)
        hidden = torch.zeros(n, embedding.shape[1])
        for a in range(0, len(data), 32):
            index = np.arange(a, min(a + 32, len(data)))
            inputs, targets = data.batch(index, torch.device("cpu"))
            at = torch.from_numpy(data.starts[index])[:, None] + torch.arange(inputs.shape[1])  # (S, T) each column's position
            scored = targets != IGNORE
            hidden[at[scored]] = lstm.hidden(inputs)[scored].float()
        features["lstm"] = hidden[positions]
    return features


def probe_targets(docs: TokenizedSplit, k: int) -> np.ndarray:
    """t_{i-k} at every predicted position i of `docs` (-1 before its document)."""
    n = len(docs.ids)
    return earlier_tokens(docs.ids, docs.offsets, np.flatnonzero(has_next(docs.offsets, n)), k)


def probe_memory(train: TokenizedSplit, train_features: dict[str, torch.Tensor], val: TokenizedSplit,
                 val_features: dict[str, torch.Tensor], classes: int, seed: int) -> dict:
    """For k = 0 .. PROBE_DEPTH and each representation: a linear probe trained on `train`'s
    positions to name t_{i-k} among the `classes` most frequent training tokens, scored on `val`'s
    (positions whose t_{i-k} is another token, or before the document, are left out of both; their
    share is `coverage`). The unigram guess (always the most frequent class) is given beside, and
    the first k at which each representation's accuracy is within 2x of it."""
    counts = np.bincount(train.ids)
    frequent = np.argsort(-counts, kind="stable")[:classes]
    frequent = frequent[counts[frequent] > 0]
    label = np.full(int(max(train.ids.max(), val.ids.max())) + 1, -1)
    label[frequent] = np.arange(len(frequent))
    result = {"classes": len(frequent), "train_positions": len(next(iter(train_features.values()))),
              "val_positions": len(next(iter(val_features.values()))), "by_k": []}
    for k in range(PROBE_DEPTH + 1):
        train_y, val_y = (np.where(t >= 0, label[np.maximum(t, 0)], -1) for t in (probe_targets(train, k), probe_targets(val, k)))
        train_rows, val_rows = np.flatnonzero(train_y >= 0), np.flatnonzero(val_y >= 0)
        y_train, y_val = torch.from_numpy(train_y[train_rows]), torch.from_numpy(val_y[val_rows])
        row = {"k": k, "coverage": len(val_rows) / len(val_y),
               "unigram_accuracy": float(np.bincount(val_y[val_rows]).max() / len(val_rows))}
        for name in train_features:
            score = linear_probe(train_features[name][train_rows], y_train, val_features[name][val_rows], y_val, len(frequent), seed)
            row[name] = {"accuracy": score.accuracy, "bits": score.bits, "epochs": score.epochs}
        result["by_k"].append(row)
    result["within_2x_of_unigram"] = {
        name: next((row["k"] for row in result["by_k"] if row[name]["accuracy"] <= 2 * row["unigram_accuracy"]), None)
        for name in train_features}
    return result
