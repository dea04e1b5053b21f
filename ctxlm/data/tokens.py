"""Each split's seeded sample of documents up to its token budget (prepare), and tokenizing documents into
one flat id array with document offsets, up to a token budget (tokenize)."""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ctxlm.cli import progress
from ctxlm.errors import CtxlmError


@dataclass
class TokenizedSplit:
    ids: np.ndarray  # (N,) int32
    offsets: np.ndarray  # (D+1,) int64: document d is ids[offsets[d]:offsets[d+1]]
    predicted_bytes: int  # UTF-8 bytes of the text the predicted tokens cover (see tokenize_documents)
    predicted_chars: int  # the same in characters


class SplitTokenizer:
    """A split's documents tokenized as they come, in order, up to `budget` tokens (the last
    document cut short if needed), so a corpus can be streamed through it; the result orders them
    by their sampling keys when they come with some (prepare's), so that it does not depend on the
    order a corpus was read in.

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
        self.keys: list[int] = []
        self.predicted_bytes = self.predicted_chars = 0
        self.bar = bar if bar is not None else progress(total=budget, desc="tokenize", unit="tok", unit_scale=True, leave=False)

    @property
    def full(self) -> bool:
        return self.offsets[-1] >= self.budget

    def add(self, texts: list[str], keys: list[int] | None = None) -> None:
        """`keys`: the documents' sampling keys, by which result() orders them; by default, as they come."""
        if self.full or not texts:
            return
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for i, (text, doc, spans) in enumerate(zip(texts, encoded["input_ids"], encoded["offset_mapping"])):
            doc = doc[: self.budget - self.offsets[-1]]
            if doc:
                self.ids.append(np.asarray(doc, dtype=np.int32))
                self.keys.append(len(self.keys) if keys is None else keys[i])
                self.offsets.append(self.offsets[-1] + len(doc))
                predicted = text[spans[0][1] : spans[len(doc) - 1][1]]
                self.predicted_chars += len(predicted)
                self.predicted_bytes += len(predicted.encode("utf-8"))
                self.bar.update(len(doc))
            if self.full:
                break

    def result(self) -> TokenizedSplit:
        ids = [self.ids[i] for i in np.argsort(np.asarray(self.keys, dtype=np.uint64), kind="stable")]
        flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        offsets = np.concatenate([[0], np.cumsum([len(doc) for doc in ids], dtype=np.int64)])
        return TokenizedSplit(flat, offsets.astype(np.int64), self.predicted_bytes, self.predicted_chars)


MIX_TOLERANCE = 0.10  # a group's share of a split may differ from its share of the region by this much before prepare warns


@dataclass
class Sample:
    """What `prepare` keeps of the region of a corpus it read (sample_documents)."""

    region: int  # documents read: the region is the reading's first `region` documents
    read_to_end: bool  # the region is the whole corpus
    splits: list[str]
    split_of: np.ndarray  # (region,) int8: each document's split, an index into `splits`
    keys: np.ndarray  # (region,) uint64: each document's sampling key
    chosen: np.ndarray  # (region,) bool: the documents the splits keep (arrays: a dict of them held 30 MB a 100k documents)
    last: dict[str, int]  # split -> its chosen document of highest key, which tokenize cuts to the budget
    mix: dict[str, list[dict]]  # split -> a row per group: documents, tokens, share, region_share

    def chosen_splits(self) -> dict[int, str]:
        """{index in the reading: split} of every document kept."""
        return {int(i): self.splits[self.split_of[i]] for i in np.flatnonzero(self.chosen)}

    def kept(self, split: str, key: str) -> int:
        return sum(row[key] for row in self.mix[split])

    def gap(self, split: str) -> tuple[float, str]:
        """The largest difference between a group's share of the split and of its region, and the group."""
        row = max(self.mix[split], key=share_gap)
        return share_gap(row), row["group"]

    def off_mix(self, split: str) -> list[dict]:
        """The split's groups whose share differs from their region share by more than MIX_TOLERANCE."""
        return [row for row in self.mix[split] if share_gap(row) > MIX_TOLERANCE]


def share_gap(row: dict) -> float:
    """How far a group's share of a split is from its share of the region (a mix row)."""
    return abs(row["share"] - row["region_share"])


