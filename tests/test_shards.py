import json
import re

import numpy as np
import pytest

from ctxlm.data.files import atomic_dir, read_manifest, write_json_atomic, write_manifest
from ctxlm.data.shards import CstarReader
from ctxlm.errors import CtxlmError


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError("killed")
    assert (final / "a").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def write_shards(folder):
    folder.mkdir()
    np.save(folder / "shard-00000.npy", np.ones((4, 1, 3), dtype=np.float32))
    write_manifest(folder, {"shards": [{"file": "shard-00000.npy", "rows": 4}]})


def test_truncated_shard_is_named(tmp_path):
    folder = tmp_path / "val"
    write_shards(folder)
    shard = folder / "shard-00000.npy"
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(CtxlmError, match=r"shard-00000.npy: \d+ bytes, expected \d+ \(truncated\?\); rerun it with: dvc repro --force generate_cstar"):
        CstarReader(folder)


def test_corrupt_shard_and_missing_manifest(tmp_path):
    folder = tmp_path / "val"
    write_shards(folder)
    shard = folder / "shard-00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CtxlmError, match="checksum mismatch"):
        CstarReader(folder)
    shard.unlink()
    with pytest.raises(CtxlmError, match=rf"^{re.escape(str(shard))}: missing; rerun it with: dvc repro --force generate_cstar$"):
        CstarReader(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CtxlmError, match="no manifest.json"):
        read_manifest(folder, "generate_cstar")


def test_loading_weights_is_strict_and_names_the_tensor_and_the_stage(tmp_path):
    import torch

    from conftest import make_block
    from ctxlm.weights import CONTEXT_WEIGHTS, load_context_blocks, save_weights

    block = make_block()
    for name, state in (("extra", {**block.state_dict(), "linears.9.weight": torch.zeros(1), "linears.9.bias": torch.zeros(1)}),
                        ("missing", {k: v for k, v in block.state_dict().items() if k != "norms.1.bias"}),
                        ("reshaped", {**block.state_dict(), "norms.0.weight": torch.zeros(3)})):
        folder = tmp_path / name
        folder.mkdir()
        save_weights(folder, CONTEXT_WEIGHTS, state, block.cfg.to_metadata())
        write_manifest(folder, {})
        with pytest.raises(CtxlmError) as err:
            load_context_blocks(folder)
        message = str(err.value)
        assert message.startswith(f"{folder / CONTEXT_WEIGHTS}: does not fit the ContextBlock: "), message
        assert "dvc repro --force train_context" in message, message
        assert {"extra": "unexpected tensor(s) linears.9.bias, linears.9.weight", "missing": "missing tensor(s) norms.1.bias",
                "reshaped": "tensor(s) of another shape norms.0.weight"}[name] in message, message
    folder = tmp_path / "whole"
    folder.mkdir()
    save_weights(folder, CONTEXT_WEIGHTS, block.state_dict(), block.cfg.to_metadata())
    write_manifest(folder, {})
    loaded, _ = load_context_blocks(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), block.state_dict().values()))


@pytest.mark.parametrize("freeze", [True, False])
def test_a_token_model_round_trips_with_e_saved_only_when_trained(tmp_path, freeze):
    import torch

    from conftest import make_config
    from ctxlm.model import TokenModel
    from ctxlm.training.phase2 import trained_state
    from ctxlm.weights import TOKEN_WEIGHTS, load_token_model, save_weights

    cfg = make_config()
    embedding = torch.randn(cfg.vocab_size, cfg.embed_dim)
    model = TokenModel(cfg, embedding, weight_tying=False, freeze_embedding=freeze)
    with torch.no_grad():
        model.embedding.add_(0.0 if freeze else 1.0)  # a trained E differs from the tokens folder's
    state = trained_state(model)
    assert ("embedding" in state) == (not freeze)
    save_weights(tmp_path, TOKEN_WEIGHTS, state, {**cfg.to_metadata(), "weight_tying": "False", "freeze_embedding": str(freeze)})
    write_manifest(tmp_path, {})
    loaded = load_token_model(tmp_path, embedding)
    assert loaded.head is not None and loaded.embedding.requires_grad == (not freeze)
    for (name, a), b in zip(loaded.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_tokens_folder_without_the_test_split_names_the_stage(tmp_path):
    import torch

    from ctxlm.data.shards import load_token_folder, save_embedding

    save_embedding(tmp_path, torch.zeros(3, 2))
    write_manifest(tmp_path, {"train": {}, "val": {}})
    with pytest.raises(CtxlmError, match="before the test split.* existed; rerun it with: dvc repro --force tokenize"):
        load_token_folder(tmp_path)


def test_a_tokens_folder_loads_its_splits_and_embedding_and_names_its_stage(tmp_path):
    import torch

    from ctxlm.data.files import SPLITS, save_tokens
    from ctxlm.data.shards import load_token_folder, save_embedding
    from ctxlm.weights import load_token_model

    embedding = torch.arange(6.0).reshape(3, 2)
    save_embedding(tmp_path, embedding)
    for n, split in enumerate(SPLITS):
        save_tokens(tmp_path, split, np.arange(n + 2) % 3, np.array([0, n + 2]))
    write_manifest(tmp_path, {split: {} for split in SPLITS})
    meta, splits, loaded = load_token_folder(tmp_path)
    assert torch.equal(loaded, embedding) and [len(splits[s]) for s in SPLITS] == [2, 3, 4]
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(CtxlmError, match="no manifest.json.*; rerun it with: dvc repro --force tokenize$"):
        load_token_folder(tmp_path)
    with pytest.raises(CtxlmError, match="no manifest.json.*; rerun it with: dvc repro --force train_token$"):
        load_token_model(tmp_path, embedding)


def test_json_is_written_into_folders_that_do_not_exist_yet(tmp_path):
    path = tmp_path / "metrics" / "baselines" / "lstm.json"
    write_json_atomic(path, {"val_ppl": 1.5})
    assert json.loads(path.read_text()) == {"val_ppl": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["lstm.json"]


def test_a_shard_of_other_rows_than_the_manifest_lists_is_named(tmp_path):
    folder = tmp_path / "val"
    folder.mkdir()
    np.save(folder / "shard-00000.npy", np.ones((4, 1, 3), dtype=np.float32))
    write_manifest(folder, {"shards": [{"file": "shard-00000.npy", "rows": 5}]})
    with pytest.raises(CtxlmError, match=r"shard-00000.npy: not the C-ordered C\* shard of 5 rows that the manifest lists \(shape \(4, 1, 3\)\)"):
        CstarReader(folder)
