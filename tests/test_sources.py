import json

import pandas as pd
import pytest

from ctxlm.config import DataParams
from ctxlm.errors import CtxlmError
from ctxlm.sources import load_documents, play_scenes


def load(source, **kw):
    return load_documents(DataParams(source=str(source), **kw), seed=0)


def test_shakespeare_holds_out_whole_plays():
    docs = load("shakespeare")
    val_groups = set(docs.loc[docs.split == "val", "group"])
    assert val_groups == {"hamlet", "macbeth"} and set(docs.loc[docs.split == "test", "group"]) == {"othello"}
    assert docs.group.nunique() == 38
    assert not set(docs.loc[docs.split == "train", "group"]) & (val_groups | {"othello"})
    text = " ".join(docs.text)
    assert "**" not in text and "_Enter" not in text and "#" not in text


def test_play_scenes_strip_headings_speakers_and_directions():
    md = "# Play\n\n## ACT I\n\n### SCENE I. A room.\n\n_Enter A,\nand B_\n\n**A**  \nHello there, _aside_ friend.  \n\n_Exit_\n"
    assert play_scenes(md) == [("SCENE I. A room.", "Hello there, friend.")]


def test_unknown_val_or_test_play():
    with pytest.raises(CtxlmError, match="data.val_plays"):
        load("shakespeare", val_plays=["hamlet", "hamlett"])
    with pytest.raises(CtxlmError, match="data.test_plays: unknown play"):
        load("shakespeare", test_plays=["othelo"])


def test_a_play_in_both_held_out_splits_is_refused():
    from ctxlm.config import parse_params

    with pytest.raises(CtxlmError, match=r"data.val_plays and data.test_plays share \['hamlet'\]"):
        parse_params({"data": {"val_plays": ["hamlet"], "test_plays": ["hamlet"]}})
    with pytest.raises(CtxlmError, match=r"val_fraction \+ data.test_fraction"):
        parse_params({"data": {"val_fraction": 0.5, "test_fraction": 0.5}})


def test_other_sources_hold_out_disjoint_seeded_fractions(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"doc {i}" for i in range(40)))
    docs = load(path, val_fraction=0.1, test_fraction=0.2)
    counts = docs.split.value_counts().to_dict()
    assert counts == {"train": 28, "val": 4, "test": 8}  # ceil(0.1 * 40), ceil(0.2 * 40), the rest
    assert docs.text.tolist() == [f"doc {i}" for i in range(40)]  # corpus order, each document once
    with pytest.raises(CtxlmError, match="need at least 3"):
        path.write_text("one\n\ntwo")
        load(path)


def test_text_file_blocks_and_folder_files(tmp_path):
    (tmp_path / "a.txt").write_text("one two\nthree\n\nfour five\n\n\nsix")
    docs = load(tmp_path / "a.txt", val_fraction=0.3)
    assert sorted(docs.text) == ["four five", "one two\nthree", "six"]
    assert (docs.split == "val").sum() == 1
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in "bca":
        (folder / f"{name}.txt").write_text(f"text of {name}")
    docs = load(folder)
    assert docs.title.tolist() == ["a.txt", "b.txt", "c.txt"]


def test_jsonl_text_and_messages(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"text": "plain text"}, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"text": "more text"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert sorted(load(path).text) == ["hi\nhello", "more text", "plain text"]


def test_hf_dataset_from_a_local_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    pd.DataFrame({"messages": [[{"role": "user", "content": f"question {i}"}] for i in range(10)]}).to_parquet(folder / "train.parquet")
    docs = load(f"hf:{folder}:train")
    assert len(docs) == 10 and (docs.split == "val").sum() == 1 and (docs.split == "test").sum() == 1
    assert sorted(docs.text)[0] == "question 0"


def test_split_is_seeded(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"doc {i}" for i in range(30)))
    a = load_documents(DataParams(source=str(path)), seed=1)
    b = load_documents(DataParams(source=str(path)), seed=1)
    c = load_documents(DataParams(source=str(path)), seed=2)
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "empty.txt").write_text("  \n\n ") and p / "empty.txt", "non-empty document"),
        (lambda p: (p / "one.txt").write_text("only one document") and p / "one.txt", "non-empty document"),
        (lambda p: (p / "bin.txt").write_bytes(b"\xff\xfe\x00bad") and p / "bin.txt", "not UTF-8"),
        (lambda p: (p / "bad.jsonl").write_text('{"text": "x"}\n{oops\n') and p / "bad.jsonl", r"bad.jsonl:2: not valid JSON"),
        (lambda p: (p / "nofield.jsonl").write_text('{"body": "x"}\n') and p / "nofield.jsonl", "neither a 'text'"),
        (lambda p: (p / "dir").mkdir() or p / "dir", "no .txt files"),
    ],
)
def test_bad_corpora_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(CtxlmError, match=message):
        load(make(tmp_path))


def test_unreachable_hf_dataset(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CtxlmError, match="cannot load dataset 'no-such-user/no-such-dataset'"):
        load("hf:no-such-user/no-such-dataset")
