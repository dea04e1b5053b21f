import json

import pytest
import torch
from safetensors.torch import save_file

from ctxlm.embedding import load_embedding, load_tokenizer, resolve_model_dir
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
