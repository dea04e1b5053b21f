"""The token-embedding matrix E (V x d_e) of a pretrained model folder (ctxlm.data.tokenizer finds
the folder).

Only the one embedding tensor is read: no model code is run, weights come through safetensors (or
torch.load(weights_only=True) for old .bin files).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctxlm.errors import CtxlmError

# Names the token-embedding tensor goes by in common architectures (BERT, GPT-2, Llama, T5, ...).
EMBEDDING_SUFFIXES = (
    "word_embeddings.weight",
    "wte.weight",
    "embed_tokens.weight",
    "tok_embeddings.weight",
    "shared.weight",
    "embed_in.weight",
    "word_embeddings_layernorm_free.weight",
)


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    return files or sorted(model_dir.glob("pytorch_model*.bin"))


def _candidate_keys(keys: list[str]) -> list[str]:
    return [k for k in keys if k.endswith(EMBEDDING_SUFFIXES)]


def load_embedding(model_dir: Path) -> torch.Tensor:
    """The (V, d_e) token-embedding matrix as float32; a clear error when it is missing or ambiguous."""
    files = _weight_files(model_dir)
    if not files:
        raise CtxlmError(f"embedding.model: '{model_dir}' has no weights (*.safetensors or pytorch_model*.bin)")
    found: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(file, framework="pt") as f:
                    for key in _candidate_keys(list(f.keys())):
                        found[key] = f.get_tensor(key)
            except Exception as err:
                raise CtxlmError(f"embedding.model: cannot read '{file}': {err}") from None
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise CtxlmError(f"embedding.model: cannot read '{file}': {err}") from None
            found.update({k: state[k] for k in _candidate_keys(list(state))})
    matrices = {k: v for k, v in found.items() if v.ndim == 2}
    if not matrices:
        raise CtxlmError(
            f"embedding.model: no token-embedding tensor in '{model_dir}' (looked for names ending in {', '.join(EMBEDDING_SUFFIXES)})"
        )
    shapes = {tuple(v.shape) for v in matrices.values()}
    if len(shapes) > 1:
        raise CtxlmError(f"embedding.model: several different embedding tensors in '{model_dir}': {sorted(matrices)}")
    embedding = next(iter(matrices.values())).float().contiguous()
    if not torch.isfinite(embedding).all():
        raise CtxlmError(f"embedding.model: the embedding in '{model_dir}' holds NaN or inf")
    return embedding


def check_vocab(tokenizer, embedding: torch.Tensor, model_dir: Path) -> None:
    if len(tokenizer) > embedding.shape[0]:
        raise CtxlmError(
            f"embedding.model: tokenizer in '{model_dir}' has {len(tokenizer)} tokens but the embedding only {embedding.shape[0]} rows"
        )

