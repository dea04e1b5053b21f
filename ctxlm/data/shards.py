"""The token folder's embedding and the C* shards, read and written through torch (the files
themselves are written and verified by ctxlm.data.files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ctxlm.data.files import SPLITS, TokenSplit, read_manifest
from ctxlm.errors import CtxlmError


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
