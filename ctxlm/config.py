"""The params.yaml schema: every key, its type, range and default, and one clear error per bad key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ctxlm.errors import CtxlmError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DataParams(_Section):
    source: str = Field("shakespeare", min_length=1)
    """'shakespeare' (offline default), a text or record file or folder, a save_to_disk folder[:split], or
    'hf:<id or folder>[:<split>]': the forms in ctxlm/data/sources.py and docs/corpora.md."""
    text_field: str = Field("text", min_length=1)
    """The field or column of a record (JSONL, Parquet, Arrow, datasets) that holds its text; records
    without it are read from their UltraChat-style `messages`."""
    val_plays: list[str] = ["hamlet", "macbeth"]
    """Shakespeare: whole plays held out for validation (early stopping)."""
    test_plays: list[str] = ["othello"]
    """Shakespeare: whole plays held out for the headline test figures, in neither train nor val."""
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    max_train_tokens: int = Field(250_000, ge=2)
    max_val_tokens: int = Field(100_000, ge=2)
    max_test_tokens: int = Field(100_000, ge=2)

    @property
    def token_budgets(self) -> dict[str, int]:
        """The tokens each split keeps at most: {split: data.max_<split>_tokens}."""
        return {"train": self.max_train_tokens, "val": self.max_val_tokens, "test": self.max_test_tokens}

    @model_validator(mode="after")
    def _held_out_splits_are_disjoint(self) -> "DataParams":
        both = sorted(set(self.val_plays) & set(self.test_plays))
        if both:
            raise ValueError(f"data.val_plays and data.test_plays share {both}; a play is in one held-out split only")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction is {self.val_fraction + self.test_fraction}; "
                             "it must leave documents for training (< 1)")
        return self


class EmbeddingParams(_Section):
    model: str = "minilm"
    """'minilm' (the offline all-MiniLM-L6-v2), a local model folder, or a Hugging Face id such as 'gpt2'."""


class ModelParams(_Section):
    context_dim: int = Field(512, ge=1, le=65536)
    num_layers: int = Field(1, ge=1, le=64)
    num_input_tokens: int = Field(1, ge=1, le=64)
    token_input_all_layers: bool = True
    freeze_embedding: bool = True
    weight_tying: bool = True
    context_blocks: int = Field(1, ge=1, le=64)
    """Independent ContextBlocks of width context_dim each; block j trains in phase 1 on the j-th contiguous
    1/context_blocks of the training documents, with its own seed; the TokenBlock reads their C* side by side."""
    prev_contexts: int = Field(0, ge=0, le=64)
    """The TokenBlock also reads the final-layer C* of the p tokens before each one (zeros before its
    document's start), from the same shards: phase 2 only."""


class Phase1Params(_Section):
    max_iterations: int = Field(60, ge=0)
    """0: no training at all, the seeded random ContextBlock kept as initialised (the untrained control)."""
    lr: float = Field(0.002, gt=0.0)
    context_noise: float = Field(0.1, ge=0.0)
    centroid_weight: float = Field(0.1, ge=0.0)
    gradient_clip: float = Field(2.0, gt=0.0)
    convergence_threshold: float = Field(0.03, gt=0.0)
    early_stop_convergence: float = Field(0.9, gt=0.0, le=1.0)
    batch_tokens: int = Field(5000, ge=1)
    max_tokens: int = Field(500_000, ge=1)
    """Phase 1 trains on a seeded sample of whole training documents of at most this many tokens
    (all of them when the split is smaller): its memory and time grow with its tokens. C* and phase 2 use every token."""
    init_std: float = Field(0.1, ge=0.0)
    precision: Literal["fp32", "bf16"] = "fp32"


class CstarParams(_Section):
    shard_tokens: int = Field(262_144, ge=1)
    """Whole documents go to one shard until it holds this many tokens; a shard's documents are computed side by side."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """How C* is stored: computed in fp32 either way; half precision halves the shards' size and reads."""


class Phase2Params(_Section):
    epochs: int = Field(10, ge=1)
    patience: int = Field(2, ge=1)
    batch_size: int = Field(512, ge=1)
    lr: float = Field(0.001, gt=0.0)
    gradient_clip: float = Field(1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 autocast for the matrix products, fp32, or auto: bf16 where the device runs it natively (runtime.resolve_precision)."""


class BaselinesParams(_Section):
    seq_len: int = Field(128, ge=2, le=4096)
    """Positions per sequence of the neural baselines; a step takes phase2.batch_size // seq_len sequences
    (at least one), so about ctxlm's tokens per step."""
    transformer_layers: int = Field(2, ge=1, le=48)


class EvaluateParams(_Section):
    rank_rows: int = Field(10_000, ge=2)


class RuntimeParams(_Section):
    processes: int = Field(1, ge=1, le=1024)
    """Processes per machine for train_context, generate_cstar, train_token and the neural baselines:
    dvc.yaml passes it to torchrun (ctxlm.launch); one per GPU, or a share of the CPU cores each."""
    tf32: bool = True
    """On CUDA, fp32 matrix products in TF32 (tensor cores, 10-bit mantissa); no effect on a CPU."""
    compile: bool = False
    """torch.compile the TokenBlock and the baselines' bodies for training (the first steps compile)."""


class Params(_Section):
    seed: int = Field(0, ge=0)
    data: DataParams = DataParams()
    embedding: EmbeddingParams = EmbeddingParams()
    model: ModelParams = ModelParams()
    phase1: Phase1Params = Phase1Params()
    cstar: CstarParams = CstarParams()
    phase2: Phase2Params = Phase2Params()
    evaluate: EvaluateParams = EvaluateParams()
    baselines: BaselinesParams = BaselinesParams()
    runtime: RuntimeParams = RuntimeParams()

    @model_validator(mode="after")
    def _patience_fits(self) -> "Params":
        if self.phase2.patience > self.phase2.epochs:
            raise ValueError(
                f"phase2.patience ({self.phase2.patience}) is larger than phase2.epochs ({self.phase2.epochs})"
            )
        return self


def _suggestion(loc: tuple) -> str:
    """' (did you mean model.freeze_embedding?)' for a near miss of a known key."""
    section = Params.model_fields.get(str(loc[0])) if len(loc) > 1 else None
    known = section.annotation.model_fields if section else Params.model_fields
    match = difflib.get_close_matches(str(loc[-1]), list(known), n=1)
    if not match:
        return ""
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), match[0]])}?)"


