"""The bad-input matrix: every param made wrong in every way the schema allows, and broken corpora
and model folders through the real stage CLIs. Each must stop with one line naming the key or the
path, exit 1, print no traceback and leave the earlier outputs as they were."""

from __future__ import annotations

import gzip
import typing
from pathlib import Path

import annotated_types
import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

import corpus_forms
from conftest import REPO, write_params
from ctxlm.config import Params, load_params
from ctxlm.errors import CtxlmError
from stages import prepare, tokenize

DELETE = object()


def wrong_type(annotation) -> object:
    if annotation is bool:
        return "yes"
    if annotation is str:
        return 5
    if typing.get_origin(annotation) is list:
        return "hamlet"
    return "abc"  # int, float, Literal


def out_of_range(field) -> list[object]:
    if typing.get_origin(field.annotation) is typing.Literal:
        return ["nonsense"]
    values = []
    for bound in field.metadata:
        step = 1 if field.annotation is int else 0.5
        if isinstance(bound, annotated_types.Ge):
            values.append(bound.ge - step)
        if isinstance(bound, annotated_types.Gt):
            values.append(bound.gt - step if field.annotation is int else bound.gt)
        if isinstance(bound, annotated_types.Le):
            values.append(bound.le + step)
        if isinstance(bound, annotated_types.Lt):
            values.append(bound.lt if field.annotation is float else bound.lt + step)
    return values


def param_cases() -> list[tuple[str, tuple[str, ...], object, str]]:
    """(what, key path, value or DELETE, the message expected) for every key of the schema."""
    cases = []
    for section, field in Params.model_fields.items():
        fields = type(field.default).model_fields if isinstance(field.default, BaseModel) else {}
        if not fields:
            fields, prefix = {section: field}, ()
        else:
            prefix = (section,)
            cases.append(("missing section", (section,), DELETE, f"{section}: missing section"))
        for name, sub in fields.items():
            key = (*prefix, name)
            dotted = ".".join(key)
            cases.append(("wrong type", key, wrong_type(sub.annotation), f"{dotted}: Input should be"))
            cases.append(("missing", key, DELETE, f"{dotted}: missing (the default is"))
            typo = (*prefix, name[:-1])
            cases.append(("unknown", typo, "x", f"{'.'.join(typo)}: unknown key (did you mean {dotted}?)"))
            cases += [("out of range", key, value, f"{dotted}: Input should be") for value in out_of_range(sub)]
    return cases


PARAM_CASES = param_cases()


def test_the_matrix_covers_every_key():
    keys = {".".join(key) for what, key, _, _ in PARAM_CASES if what == "missing"}
    assert len(keys) == sum(len(type(f.default).model_fields) if isinstance(f.default, BaseModel) else 1 for f in Params.model_fields.values())
    assert len(PARAM_CASES) > 100


