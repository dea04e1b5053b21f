"""The whole ctxlm model, top to bottom: input features, ContextBlock, TokenBlock and head.

Shapes: N tokens, V vocabulary, d_e embedding width, k = num_input_tokens, d_x = k*d_e,
L = num_layers, d_c = context_dim, n_b = context_blocks, d_C = n_b*d_c the width of C*, p = prev_contexts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


OPTIONAL_FIELDS = {"prev_contexts": 0, "context_blocks": 1}  # written only when not these defaults; older files lack them


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V
    embed_dim: int  # d_e
    context_dim: int = 512  # d_c
    num_layers: int = 1  # L
    num_input_tokens: int = 1  # k
    token_input_all_layers: bool = True
    prev_contexts: int = 0  # p: the TokenBlock's extra final-layer contexts c_{i-1} .. c_{i-p}
    context_blocks: int = 1  # n_b: independent ContextBlocks of width d_c each, their C* side by side

    @property
    def input_dim(self) -> int:  # d_x
        return self.num_input_tokens * self.embed_dim

    @property
    def cstar_dim(self) -> int:  # d_C: the width of a C* row, all blocks side by side
        return self.context_blocks * self.context_dim

    @classmethod
    def from_params(cls, model, embedding: torch.Tensor) -> "ModelConfig":
        """From params.yaml's `model` section (ModelParams) and the (V, d_e) embedding."""
        return cls(
            vocab_size=embedding.shape[0], embed_dim=embedding.shape[1], context_dim=model.context_dim,
            num_layers=model.num_layers, num_input_tokens=model.num_input_tokens, token_input_all_layers=model.token_input_all_layers,
            prev_contexts=model.prev_contexts, context_blocks=model.context_blocks,
        )

    def to_metadata(self) -> dict[str, str]:
        """Every field as text; the OPTIONAL ones only when not their default, so that files of models without them stay as they were."""
        return {key: str(value) for key, value in asdict(self).items() if OPTIONAL_FIELDS.get(key, None) != value}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "ModelConfig":
        def parse(key: str, value: str):
            return value == "True" if key == "token_input_all_layers" else int(value)

        return cls(**{key: parse(key, meta[key]) for key in cls.__dataclass_fields__ if key in meta or key not in OPTIONAL_FIELDS})


def token_windows(ids: torch.Tensor, doc_starts: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) token ids of concatenated documents -> (N, k) ids of the last k tokens, oldest first.

    Slots before a document's first token hold -1 (zero padding); doc_starts is the (N,) bool mask
    of each document's first token."""
    n = ids.shape[0]
    doc_index = torch.cumsum(doc_starts.long(), 0)  # (N,) which document each token is in
    windows = torch.full((n, k), -1, dtype=torch.long, device=ids.device)
    for back in range(k):  # column k-1-back holds the token `back` positions earlier
        if back >= n:
            break
        same_doc = doc_index[back:] == doc_index[: n - back]
        windows[back:, k - 1 - back] = torch.where(same_doc, ids[: n - back].long(), -1)
    return windows


