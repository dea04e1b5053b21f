"""C*: the exact ContextBlock recurrence over every token, with the block frozen.

`naive_cstar` is the oracle: one token at a time, batch 1, through the module itself.
`batched_cstar` computes the same recurrence for many documents at once: the token part of each
layer (W_x x_i + b) does not depend on the previous context, so it is one big matrix product
hoisted out of the sequential loop, which is left with a (B, d_c) x (d_c, d_c) product per layer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ctxlm.model import ContextBlock, input_features, token_windows
from ctxlm.runtime import progress
from ctxlm.shards import CstarWriter, TokenSplit


@torch.no_grad()
def naive_cstar(block: ContextBlock, x: torch.Tensor) -> torch.Tensor:
    """One document's (T, d_x) inputs -> (T, L, d_c), token by token."""
    c = torch.zeros(1, block.cfg.context_dim, dtype=x.dtype, device=x.device)
    out = []
    for t in range(x.shape[0]):
        layers = block(c, x[t : t + 1])  # (1, L, d_c)
        out.append(layers[0])
        c = layers[:, -1]
    return torch.stack(out)


@torch.no_grad()
def batched_cstar(block: ContextBlock, docs_x: list[torch.Tensor]) -> list[torch.Tensor]:
    """Several documents' (T_b, d_x) inputs -> their (T_b, L, d_c) C*, computed side by side."""
    lengths = [d.shape[0] for d in docs_x]
    B, T = len(docs_x), max(lengths)
    x = docs_x[0].new_zeros(B, T, docs_x[0].shape[1])
    for b, d in enumerate(docs_x):
        x[b, : d.shape[0]] = d
    hoisted = []  # per layer: (B, T, d_c) token part plus bias, or the bias alone
    recurrent = []  # per layer: (d_c, d_c) context part, transposed for c @ W
    for layer in range(block.cfg.num_layers):
        w_c, w_x, bias = block.split_weights(layer)
        hoisted.append(x @ w_x.T + bias if w_x is not None else bias.expand(B, T, -1))
        recurrent.append(w_c.T.contiguous())
    norms = block.norms
    out = x.new_empty(B, T, block.cfg.num_layers, block.cfg.context_dim)
    c = x.new_zeros(B, block.cfg.context_dim)
    for t in range(T):
        for layer, norm in enumerate(norms):
            c = norm(c + F.gelu(c @ recurrent[layer] + hoisted[layer][:, t]))
            out[:, t, layer] = c
    return [out[b, :n] for b, n in enumerate(lengths)]


def split_windows(tokens: TokenSplit, k: int) -> torch.Tensor:
    """(N, k) id windows of a whole split (see model.token_windows)."""
    ids = torch.from_numpy(np.asarray(tokens.ids, dtype=np.int64))
    return token_windows(ids, torch.from_numpy(tokens.doc_starts()), k)


def generate_split(
    block: ContextBlock,
    embedding: torch.Tensor,
    tokens: TokenSplit,
    writer: CstarWriter,
    batch_documents: int,
    desc: str,
) -> None:
    """Write the exact C* of every token of `tokens` to `writer`, in token order (float32)."""
    device = next(block.parameters()).device
    windows = split_windows(tokens, block.cfg.num_input_tokens)
    bar = progress(total=len(tokens), desc=desc, unit="tok", unit_scale=True)
    for first in range(0, tokens.num_docs, batch_documents):
        docs = range(first, min(first + batch_documents, tokens.num_docs))
        docs_x = [input_features(embedding, windows[tokens.offsets[d] : tokens.offsets[d + 1]].to(device)) for d in docs]
        for cstar in batched_cstar(block, docs_x):
            writer.add(cstar.float().cpu().numpy())
        bar.update(sum(int(tokens.offsets[d + 1] - tokens.offsets[d]) for d in docs))
    writer.flush()
    bar.close()