@pytest.mark.parametrize("what, key, value, message", PARAM_CASES, ids=[f"{c[0]}:{'.'.join(c[1])}" for c in PARAM_CASES])
def test_every_bad_param_is_named(tmp_path, what, key, value, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    node = raw
    for part in key[:-1]:
        node = node[part]
    if value is DELETE:
        del node[key[-1]]
    else:
        node[key[-1]] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(CtxlmError) as err:
        load_params(path)
    assert f"{path}: {message}" in str(err.value)


# ---- corpora and model folders, through the stage CLIs ------------------------------------------


def run_stage(app, folder: Path, monkeypatch, **params):
    """Run a stage CLI in `folder` with the repository's params plus `params` ({section: {key: value}})."""
    write_params(folder, params, base=REPO)
    monkeypatch.chdir(folder)
    return CliRunner().invoke(app, [])


def corpus_file(folder: Path, name: str, content: bytes) -> str:
    (folder / name).write_bytes(content)
    return str(folder / name)


BAD_CORPORA = [
    ("empty", lambda f: corpus_file(f, "empty.txt", b""), "non-empty document"),
    ("blank", lambda f: corpus_file(f, "blank.txt", b" \n\n \t\n"), "non-empty document"),
    ("binary", lambda f: corpus_file(f, "image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), "is not UTF-8 text"),
    ("NUL bytes", lambda f: corpus_file(f, "nul.txt", b"some text\x00\x00more\n\nsecond"), "looks binary"),
    ("latin-1", lambda f: corpus_file(f, "latin1.txt", "caf\u00e9 cr\u00e8me\n\nna\u00efve".encode("latin-1")), "is not UTF-8 text"),
    ("one huge line", lambda f: corpus_file(f, "line.txt", b"word " * 400_000), "need at least 3"),
    ("missing", lambda f: str(f / "no/such/corpus.txt"), "does not exist"),
    ("empty folder", lambda f: (f / "docs").mkdir() or str(f / "docs"), "holds no .txt, .jsonl, .parquet or .arrow files"),
    ("bad jsonl", lambda f: corpus_file(f, "c.jsonl", b'{"text": "a"}\n{oops\n'), "c.jsonl:2: not valid JSON"),
    ("empty parquet", lambda f: corpus_file(f, "c.parquet", b""), "c.parquet' is not a readable Parquet file (Parquet file size is 0 bytes)"),
    ("column missing", lambda f: corpus_forms.parquet_body(f, [["a"]])[0], "no column 'text' (data.text_field) and no 'messages' column; its columns: id, body"),
    ("truncated gzip", lambda f: corpus_file(f, "c.txt.gz", gzip.compress(b"some text\n\n" * 1000)[:-30]), "c.txt.gz' is not a complete gzip file"),
    ("split missing", lambda f: corpus_forms.saved_dataset_dict(f, [["a"]])[0].replace("train_sft", "train"),
     "saved_dict' (a saved DatasetDict) has no split 'train'; its splits: train_sft, test_sft"),
]


@pytest.fixture
def previous_corpus(tmp_path: Path) -> Path:
    """A data/corpus from an earlier good run, which a failing stage must leave alone."""
    (tmp_path / "data/corpus").mkdir(parents=True)
    (tmp_path / "data/corpus/documents.parquet").write_bytes(b"earlier output")
    return tmp_path / "data/corpus/documents.parquet"


def assert_one_line_error(result, stage: str, message: str) -> None:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]  # (progress bars aside)
    assert len(errors) == 1 and errors[0].startswith(f"ctxlm {stage}: error: "), result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name, make, message", BAD_CORPORA, ids=[c[0] for c in BAD_CORPORA])
def test_bad_corpus_stops_prepare(tmp_path, monkeypatch, previous_corpus, name, make, message):
    source = make(tmp_path)
    result = run_stage(prepare.app, tmp_path, monkeypatch, data={"source": source})
    assert_one_line_error(result, "prepare", message)
    assert previous_corpus.read_bytes() == b"earlier output"


def write_corpus(folder: Path, train: list[str], val: list[str], test: tuple[str, ...] = ("a test text",)) -> None:
    (folder / "data/corpus").mkdir(parents=True)
    splits = ["train"] * len(train) + ["val"] * len(val) + ["test"] * len(test)
    pd.DataFrame({"doc_id": [f"d{i}" for i in range(len(splits))], "split": splits, "text": [*train, *val, *test],
                  "key": np.arange(len(splits), dtype=np.uint64)}).to_parquet(folder / "data/corpus/documents.parquet")


BAD_TOKENS = [
    ("a single token", ["Hello"], ["some validation text here"], {}, "the train split has 1 tokens; need at least 2"),
    ("validation split with no tokens", ["plenty of training text"], ["\u200b \u200b"], {}, "the val split has 0 tokens; need at least 2"),
    ("embedding folder missing", ["some text"], ["more text"], {"embedding": {"model": "./no-such-model"}}, "embedding.model: folder './no-such-model' does not exist"),
    ("hub unreachable offline", ["some text"], ["more text"], {"embedding": {"model": "no-such-user/no-such-model"}}, "embedding.model"),
]


@pytest.mark.parametrize("name, train, val, params, message", BAD_TOKENS, ids=[c[0] for c in BAD_TOKENS])
def test_bad_tokens_stop_tokenize(tmp_path, monkeypatch, name, train, val, params, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_corpus(tmp_path, train, val)
    (tmp_path / "data/tokens").mkdir()
    (tmp_path / "data/tokens/earlier").write_text("earlier output")
    result = run_stage(tokenize.app, tmp_path, monkeypatch, **params)
    assert_one_line_error(result, "tokenize", message)
    assert [p.name for p in (tmp_path / "data/tokens").iterdir()] == ["earlier"]


def test_a_one_token_test_split_stops_tokenize(tmp_path, monkeypatch):
    write_corpus(tmp_path, ["plenty of training text"], ["some validation text"], test=("Hello",))
    result = run_stage(tokenize.app, tmp_path, monkeypatch)
    assert_one_line_error(result, "tokenize", "the test split has 1 tokens; need at least 2")
    assert not (tmp_path / "data/tokens").exists()


def test_a_token_budget_beyond_the_corpus_uses_it_all(tmp_path, monkeypatch):
    write_corpus(tmp_path, ["a short training text"], ["and a validation text"])
    result = run_stage(tokenize.app, tmp_path, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "data.max_train_tokens is 250,000 but the train split has 4 tokens: using them all" in result.stdout
