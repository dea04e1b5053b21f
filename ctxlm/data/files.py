"""Files between stages: written atomically with a manifest of sizes and checksums, read verified;
and the token shards (one flat id array and document offsets per split). numpy alone, no torch:
`prepare` imports this module.

A stage writes its output folder under a temporary name and renames it when complete, so an
interrupted stage never leaves a folder that looks done. Each folder's manifest.json, written last,
lists every file with its size and SHA-256; readers check them before trusting anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

from ctxlm.errors import CtxlmError

MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: Path, meta: dict, checksums: dict[str, str] | None = None) -> None:
    """List every file of `folder` with its size and SHA-256; `checksums` (relative name -> SHA-256)
    are ones the caller has just computed, not computed again."""
    checksums = checksums or {}
    files = {}
    for p in sorted(folder.rglob("*")):
        name = str(p.relative_to(folder))
        if p.is_file() and p.name != MANIFEST:
            files[name] = {"bytes": p.stat().st_size, "sha256": checksums.get(name) or sha256(p)}
    write_json_atomic(folder / MANIFEST, {"meta": meta, "files": files})


def read_manifest(folder: Path, regenerate: str) -> dict:
    """Verify every file of `folder` against its manifest; returns the manifest's meta.

    `regenerate` names the DVC stage that writes the folder, for the error message."""
    folder = Path(folder)
    hint = f"rerun it with: dvc repro --force {regenerate}"
    path = folder / MANIFEST
    if not path.is_file():
        raise CtxlmError(f"{folder}: missing or incomplete (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CtxlmError(f"{path}: corrupt manifest; {hint}") from None
    for name, expected in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise CtxlmError(f"{file}: missing; {hint}")
        if file.stat().st_size != expected["bytes"]:
            raise CtxlmError(f"{file}: {file.stat().st_size} bytes, expected {expected['bytes']} (truncated?); {hint}")
        if sha256(file) != expected["sha256"]:
            raise CtxlmError(f"{file}: checksum mismatch (corrupt); {hint}")
    return manifest["meta"]


# ---- token shards: one flat id array and document offsets per split ----------------------------


def save_tokens(folder: Path, split: str, ids: np.ndarray, offsets: np.ndarray) -> None:
    """ids: (N,) int32, offsets: (D+1,) int64 with document d at ids[offsets[d]:offsets[d+1]]."""
    np.save(folder / f"{split}_ids.npy", ids.astype(np.int32))
    np.save(folder / f"{split}_offsets.npy", offsets.astype(np.int64))


class TokenSplit:
    def __init__(self, folder: Path, split: str):
        self.ids = np.load(Path(folder) / f"{split}_ids.npy", mmap_mode="r")  # (N,)
        self.offsets = np.load(Path(folder) / f"{split}_offsets.npy")  # (D+1,)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def doc_starts(self) -> np.ndarray:
        return doc_starts(self.offsets, len(self))

    def has_next(self) -> np.ndarray:
        return has_next(self.offsets, len(self))


def doc_starts(offsets: np.ndarray, n: int) -> np.ndarray:
    """(N,) bool: True at each document's first token."""
    starts = np.zeros(n, dtype=bool)
    starts[offsets[:-1]] = True
    return starts


def document_first(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(M,) token positions -> (M,) the first token of each one's document (`offsets`: D+1, from 0)."""
    return offsets[np.searchsorted(offsets, positions, side="right") - 1]


def has_next(offsets: np.ndarray, n: int) -> np.ndarray:
    """(N,) bool: True where the next token is in the same document (a training target exists)."""
    has = np.ones(n, dtype=bool)
    has[offsets[1:] - 1] = False
    return has


SPLITS = ("train", "val", "test")  # training; validation (early stopping); test (the headline figures)
