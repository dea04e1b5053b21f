"""Resumable stages: the state of a long stage, saved now and then, valid only for the same inputs.

A stage's checkpoint lives in data/checkpoints/<stage>/ (ignored by git and DVC, so DVC neither
deletes it before the stage reruns nor caches it). It carries a fingerprint of everything the
stage's result depends on (its params, the manifests of its input folders, ctxlm's source); a
checkpoint with another fingerprint is deleted, not resumed. The stage deletes its checkpoint when
its outputs are complete; a stage that fails (a NaN, a kill) leaves the last good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

import ctxlm
from ctxlm import distributed

# CTXLM_CHECKPOINTS moves them: `ctxlm scaling` points each run's outside the temporary copy that
# `dvc exp run --temp` works in, so that a run cut short resumes where it stopped.
CHECKPOINTS = Path(os.environ.get("CTXLM_CHECKPOINTS", "data/checkpoints"))
STATE = "state.pt"


def code_digest() -> str:
    """SHA-256 over ctxlm's source files, its subpackages' included: a checkpoint from other code is not resumed."""
    h = hashlib.sha256()
    package = Path(ctxlm.__file__).parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def folder_digest(folder: Path) -> str:
    """Identity of a stage output folder: the SHA-256 of its manifest (which lists every file's)."""
    return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()


class Checkpoint:
    """Save/load one stage's state (a dict of tensors, numbers, strings, lists) atomically.

    Saves are written to a temporary file, flushed to disk, then renamed; loading uses
    torch.load(weights_only=True), which cannot run code from the file. With several processes
    (ctxlm.distributed) every process loads, and the first alone saves and clears."""

    def __init__(self, stage: str, inputs: dict, root: Path = CHECKPOINTS):
        self.stage = stage
        self.folder = Path(root) / stage
        self.fingerprint = hashlib.sha256(json.dumps({"inputs": inputs, "code": code_digest()}, sort_keys=True, default=str).encode()).hexdigest()
        self.every_s = float(os.environ.get("CTXLM_CHECKPOINT_SECONDS", "120"))
        self.last_save = time.monotonic()

    def load(self) -> dict | None:
        """The saved state when it belongs to these inputs; otherwise the folder is emptied and None."""
        path = self.folder / STATE
        state = None
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # a checkpoint is a cache: an unreadable one is discarded, not fatal
                print(f"ctxlm {self.stage}: discarding unreadable checkpoint {path} ({err.__class__.__name__})", flush=True)
            if state is not None and state.get("fingerprint") != self.fingerprint:
                print(f"ctxlm {self.stage}: discarding the checkpoint of a run with other params, inputs or code", flush=True)
                state = None
        distributed.barrier()  # every process has read it before the first may clear it
        if state is None:
            self.clear()
            if distributed.is_main():
                self.folder.mkdir(parents=True, exist_ok=True)
            distributed.barrier()
        return state

    def due(self) -> bool:
        return time.monotonic() - self.last_save >= self.every_s

    def save(self, state: dict) -> None:
        if not distributed.is_main():
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / STATE
        tmp = path.with_name(f".{STATE}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save({**state, "fingerprint": self.fingerprint}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.last_save = time.monotonic()

    def clear(self) -> None:
        if distributed.is_main():
            shutil.rmtree(self.folder, ignore_errors=True)
