"""Trained models for `ctxlm generate` and `ctxlm score`: from the DVC workspace, or from a
self-contained folder that `ctxlm export` writes.

An exported folder holds only safetensors and JSON (and the tokenizer's own text files):
    config.json                 what the model is, what it was trained on, its figures
    context_block.safetensors   the ContextBlock(s) (their ModelConfig in the metadata)
    token_model.safetensors     the TokenBlock and head (E left out when frozen)
    embedding.safetensors       E, (V, d_e)
    tokenizer/                  tokenizer.json and its companions (save_pretrained)
    README.md                   the model card
Loading refuses a folder that holds a pickle-based weights file, and never unpickles anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ctxlm.config import flatten_params
from ctxlm.data.files import atomic_dir, read_manifest
from ctxlm.data.shards import load_token_folder
from ctxlm.data.tokenizer import load_tokenizer, resolve_model_dir
from ctxlm.errors import CtxlmError
from ctxlm.generation.inference import CtxlmStepper, LSTMStepper, Stepper, TransformerStepper
from ctxlm.model import ContextBlock, ContextBlocks, TokenModel
from ctxlm.weights import CONTEXT_WEIGHTS, TOKEN_WEIGHTS, context_blocks_from, load_context_blocks, load_token_model, read_safetensors, token_model_from

WORKSPACE_MODELS = ("ctxlm", "lstm", "transformer")  # --model names that read the DVC workspace
EXPORT_FORMAT = "ctxlm-export-1"
EMBEDDING = "embedding.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENS, CONTEXT, TOKEN_MODEL = Path("data/tokens"), Path("data/context"), Path("data/token_model")


@dataclass
class LoadedModel:
    tokenizer: object
    stepper: Stepper
    block: ContextBlock | ContextBlocks | None = None  # ctxlm only: what scoring needs
    token_model: TokenModel | None = None


def load_model(model: str) -> LoadedModel:
    """--model: 'ctxlm', 'lstm' or 'transformer' of the workspace (after `dvc repro`, and for the
    baselines `dvc repro baselines/dvc.yaml`), or an exported folder."""
    if model in WORKSPACE_MODELS:
        return _workspace_model(model)
    return load_export(Path(model))


def _workspace_tokenizer(meta: dict):
    return load_tokenizer(resolve_model_dir(meta["embedding_model"]))


def _workspace_model(model: str) -> LoadedModel:
    if not (TOKENS / "manifest.json").is_file():
        raise CtxlmError(f"--model {model}: no trained workspace here ({TOKENS} is missing); run `dvc repro` first, "
                         "or give an exported model folder")
    meta, _, embedding = load_token_folder(TOKENS)
    tokenizer = _workspace_tokenizer(meta)
    if model == "ctxlm":
        block, _ = load_context_blocks(CONTEXT)
        token_model = load_token_model(TOKEN_MODEL, embedding).eval()
        return LoadedModel(tokenizer, CtxlmStepper(block, token_model), block, token_model)
    from ctxlm.evaluation.baselines import load_baseline  # imports transformers' GPT-2: only when asked for

    folder = Path("data/baselines") / model
    if not (folder / "manifest.json").is_file():
        raise CtxlmError(f"--model {model}: {folder} is missing; train it with: dvc repro baselines/dvc.yaml:baseline_neural@{model}")
    baseline = load_baseline(folder, embedding)
    stepper = LSTMStepper(baseline) if model == "lstm" else TransformerStepper(baseline)
    return LoadedModel(tokenizer, stepper)


def export_model(out: Path, command: str) -> dict:
    """Write the workspace's trained ctxlm to the self-contained folder `out`; returns its config.
    An earlier export in `out` is replaced; any other existing file or non-empty folder is refused."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_export(out))):
        raise CtxlmError(f"{out}: exists and is not an earlier ctxlm export; give a new folder (export replaces only its own)")
    meta, _, _ = load_token_folder(TOKENS)  # verified, like every folder below
    read_manifest(CONTEXT, "train_context")
    metadata = read_manifest(TOKEN_MODEL, "train_token")["config"]  # train_token writes the weights' metadata here too
    metrics = _read_json(Path("metrics/eval.json"), "evaluate")
    config = {
        "format": EXPORT_FORMAT,
        "model": metadata,
        "embedding_model": meta["embedding_model"],
        "trained_on": {split: meta[split] for split in ("train", "val", "test")},
        "params": trained_params(),
        "metrics": {key: metrics[key] for key in sorted(metrics) if key.startswith(("test_", "val_", "train_", "params_", "effective_rank"))},
        "made_by": command,
        "git_commit": _git_commit(),
    }
    tokenizer = _workspace_tokenizer(meta)
    with atomic_dir(out) as folder:
        shutil.copyfile(CONTEXT / CONTEXT_WEIGHTS, folder / CONTEXT_WEIGHTS)
        shutil.copyfile(TOKEN_MODEL / TOKEN_WEIGHTS, folder / TOKEN_WEIGHTS)
        shutil.copyfile(TOKENS / EMBEDDING, folder / EMBEDDING)
        tokenizer.save_pretrained(folder / "tokenizer")
        (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        (folder / "README.md").write_text(model_card(config))
    return config


def load_export(folder: Path) -> LoadedModel:
    """An exported folder -> the ctxlm model in it, reading only safetensors and JSON."""
    if not folder.is_dir():
        raise CtxlmError(f"--model {folder}: no such model folder (give ctxlm, lstm, transformer or a folder written by `ctxlm export`)")
    pickles = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CtxlmError(f"{folder}: holds pickle-based weights ({', '.join(pickles)}); ctxlm loads only safetensors and JSON "
                         "and never unpickles a file: export the model again with `ctxlm export`")
    config = _read_json(folder / "config.json", "ctxlm export")
    if config.get("format") != EXPORT_FORMAT:
        raise CtxlmError(f"{folder / 'config.json'}: not a ctxlm export (format {config.get('format')!r}, expected {EXPORT_FORMAT!r})")
    for name in (CONTEXT_WEIGHTS, TOKEN_WEIGHTS, EMBEDDING):
        if not (folder / name).is_file():
            raise CtxlmError(f"{folder}: {name} is missing; export the model again with `ctxlm export`")
    hint = "export the model again with `ctxlm export`"
    embedding = read_safetensors(folder / EMBEDDING, hint)[0].get("embedding")
    if embedding is None:
        raise CtxlmError(f"{folder / EMBEDDING}: holds no 'embedding' tensor; {hint}")
    block, _ = context_blocks_from(*read_safetensors(folder / CONTEXT_WEIGHTS, hint), str(folder / CONTEXT_WEIGHTS), hint)
    state, metadata = read_safetensors(folder / TOKEN_WEIGHTS, hint)
    token_model = token_model_from(state, metadata, embedding, str(folder / TOKEN_WEIGHTS), hint).eval()
    tokenizer = load_tokenizer(folder / "tokenizer")
    return LoadedModel(tokenizer, CtxlmStepper(block, token_model), block, token_model)


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / "config.json").read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def model_card(config: dict) -> str:
    """The exported folder's README.md: what was trained on what, with which params, and its figures."""
    m, metrics, params = config["model"], config["metrics"], config["params"]
    trained = config["trained_on"]
    rows = [f"| {split} | {trained[split]['tokens']:,} | {trained[split]['documents']:,} |" for split in ("train", "val", "test")]
    figures = [f"| {split} | {metrics[f'{split}_ppl']:.1f} | {metrics[f'{split}_acc']:.2%} | {metrics[f'{split}_bits_per_byte']:.3f} |"
               for split in ("test", "val") if f"{split}_ppl" in metrics]
    return "\n".join([
        "# ctxlm model",
        "",
        "A recurrent ContextBlock (trained alone, with the OACD diversity loss) gives every token a fixed",
        "context vector C*; a TokenBlock reads C* and the token's embedding and predicts the next token.",
        "",
        f"- ContextBlock{'s: ' + m['context_blocks'] + ' side by side, each of' if 'context_blocks' in m else ':'} context width {m['context_dim']}, "
        f"{m['num_layers']} layer(s), {m['num_input_tokens']} input token(s)",
        f"- embedding: `{config['embedding_model']}` ({int(m['vocab_size']):,} x {m['embed_dim']}), "
        f"{'frozen' if m['freeze_embedding'] == 'True' else 'trained'}, head {'tied to it' if m['weight_tying'] == 'True' else 'untied'}",
        f"- corpus: `{params['data.source']}`, seed {params['seed']}",
        f"- parameters: {metrics.get('params_total', 0):,} in all, {metrics.get('params_trainable', 0):,} trained",
        "",
        "| split | tokens | documents |",
        "|---|---|---|",
        *rows,
        "",
        "| split | perplexity | accuracy | bits per byte |",
        "|---|---|---|---|",
        *figures,
        "",
        f"Made by `{config['made_by']}` from git commit `{config['git_commit']}`; config.json holds every param of the run (from dvc.lock).",
        "",
        "Use it without the DVC workspace:",
        "",
        "```",
        "ctxlm generate \"To be, or not\" --model THIS_FOLDER",
        "ctxlm score some.txt --model THIS_FOLDER",
        "```",
        "",
    ])


def _read_json(path: Path, stage: str) -> dict:
    if not path.is_file():
        raise CtxlmError(f"{path}: missing; it comes from {stage}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CtxlmError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); it comes from {stage}") from None


def trained_params() -> dict[str, object]:
    """The params the trained model came from, {"section.key": value}: each ctxlm stage's params as
    dvc.lock recorded them when it ran (params.yaml may have changed since); params.yaml without a lock."""
    import yaml

    lock = Path("dvc.lock")
    if not lock.is_file():
        return flatten_params(yaml.safe_load(Path("params.yaml").read_text()))
    stages = yaml.safe_load(lock.read_text())["stages"]
    return dict(sorted(flatten_params({k: v for stage in stages.values() for k, v in stage.get("params", {}).get("params.yaml", {}).items()}).items()))


def _git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    return "unknown" if done.returncode else done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")

