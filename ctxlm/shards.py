"""Files between stages: written atomically with a manifest of sizes and checksums, read verified.

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
import torch
from safetensors.torch import load_file, save_file

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


def load_token_folder(folder: Path) -> tuple[dict, dict[str, TokenSplit], torch.Tensor]:
    """data/tokens -> (its manifest's meta, the TokenSplit of each of SPLITS, E)."""
    meta = read_manifest(folder, "tokenize")
    missing = [split for split in SPLITS if split not in meta]
    if missing:
        raise CtxlmError(f"{folder}: written before the {', '.join(missing)} split(s) existed; rerun it with: dvc repro --force tokenize")
    embedding = load_file(Path(folder) / "embedding.safetensors")["embedding"]
    return meta, {split: TokenSplit(folder, split) for split in SPLITS}, embedding


def save_embedding(folder: Path, embedding: torch.Tensor) -> None:
    save_file({"embedding": embedding.contiguous()}, Path(folder) / "embedding.safetensors")


# ---- C* shards: (n, L, d_c) arrays of whole documents, in token order ---------------------------

# How C* rows are stored (params.yaml cstar.dtype). numpy has no bfloat16: its raw bits go in uint16.
CSTAR_STORAGE = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.uint16)}


def encode_cstar(rows: torch.Tensor, storage: np.dtype) -> np.ndarray:
    """Rows to assign into a shard of dtype `storage` (float32/float64 cast by numpy on assignment)."""
    if storage == np.uint16:
        return rows.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return rows.cpu().numpy()


def stored_tensor(rows: np.ndarray) -> torch.Tensor:
    """Stored rows as a tensor of their own dtype, without a copy (uint16 shards hold bf16)."""
    return torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16) if rows.dtype == np.uint16 else torch.from_numpy(rows)


def decode_rows(rows: torch.Tensor) -> torch.Tensor:
    """stored_tensor rows, on any device -> float32 (float64 stays float64)."""
    return rows if rows.dtype == torch.float64 else rows.float()


def decode_cstar(rows: np.ndarray) -> torch.Tensor:
    """Stored rows -> float32 (float64 stays float64)."""
    return decode_rows(stored_tensor(rows))


class CstarReader:
    """The C* of one split as one logical (N, L, d_c) array over its verified shards.

    Rows are read with pread into fresh buffers, never memory-mapped: a mapped file's pages count in
    the process's resident memory as they are touched, so an epoch of random reads over a mapping
    would grow RSS with the corpus. Reading costs the rows asked for and nothing more."""

    def __init__(self, folder: Path):
        self.meta = read_manifest(folder, "generate_cstar")
        self.dtype = np.dtype(np.float32)
        self.files, self.data_offsets, rows = [], [], []
        for shard in self.meta["shards"]:
            path = Path(folder) / shard["file"]
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran_order, dtype = read_header(f)
                if fortran_order or shape[0] != shard["rows"]:
                    raise CtxlmError(f"{path}: not the C-ordered C* shard of {shard['rows']} rows that the manifest lists "
                                     f"(shape {shape}); rerun it with: dvc repro --force generate_cstar")
                self.data_offsets.append(f.tell())
            self.files.append(path)
            self.row_shape, self.dtype = shape[1:], dtype
            rows.append(shape[0])
        self.starts = np.cumsum([0] + rows)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.row_shape)

    def _read_into(self, out: np.ndarray, start: int) -> None:
        """Fill `out` ((n, L, d_c) stored dtype) with rows start .. start+n, across shard borders."""
        done = 0
        while done < len(out):
            row = start + done
            s = int(np.searchsorted(self.starts, row, side="right") - 1)
            n = min(len(out) - done, int(self.starts[s + 1]) - row)
            view = memoryview(out[done : done + n].reshape(-1).view(np.uint8))
            with open(self.files[s], "rb", buffering=0) as f:
                got = os.preadv(f.fileno(), [view], self.data_offsets[s] + (row - int(self.starts[s])) * self.row_bytes)
            if got != n * self.row_bytes:
                raise CtxlmError(f"{self.files[s]}: short read at row {row} (file changed since it was verified?); rerun it with: dvc repro --force generate_cstar")
            done += n

    def slice(self, start: int, stop: int) -> torch.Tensor:
        """Rows start .. stop -> (stop - start, L, d_c) float32."""
        return self.gather(np.arange(start, stop))

    def read(self, index: np.ndarray) -> np.ndarray:
        """Rows at `index` (any order, repeats allowed) as stored -> (len(index), L, d_c), read as
        runs of consecutive rows (sorted indices need no second buffer)."""
        index = np.asarray(index, dtype=np.int64)
        is_sorted = bool(np.all(np.diff(index) >= 0))
        order = None if is_sorted else np.argsort(index, kind="stable")
        ordered = index if is_sorted else index[order]
        stored = np.empty((len(index), *self.row_shape), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(index)]])):
            self._read_into(stored[a:b], int(ordered[a]))
        if is_sorted:
            return stored
        out = np.empty_like(stored)
        out[order] = stored
        return out

    def gather(self, index: np.ndarray) -> torch.Tensor:
        """Rows at `index` -> (len(index), L, d_c) float32."""
        return decode_cstar(self.read(index))