def input_features(embedding: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """x_i: (..., k) id windows -> (..., k*d_e), each slot LayerNorm(E[t]) (no affine), -1 -> zeros."""
    valid = windows >= 0
    emb = embedding[windows.clamp(min=0)]  # (..., k, d_e)
    x = F.layer_norm(emb, emb.shape[-1:]) * valid.unsqueeze(-1).to(emb.dtype)
    return x.flatten(-2)


class ContextBlock(nn.Module):
    """c_i^l = LN(c_i^{l-1} + GELU(W_l [c_i^{l-1}; x_i] + b_l)), c_i^0 = c_{i-1}^L, c_0^L = 0.

    Layer 1 always reads x_i; the other layers read it only when token_input_all_layers is set."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d_c, d_x = cfg.context_dim, cfg.input_dim
        reads_token = [l == 0 or cfg.token_input_all_layers for l in range(cfg.num_layers)]
        self.linears = nn.ModuleList(nn.Linear(d_c + (d_x if r else 0), d_c) for r in reads_token)
        self.norms = nn.ModuleList(nn.LayerNorm(d_c) for _ in range(cfg.num_layers))
        self.reads_token = reads_token

    def forward(self, c_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One recurrence step for a batch of tokens: (B, d_c) previous context, (B, d_x) -> (B, L, d_c)."""
        outs = []
        c = c_prev
        for linear, norm, reads in zip(self.linears, self.norms, self.reads_token):
            inp = torch.cat([c, x], dim=-1) if reads else c
            c = norm(c + F.gelu(linear(inp)))
            outs.append(c)
        return torch.stack(outs, dim=1)

    def split_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """W_l split into its context part (d_c, d_c), its token part (d_c, d_x) or None, and b_l."""
        w, b = self.linears[layer].weight, self.linears[layer].bias
        d_c = self.cfg.context_dim
        return w[:, :d_c], (w[:, d_c:] if self.reads_token[layer] else None), b


class ContextBlocks(nn.ModuleList):
    """n_b independent ContextBlocks of width d_c (model.context_blocks), each trained in phase 1 on
    its own part of the training stream; C* is their contexts side by side:
    C*_i = [c_i(block 1); ...; c_i(block n_b)], (L, d_C) with d_C = n_b*d_c. One block is the plain model."""

    def __init__(self, cfg: ModelConfig, blocks: list[ContextBlock] | None = None):
        one = replace(cfg, context_blocks=1)  # each block's own config
        super().__init__(blocks if blocks is not None else [ContextBlock(one) for _ in range(cfg.context_blocks)])
        if len(self) != cfg.context_blocks or any(block.cfg != one for block in self):
            raise ValueError(f"ContextBlocks: expected {cfg.context_blocks} blocks of config {one}")
        self.cfg = cfg

    def forward(self, c_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One recurrence step of every block: (B, d_C) previous contexts, (B, d_x) -> (B, L, d_C)."""
        parts = c_prev.split(self.cfg.context_dim, dim=-1)
        return torch.cat([block(c, x) for block, c in zip(self, parts)], dim=-1)


def token_block_widths(cfg: ModelConfig) -> list[int]:
    """Widths of h^0..h^L: linear from k*d_e down to d_e (all d_e when k = 1)."""
    k, d_e, L = cfg.num_input_tokens, cfg.embed_dim, cfg.num_layers
    return [round(k * d_e - (k - 1) * d_e * l / L) for l in range(L + 1)]


class TokenBlock(nn.Module):
    """h_i^l = LN(P_l h_i^{l-1} + GELU(U_l [c_i^l; c_{i-1}^L .. c_{i-p}^L; h_i^{l-1}] + a_l)), h_i^0 = x_i.

    P_l is the identity where the width stays, a bias-free Linear where it shrinks (k > 1); the
    previous final-layer contexts (p = prev_contexts, none by default) are zero before a document's start.
    Each context is a C* row of width d_C (all the ContextBlocks side by side)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        widths = token_block_widths(cfg)
        d_c = cfg.cstar_dim * (1 + cfg.prev_contexts)
        self.linears = nn.ModuleList(
            nn.Linear(d_c + w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.residuals = nn.ModuleList(
            nn.Identity() if w_in == w_out else nn.Linear(w_in, w_out, bias=False)
            for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.norms = nn.ModuleList(nn.LayerNorm(w) for w in widths[1:])

    def forward(self, contexts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, L + p, d_C) C* (its L layers, then c_{i-1}^L .. c_{i-p}^L) and (B, d_x) inputs -> (B, d_e) final hidden state h^L."""
        h = x
        previous = contexts[:, len(self.linears) :].flatten(1)  # (B, p * d_C): what follows the L layers
        for l, (linear, residual, norm) in enumerate(zip(self.linears, self.residuals, self.norms)):
            h = norm(residual(h) + F.gelu(linear(torch.cat([contexts[:, l], previous, h], dim=-1))))
        return h


def untied_head(embedding: torch.Tensor) -> nn.Linear:
    """An output layer Linear(d_e -> V) with bias that starts as a copy of E (zero bias)."""
    vocab_size, embed_dim = embedding.shape
    head = nn.Linear(embed_dim, vocab_size)
    with torch.no_grad():
        head.weight.copy_(embedding)
        head.bias.zero_()
    return head


def head_parameters(embedding: torch.Tensor, head: nn.Linear | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output layer as (weight (V, d_e), bias (V,) or None): E itself when tied (no head)."""
    if head is None:
        return embedding, None
    return head.weight, head.bias


class TokenModel(nn.Module):
    """Phase-2 model: TokenBlock over (C*, x) plus the output head.

    The embedding E is a parameter (frozen or trained); the head is E itself when tied, else a
    Linear(d_e -> V) with bias that starts as a copy of E."""

    def __init__(self, cfg: ModelConfig, embedding: torch.Tensor, weight_tying: bool, freeze_embedding: bool):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Parameter(embedding.clone().float(), requires_grad=not freeze_embedding)
        self.token_block = TokenBlock(cfg)
        self.head = None if weight_tying else untied_head(embedding)

    def hidden(self, contexts: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """(B, L + p, d_C) C* with the p previous final-layer contexts, (B, k) id windows -> (B, d_e)."""
        return self.token_block(contexts, input_features(self.embedding, windows))

    def head_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output layer as (weight (V, d_e), bias (V,) or None): E itself when tied."""
        return head_parameters(self.embedding, self.head)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d_e) -> (B, V)."""
        weight, bias = self.head_parameters()
        return F.linear(hidden, weight, bias)

    def forward(self, contexts: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        return self.logits(self.hidden(contexts, windows))
