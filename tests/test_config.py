import re
from pathlib import Path

import pytest
import yaml

from ctxlm.config import Params, load_params, parse_params
from ctxlm.errors import CtxlmError

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every key of the schema is written out in params.yaml, so users see and DVC tracks them all
    assert raw == params.model_dump()


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"model": {"num_layers": 0}}, "model.num_layers: Input should be greater than or equal to 1"),
        ({"model": {"context_blocks": 0}}, "model.context_blocks: Input should be greater than or equal to 1 (got 0)"),
        ({"model": {"prev_contexts": -1}}, "model.prev_contexts: Input should be greater than or equal to 0 (got -1)"),
        ({"model": {"context_dim": "abc"}}, "model.context_dim: Input should be a valid integer"),
        ({"model": {"freeze_embeding": True}}, "model.freeze_embeding: unknown key (did you mean model.freeze_embedding?)"),
        ({"phase3": {}}, "phase3: unknown key (did you mean phase2?)"),
        ({"model": {"freeze_embedding": "yes"}}, "model.freeze_embedding: Input should be a valid boolean"),
        ({"phase1": {"lr": -1.0}}, "phase1.lr: Input should be greater than 0"),
        ({"phase1": {"early_stop_convergence": 1.5}}, "phase1.early_stop_convergence"),
        ({"phase2": {"precision": "fp8"}}, "phase2.precision"),
        ({"phase2": {"epochs": 1, "patience": 2}}, "phase2.patience"),
        ({"data": {"max_train_tokens": 1.5}}, "data.max_train_tokens"),
        ({"data": {"val_fraction": 1.0}}, "data.val_fraction"),
        ({"modle": {}}, "modle: unknown key"),
        ({"seed": -1}, "seed"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(CtxlmError, match=re.escape(message)):
        parse_params(raw)


def test_params_file_errors(tmp_path):
    with pytest.raises(CtxlmError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(CtxlmError, match="not valid YAML"):
        load_params(bad)


def test_defaults_follow_the_seed():
    p = Params()
    assert (p.model.num_layers, p.model.context_dim, p.model.freeze_embedding, p.model.weight_tying) == (1, 512, True, True)
    assert p.model.token_input_all_layers and p.phase2.batch_size == 512 and p.phase2.patience == 2
