"""What each stage's start imports (issue 27, item 5): a heavy library only where the stage uses it.
torch where a stage computes with it, pandas only through DVCLive in the stages that log training
curves, transformers only once a stage loads a tokenizer or builds GPT-2 (never at import), and
matplotlib only for `ctxlm report`'s plots."""

import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "transformers", "pandas", "matplotlib")
EXPECTED = {
    "prepare": set(),  # counts tokens with the tokenizers library, writes Parquet with pyarrow
    "tokenize": {"torch"},
    "train_context": {"torch", "pandas"},
    "generate_cstar": {"torch"},
    "train_token": {"torch", "pandas"},
    "evaluate": {"torch"},
    "baseline_ngram": {"torch"},
    "baseline_neural": {"torch", "pandas"},
}


@pytest.mark.parametrize("stage", sorted(EXPECTED))
def test_a_stage_imports_only_the_heavy_libraries_it_uses(stage):
    script = f"import sys, stages.{stage}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert set(loaded) == EXPECTED[stage]
