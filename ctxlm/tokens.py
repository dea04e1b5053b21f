"""Tokenizing documents into one flat id array with document offsets, up to a token budget."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ctxlm.runtime import progress


@dataclass
class TokenizedSplit:
    ids: np.ndarray  # (N,) int32
    offsets: np.ndarray  # (D+1,) int64: document d is ids[offsets[d]:offsets[d+1]]
    predicted_bytes: int  # UTF-8 bytes of the text the predicted tokens cover (see tokenize_documents)
    predicted_chars: int  # the same in characters


class SplitTokenizer:
    """A split's documents tokenized as they come, in order, up to `budget` tokens (the last
    document cut short if needed), so a corpus can be streamed through it.

    Documents with no tokens are skipped. No special tokens are added: the context resets at each
    document start instead. Every token of a document but its first is predicted, so the text they
    cover runs from the end of the first token to the end of the last one kept: its size in bytes
    and characters turns a loss into bits per byte or per character, figures that do not depend on
    the tokenizer. Needs a fast tokenizer (character offsets)."""

    def __init__(self, tokenizer, budget: int, bar: tqdm | None = None):
        """`bar`: a progress bar to advance (one can serve several splits); by default its own."""
        self.tokenizer, self.budget = tokenizer, budget
        self.ids: list[np.ndarray] = []
        self.offsets = [0]
        self.predicted_bytes = self.predicted_chars = 0
        self.bar = bar if bar is not None else progress(total=budget, desc="tokenize", unit="tok", unit_scale=True, leave=False)

    @property
    def full(self) -> bool:
        return self.offsets[-1] >= self.budget

    def add(self, texts: list[str]) -> None:
        if self.full or not texts:
            return
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for text, doc, spans in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
            doc = doc[: self.budget - self.offsets[-1]]
            if doc:
                self.ids.append(np.asarray(doc, dtype=np.int32))
                self.offsets.append(self.offsets[-1] + len(doc))
                predicted = text[spans[0][1] : spans[len(doc) - 1][1]]
                self.predicted_chars += len(predicted)
                self.predicted_bytes += len(predicted.encode("utf-8"))
                self.bar.update(len(doc))
            if self.full:
                break

    def result(self) -> TokenizedSplit:
        flat = np.concatenate(self.ids) if self.ids else np.zeros(0, dtype=np.int32)
        return TokenizedSplit(flat, np.asarray(self.offsets, dtype=np.int64), self.predicted_bytes, self.predicted_chars)


def within_budgets(documents: Iterable[dict], tokenizer, budgets: dict[str, int], chunk: int = 256) -> Iterator[dict]:
    """`documents` (dicts with split and text) until every split holds its token budget: a large
    source is read no further than the tokens the tokenize stage will keep (SplitTokenizer keeps a
    split's first `budget` tokens, so a split is full once its documents' tokens reach it). Counts
    only, `chunk` documents at a time; all of the last chunk pass."""
    bar = progress(total=sum(budgets.values()), desc="prepare", unit="tok", unit_scale=True, leave=False)
    counted = dict.fromkeys(budgets, 0)
    documents = iter(documents)
    try:
        while any(counted[split] < budget for split, budget in budgets.items()):
            batch = list(itertools.islice(documents, chunk))
            if not batch:
                return
            for split, budget in budgets.items():
                texts = [document["text"] for document in batch if document["split"] == split]
                if texts and counted[split] < budget:
                    tokens = sum(map(len, tokenizer(texts, add_special_tokens=False)["input_ids"]))
                    bar.update(min(tokens, budget - counted[split]))
                    counted[split] += tokens
            yield from batch
    finally:
        bar.close()


def tokenize_documents(tokenizer, texts: list[str], budget: int, chunk: int = 256) -> TokenizedSplit:
    """The first `budget` tokens of `texts` in order (SplitTokenizer), `chunk` texts a call."""
    split = SplitTokenizer(tokenizer, budget)
    for start in range(0, len(texts), chunk):
        split.add(texts[start : start + chunk])
        if split.full:
            break
    split.bar.close()
    return split.result()
