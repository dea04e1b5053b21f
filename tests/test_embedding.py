import json

import pytest
import torch
from safetensors.torch import save_file

from ctxlm.data.embedding import load_embedding
from ctxlm.data.tokenizer import load_token_counter, load_tokenizer, resolve_model_dir
from ctxlm.errors import CtxlmError


def test_offline_default_embedding():
    embedding = load_embedding(resolve_model_dir("minilm"))
    assert embedding.shape == (30522, 384) and embedding.dtype == torch.float32


def test_finds_gpt2_style_embedding(tmp_path):
    wte = torch.randn(11, 4)
    save_file({"transformer.wte.weight": wte, "transformer.h.0.attn.c_attn.weight": torch.randn(4, 12)}, tmp_path / "model.safetensors")
    assert torch.equal(load_embedding(tmp_path), wte)


def test_model_folder_without_embedding(tmp_path):
    save_file({"encoder.layer.0.weight": torch.randn(4, 4)}, tmp_path / "model.safetensors")
    with pytest.raises(CtxlmError, match="no token-embedding tensor"):
        load_embedding(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CtxlmError, match="has no weights"):
        load_embedding(empty)


def test_missing_folder_and_unreachable_hub(tmp_path, monkeypatch):
    with pytest.raises(CtxlmError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "nope"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CtxlmError, match="not-a-user/not-a-model"):
        resolve_model_dir("not-a-user/not-a-model")


class RunsCode:
    """A pickle that would create a file when unpickled by plain torch.load/pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_model_folder_cannot_run_code(tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "untrusted"
    folder.mkdir()
    torch.save({"wte.weight": torch.randn(11, 4), "payload": RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CtxlmError, match="cannot read"):
        load_embedding(folder)
    # a tokenizer that asks for its own code is refused, not imported
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}}))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(CtxlmError, match="cannot load a tokenizer"):
        load_tokenizer(folder)
    assert not marker.exists()


def test_the_token_counter_counts_what_the_tokenizer_makes_of_the_whole_corpus():
    """prepare counts tokens with the `tokenizers` library alone, tokenize with transformers'
    AutoTokenizer: on every Shakespeare scene both give the same count (the default model's
    tokenizer.json cuts at 128 tokens unless the counter turns that off)."""
    from ctxlm.data.sources import shakespeare_documents

    texts = [scene["text"] for scene in shakespeare_documents([], [])]
    model_dir = resolve_model_dir("minilm")
    expected = [len(ids) for ids in load_tokenizer(model_dir)(texts, add_special_tokens=False)["input_ids"]]
    assert load_token_counter(model_dir)(texts) == expected and max(expected) > 1_000


def test_a_model_folder_without_a_tokenizer_json_cannot_count_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\nhello\n")
    with pytest.raises(CtxlmError, match="no tokenizer.json"):
        load_token_counter(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CtxlmError, match="cannot read the tokenizer"):
        load_token_counter(tmp_path)