def _format_error(err: ValidationError, path: Path) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _suggestion(e["loc"])
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def parse_params(raw: object, path: Path = Path("params.yaml")) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CtxlmError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise CtxlmError(_format_error(err, path)) from None


def _missing_keys(raw: dict, schema: type[BaseModel], prefix: str = "") -> list[str]:
    """Keys of the schema that `raw` leaves out, as 'section.key: missing (default ...)'."""
    missing = []
    for name, field in schema.model_fields.items():
        if name not in raw and isinstance(field.default, BaseModel):
            missing.append(f"{prefix}{name}: missing section (keys: {', '.join(type(field.default).model_fields)})")
        elif name not in raw:
            missing.append(f"{prefix}{name}: missing (the default is {field.default!r})")
        elif isinstance(field.default, BaseModel) and isinstance(raw[name], dict):
            missing += _missing_keys(raw[name], type(field.default), f"{prefix}{name}.")
    return missing


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file, so a typo anywhere stops the first stage that runs.

    Every key must be written out: DVC tracks the keys of params.yaml, so a key left to its default
    in code would change results without DVC seeing it."""
    path = Path(path)
    if not path.is_file():
        raise CtxlmError(f"{path}: params file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CtxlmError(f"{path}: not valid YAML: {err}") from None
    params = parse_params(raw, path)
    missing = _missing_keys(raw or {}, Params)
    if missing:
        raise CtxlmError("\n".join(f"{path}: {line}" for line in missing))
    return params


def flatten_params(params: dict, prefix: str = "") -> dict[str, object]:
    """Nested params -> {"section.key": value}, the way DVC names a param."""
    flat = {}
    for key, value in params.items():
        flat.update(flatten_params(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat
