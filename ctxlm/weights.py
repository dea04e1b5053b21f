"""Trained weights on disk: safetensors files with the model's config as metadata, saved
byte-for-byte deterministically and loaded strictly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from ctxlm.data.files import read_manifest
from ctxlm.errors import CtxlmError
from ctxlm.model import ContextBlocks, ModelConfig, TokenModel

CONTEXT_WEIGHTS = "context_block.safetensors"
TOKEN_WEIGHTS = "token_model.safetensors"


def save_weights(folder: Path, name: str, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write `state` as safetensors whose bytes depend only on the tensors and the metadata.

    safetensors serialises the metadata from a hash map, in an order that changes from process to
    process, so two bit-identical trainings would write different files and DVC would rerun every
    stage downstream for nothing. The header is rewritten with its keys sorted: the same JSON
    entries in another order, so the same length, and the tensor data after it is untouched."""
    data = bytearray(save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata=metadata))
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    ordered = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    if len(ordered) > length:  # cannot happen for the ASCII metadata ctxlm writes; never write a broken file
        raise CtxlmError(f"{name}: the sorted safetensors header is longer than the original ({len(ordered)} > {length} bytes)")
    data[8:8 + length] = ordered.ljust(length, b" ")
    (Path(folder) / name).write_bytes(bytes(data))


def load_trained_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, hint: str) -> None:
    """Load `state` into `module` strictly: every tensor of the module must be there (a frozen
    parameter, never saved, may be left out) with its shape, and no other. A mismatch is an error
    naming the tensors, where they came from (`source`) and what to do (`hint`)."""
    expected = module.state_dict()
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    missing = sorted(set(expected) - set(state) - frozen)
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    problems = [f"{what} {', '.join(names)}" for what, names in
                (("missing tensor(s)", missing), ("unexpected tensor(s)", unexpected), ("tensor(s) of another shape", reshaped)) if names]
    if problems:
        raise CtxlmError(f"{source}: does not fit the {type(module).__name__}: {'; '.join(problems)}; {hint}")
    module.load_state_dict(state, strict=False)


def read_safetensors(path: Path, hint: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; one clear error when it cannot be read."""
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise CtxlmError(f"{path}: not a readable safetensors file ({err}); {hint}") from None


def load_weights(folder: Path, name: str, regenerate: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Verified safetensors weights and their metadata."""
    read_manifest(folder, regenerate)
    return read_safetensors(Path(folder) / name, f"rerun it with: dvc repro --force {regenerate}")


def context_state(blocks: ContextBlocks) -> dict[str, torch.Tensor]:
    """The tensors to save: one block's own (the layout of a one-block model since the start, so
    that its files stay as they were), or every block's prefixed with its number ("0.linears.0.weight")."""
    return blocks[0].state_dict() if len(blocks) == 1 else blocks.state_dict()


def context_blocks_from(state: dict[str, torch.Tensor], metadata: dict[str, str], source: str, hint: str) -> tuple[ContextBlocks, ModelConfig]:
    """Saved ContextBlocks (the `context_state` and config metadata) -> (ContextBlocks in eval mode, its ModelConfig)."""
    cfg = ModelConfig.from_metadata(metadata)
    blocks = ContextBlocks(cfg)
    load_trained_state(blocks[0] if len(blocks) == 1 else blocks, state, source, hint)
    return blocks.eval().requires_grad_(False), cfg


def token_model_from(state: dict[str, torch.Tensor], metadata: dict[str, str], embedding: torch.Tensor, source: str, hint: str) -> TokenModel:
    """A saved TokenModel (its trained state and metadata; E given, used when it was frozen) -> TokenModel."""
    model = TokenModel(ModelConfig.from_metadata(metadata), embedding, metadata["weight_tying"] == "True", metadata["freeze_embedding"] == "True")
    load_trained_state(model, state, source, hint)
    return model


def load_context_blocks(folder: Path) -> tuple[ContextBlocks, ModelConfig]:
    """data/context -> (ContextBlocks in eval mode, its ModelConfig)."""
    state, metadata = load_weights(folder, CONTEXT_WEIGHTS, "train_context")
    return context_blocks_from(state, metadata, str(Path(folder) / CONTEXT_WEIGHTS), "rerun it with: dvc repro --force train_context")


def load_token_model(folder: Path, embedding: torch.Tensor) -> TokenModel:
    """data/token_model -> TokenModel with the best epoch's weights (E from the tokens folder when it was frozen)."""
    state, metadata = load_weights(folder, TOKEN_WEIGHTS, "train_token")
    return token_model_from(state, metadata, embedding, str(Path(folder) / TOKEN_WEIGHTS), "rerun it with: dvc repro --force train_token")
