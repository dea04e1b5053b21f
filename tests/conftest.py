import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ctxlm.data.files import save_tokens, TokenSplit
from ctxlm.model import ContextBlock, ModelConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=50, embed_dim=8, context_dim=12, num_layers=2, num_input_tokens=1, token_input_all_layers=True)
    return ModelConfig(**{**base, **overrides})


def make_block(dtype=torch.float32, **overrides) -> ContextBlock:
    block = ContextBlock(make_config(**overrides)).to(dtype).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine, so tests see it used
        for norm in block.norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    return block


def bf16_head_loss(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor) -> float:
    """The cross-entropy that precision "bf16" means for the head: logits = bf16(hidden) . bf16(W)^T
    summed exactly (fp64) and rounded to bf16 like a bf16 matmul's output, + the fp32 bias; the
    log-softmax in fp64."""
    round_bf16 = lambda t: t.detach().bfloat16().double()  # noqa: E731
    logits = (round_bf16(hidden) @ round_bf16(weight).T).bfloat16().double()
    if bias is not None:
        logits = logits + bias.detach().double()
    return torch.nn.functional.cross_entropy(logits, targets).item()


def make_token_split(tmp_path, doc_lengths, vocab=50, seed=0, split="train") -> TokenSplit:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(doc_lengths)])
    ids = rng.integers(0, vocab, size=int(offsets[-1]))
    save_tokens(tmp_path, split, ids, offsets)
    return TokenSplit(tmp_path, split)


class Killed(Exception):
    """Stands for a SIGKILL in the middle of a stage."""


class Dying:
    """Wraps `fn`: counts its calls and raises Killed at call number `kill_at` (None: never)."""

    def __init__(self, fn, kill_at: int | None):
        self.fn, self.kill_at, self.calls = fn, kill_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.kill_at:
            raise Killed
        return self.fn(*args, **kwargs)


# ---- end-to-end: the real DVC pipeline in a temporary git repository ------------------------------

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "baselines/dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "stages", "ctxlm"]
TINY = {
    "data": {"max_train_tokens": 3000, "max_val_tokens": 1200},
    "model": {"context_dim": 16},
    "phase1": {"max_iterations": 3, "batch_tokens": 1000},
    "phase2": {"epochs": 2, "patience": 1, "batch_size": 256},
    "evaluate": {"rank_rows": 500},
    "baselines": {"seq_len": 32, "transformer_layers": 1},
}
ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def sh(repo: Path, *cmd: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=repo, env={**ENV, **env}, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def write_params(folder: Path, overrides: dict, base: Path | None = None) -> None:
    """Write folder/params.yaml: `base` (default: the folder's own params.yaml) with sections updated by `overrides`."""
    params = yaml.safe_load(((base or folder) / "params.yaml").read_text())
    for section, values in overrides.items():
        params[section].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repository holding the project's pipeline with TINY params."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, repo / name)
    write_params(repo, TINY)
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "dvc", "init", "-q")
    return repo
