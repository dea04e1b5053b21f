"""Tokenizing documents into one flat id array with document offsets, up to a token budget."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctxlm.runtime import progress


@dataclass
class TokenizedSplit:
    ids: np.ndarray  # (N,) int32
    offsets: np.ndarray  # (D+1,) int64: document d is ids[offsets[d]:offsets[d+1]]
    predicted_bytes: int  # UTF-8 bytes of the text the predicted tokens cover (see tokenize_documents)
    predicted_chars: int  # the same in characters


def tokenize_documents(tokenizer, texts: list[str], budget: int, chunk: int = 256) -> TokenizedSplit:
    """The first `budget` tokens of `texts` in order (the last document cut short if needed).

    Documents with no tokens are skipped. No special tokens are added: the context resets at each
    document start instead. Every token of a document but its first is predicted, so the text they
    cover runs from the end of the first token to the end of the last one kept: its size in bytes
    and characters turns a loss into bits per byte or per character, figures that do not depend on
    the tokenizer. Needs a fast tokenizer (character offsets)."""
    ids: list[np.ndarray] = []
    offsets = [0]
    predicted_bytes = predicted_chars = 0
    bar = progress(total=budget, desc="tokenize", unit="tok", unit_scale=True, leave=False)
    for start in range(0, len(texts), chunk):
        batch = texts[start : start + chunk]
        encoded = tokenizer(batch, add_special_tokens=False, return_offsets_mapping=True)
        for text, doc, spans in zip(batch, encoded["input_ids"], encoded["offset_mapping"]):
            doc = doc[: budget - offsets[-1]]
            if doc:
                ids.append(np.asarray(doc, dtype=np.int32))
                offsets.append(offsets[-1] + len(doc))
                predicted = text[spans[0][1] : spans[len(doc) - 1][1]]
                predicted_chars += len(predicted)
                predicted_bytes += len(predicted.encode("utf-8"))
                bar.update(len(doc))
            if offsets[-1] >= budget:
                break
        if offsets[-1] >= budget:
            break
    bar.close()
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return TokenizedSplit(flat, np.asarray(offsets, dtype=np.int64), predicted_bytes, predicted_chars)
