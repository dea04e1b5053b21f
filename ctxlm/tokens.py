"""Tokenizing documents into one flat id array with document offsets, up to a token budget."""

from __future__ import annotations

import numpy as np

from ctxlm.runtime import progress


def tokenize_documents(tokenizer, texts: list[str], budget: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The first `budget` tokens of `texts` in order (the last document cut short if needed).

    Returns (N,) int32 ids and (D+1,) int64 offsets; documents with no tokens are skipped.
    No special tokens are added: the context resets at each document start instead."""
    ids: list[np.ndarray] = []
    offsets = [0]
    bar = progress(total=budget, desc="tokenize", unit="tok", unit_scale=True, leave=False)
    for start in range(0, len(texts), chunk):
        encoded = tokenizer(texts[start : start + chunk], add_special_tokens=False)["input_ids"]
        for doc in encoded:
            doc = doc[: budget - offsets[-1]]
            if doc:
                ids.append(np.asarray(doc, dtype=np.int32))
                offsets.append(offsets[-1] + len(doc))
                bar.update(len(doc))
            if offsets[-1] >= budget:
                break
        if offsets[-1] >= budget:
            break
    bar.close()
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return flat, np.asarray(offsets, dtype=np.int64)
