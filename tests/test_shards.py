import numpy as np
import pytest

from ctxlm.errors import CtxlmError
from ctxlm.shards import CstarReader, atomic_dir, read_manifest, write_manifest


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
    (folder / "manifest.json").unlink()
    with pytest.raises(CtxlmError, match="no manifest.json"):
        read_manifest(folder, "generate_cstar")