def sample_documents(documents: Iterable[dict], token_counts: Callable[[list[str]], list[int]], budgets: dict[str, int], whole_groups_held_out: bool,
                     chunk: int = 256) -> Sample:
    """Each split's seeded, uniform sample of whole documents from the region of the corpus read.

    `documents` (dicts with split, group, text and key, in the seeded reading order) are read a chunk
    at a time, each one's tokens counted (`token_counts`: texts -> counts), until every split's documents hold its token budget or the
    corpus ends: that prefix is the region. A split keeps its documents of the region in order of
    key until their tokens reach its budget (all of them when they hold fewer): a uniform sample, as
    the keys are seeded draws. Holds four numbers a document, never its text.

    The mix compares each split with the part of the region it was drawn from: the documents of its
    own split when whole groups are held out (Shakespeare's plays), else the whole region."""
    splits, group_names = list(budgets), {}
    with progress(total=sum(budgets.values()), desc="prepare", unit="tok", unit_scale=True, leave=False) as bar:  # closed on errors too
        split_of, keys, tokens, group_of = array("b"), array("Q"), array("q"), array("l")
        seen = dict.fromkeys(budgets, 0)
        documents = iter(documents)
        read_to_end = False
        while not read_to_end and any(seen[split] < budget for split, budget in budgets.items()):
            batch = list(itertools.islice(documents, chunk))
            read_to_end = len(batch) < chunk
            lengths = token_counts([document["text"] for document in batch]) if batch else []
            for document, length in zip(batch, lengths):
                split = document["split"]
                bar.update(max(0, min(length, budgets[split] - seen[split])))
                seen[split] += length
                split_of.append(splits.index(split))
                keys.append(document["key"])
                tokens.append(length)
                group_of.append(group_names.setdefault(document["group"], len(group_names)))
        if not read_to_end:
            read_to_end = next(documents, None) is None

    split_of, keys, tokens, group_of = (np.array(a, dtype=a.typecode) for a in (split_of, keys, tokens, group_of))
    kept_tokens = np.zeros_like(tokens)
    chosen, last = np.zeros(len(split_of), dtype=bool), {}
    for code, split in enumerate(splits):
        order = np.flatnonzero(split_of == code)
        order = order[np.argsort(keys[order], kind="stable")]
        cumulative = np.cumsum(tokens[order])
        count = min(int(np.searchsorted(cumulative, budgets[split])) + 1, len(order))
        order = order[:count]
        kept_tokens[order] = tokens[order]
        if count:
            last[split] = int(order[-1])
            kept_tokens[order[-1]] -= max(0, int(cumulative[count - 1]) - budgets[split])
        chosen[order] = True

    names = list(group_names)
    mix = {}
    for code, split in enumerate(splits):
        in_split = split_of == code
        pool = in_split if whole_groups_held_out else np.ones_like(in_split)
        picked = chosen & in_split
        sample_tokens = np.bincount(group_of[picked], kept_tokens[picked], minlength=len(names))
        sample_documents_ = np.bincount(group_of[picked], minlength=len(names))
        pool_tokens = np.bincount(group_of[pool], tokens[pool], minlength=len(names))
        mix[split] = [
            {"group": names[g], "documents": int(sample_documents_[g]), "tokens": int(sample_tokens[g]),
             "share": float(sample_tokens[g] / max(sample_tokens.sum(), 1)), "region_share": float(pool_tokens[g] / max(pool_tokens.sum(), 1))}
            for g in np.flatnonzero(pool_tokens + sample_tokens)
        ]
    return Sample(len(split_of), read_to_end, splits, split_of, keys, chosen, last, mix)


def chosen_documents(documents: Iterable[dict], sample: Sample) -> Iterator[dict]:
    """The documents `sample` keeps, from a second reading of the same corpus in the same order: in
    that order, except each split's document of highest key, which comes last so that tokenize (which
    keeps a split's first `budget` tokens) cuts that one. A document whose key differs from the first
    reading's means the corpus changed in between: an error, not a different sample."""
    held = []
    for index, document in enumerate(itertools.islice(documents, sample.region)):
        if not sample.chosen[index]:
            continue
        split, key = sample.splits[sample.split_of[index]], int(sample.keys[index])
        if (split, key) != (document["split"], document["key"]):
            raise CtxlmError(f"data.source: document {index} ({document['title']}) differs between two readings: "
                             "the corpus changed while prepare read it")
        if sample.last[split] == index:
            held.append(document)
        else:
            yield document
    yield from held


def tokenize_documents(tokenizer, texts: list[str], budget: int, chunk: int = 256) -> TokenizedSplit:
    """The first `budget` tokens of `texts` in order (SplitTokenizer), `chunk` texts a call."""
    split = SplitTokenizer(tokenizer, budget)
    for start in range(0, len(texts), chunk):
        split.add(texts[start : start + chunk])
        if split.full:
            break
    split.bar.close()
    return split.result()
