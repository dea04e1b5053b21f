import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import corpus_forms
from corpus_forms import FORMS, text_of
from ctxlm.config import DataParams
from ctxlm.embedding import load_tokenizer, resolve_model_dir
from ctxlm.errors import CtxlmError
from ctxlm.sources import HELD_OUT_RUN, iter_documents, load_documents, play_scenes, source_documents
from ctxlm.tokens import SplitTokenizer, within_budgets


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
        (lambda p: (p / "nofield.jsonl").write_text('{"body": "x"}\n') and p / "nofield.jsonl",
         r"nofield.jsonl:1: the record: no field 'text' \(data.text_field\) and no 'messages' field; its fields: body"),
        (lambda p: (p / "dir").mkdir() or p / "dir", "holds no .txt, .jsonl, .parquet or .arrow files"),
    ],
)
def test_bad_corpora_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(CtxlmError, match=message):
        load(make(tmp_path))




# ---- every form of a corpus ----------------------------------------------------------------------

DOCUMENTS = [[f"document {i} line {j}: " + " ".join(["words"] * (i % 4 + j + 1)) for j in range(1 + i % 3)] for i in range(23)]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A local Hugging Face cache in tmp_path (corpus_forms.hub_cached fills it), and the hub off."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(corpus_forms.hub_cache(tmp_path)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return corpus_forms.hub_cache(tmp_path)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reads_back_the_documents_written(tmp_path, hub_cache, form):
    source, params = FORMS[form](tmp_path, DOCUMENTS)
    texts = [text for _, text in source_documents(source, **params)]
    assert texts == [text_of(d) for d in DOCUMENTS]  # in order, each whole, none of another split


@pytest.mark.parametrize("form", ["txt", "jsonl (messages)", "parquet (text_field)", "save_to_disk DatasetDict", "hf: hub id, cached"])
def test_every_form_is_split_alike(tmp_path, hub_cache, form):
    """The same documents in any form go to the same splits: the split depends on the order alone."""
    (tmp_path / "reference").mkdir()
    reference = load(FORMS["txt"](tmp_path / "reference", DOCUMENTS)[0])
    source, params = FORMS[form](tmp_path, DOCUMENTS)
    docs = load(source, **params)
    assert docs[["split", "text"]].equals(reference[["split", "text"]])


def test_a_saved_dataset_of_one_split_is_read_whatever_its_split_and_refuses_another(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one", "two", "three"]}, split="train_sft").save_to_disk(tmp_path / "saved")
    for source in (f"{tmp_path}/saved", f"hf:{tmp_path}/saved", f"{tmp_path}/saved:train_sft"):
        assert [text for _, text in source_documents(source)] == ["one", "two", "three"], source
    with pytest.raises(CtxlmError, match=f"'{tmp_path}/saved' \\(a saved Dataset\\) holds the 'train_sft' split, not 'test'"):
        list(source_documents(f"hf:{tmp_path}/saved:test"))


def cut_short(source):
    path = Path(source)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def written(form, folder):
    return FORMS[form](folder, DOCUMENTS)[0]


BAD_FORMS = [
    ("empty Parquet file", lambda f: (f / "e.parquet").write_bytes(b"") or f / "e.parquet", {},
     "data.source: '{f}/e.parquet' is not a readable Parquet file (Parquet file size is 0 bytes)"),
    ("Parquet with no rows", lambda f: pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(f / "z.parquet") or f / "z.parquet", {},
     "data.source: the corpus has 0 non-empty document(s); need at least 3"),
    ("Parquet column missing", lambda f: written("parquet (text_field)", f), {},
     "data.source: '{f}/corpus.parquet': no column 'text' (data.text_field) and no 'messages' column; its columns: id, body"),
    ("Arrow column missing", lambda f: written("arrow stream", f), {"text_field": "content"},
     "data.source: '{f}/corpus.arrow': no column 'content' (data.text_field) and no 'messages' column; its columns: text"),
    ("JSONL field missing", lambda f: written("jsonl.gz", f), {"text_field": "body"},
     "{f}/corpus.jsonl.gz:1: the record: no field 'body' (data.text_field) and no 'messages' field; its fields: text"),
    ("save_to_disk column missing", lambda f: written("save_to_disk Dataset", f), {"text_field": "body"},
     "data.source: '{f}/saved': no column 'body' (data.text_field) and no 'messages' column; its columns: text"),
    ("not text in the column", lambda f: pd.DataFrame({"text": [1, 2, 3]}).to_parquet(f / "n.parquet") or f / "n.parquet", {},
     "data.source: '{f}/n.parquet' row 0: column 'text': holds int, not text or a list of messages"),
    ("corrupt Arrow file", lambda f: (f / "c.arrow").write_bytes(b"not arrow at all") and f / "c.arrow", {},
     "data.source: '{f}/c.arrow' is not a readable Arrow file"),
    ("truncated txt.gz", lambda f: cut_short(written("txt.gz", f)), {},
     "data.source: '{f}/corpus.txt.gz' is not a complete gzip file (Compressed file ended before the end-of-stream marker was reached); "
     "expected gzip-compressed .txt"),
    ("truncated jsonl.gz", lambda f: cut_short(written("jsonl.gz", f)), {},
     "data.source: '{f}/corpus.jsonl.gz' is not a complete gzip file"),
    ("truncated parquet.gz", lambda f: cut_short(written("parquet.gz", f)), {},
     "data.source: '{f}/corpus.parquet.gz' is not a complete gzip file"),
    ("not gzip at all", lambda f: (f / "x.txt.gz").write_text("plain text") and f / "x.txt.gz", {},
     "data.source: '{f}/x.txt.gz' is not a complete gzip file (Not a gzipped file"),
    ("save_to_disk without the split", lambda f: written("save_to_disk DatasetDict", f).replace("train_sft", "validation"), {},
     "data.source: '{f}/saved_dict' (a saved DatasetDict) has no split 'validation'; its splits: train_sft, test_sft"),
    ("save_to_disk DatasetDict, no split asked, no train", lambda f: written("save_to_disk DatasetDict", f).removesuffix(":train_sft"), {},
     "data.source: '{f}/saved_dict' (a saved DatasetDict) has no split 'train'; its splits: train_sft, test_sft"),
    ("hf: save_to_disk without the split", lambda f: written("hf: save_to_disk", f).replace("train_sft", "dev"), {},
     "has no split 'dev'; its splits: train_sft, test_sft"),
    ("hf: folder without the split", lambda f: written("hf: folder", f).replace("train_sft", "dev"), {},
     "data.source: cannot read split 'dev' of '{f}/hf_folder'"),
    ("cached hub dataset without the split", lambda f: written("hf: hub id, cached", f).replace("train_sft", "dev"), {},
     "data.source: cannot read split 'dev' of 'ctxlm-tests/tiny_chat' (cached at {f}/hf_cache/datasets--ctxlm-tests--tiny_chat/snapshots/"),
    ("hub dataset not cached, offline", lambda f: "hf:no-such-user/no-such-dataset", {},
     "data.source: dataset 'no-such-user/no-such-dataset' is not in the local Hugging Face cache ({f}/hf_cache) and the hub is off (HF_HUB_OFFLINE)"),
    ("a hub id without hf:", lambda f: "HuggingFaceH4/ultrachat_200k", {},
     "data.source: path 'HuggingFaceH4/ultrachat_200k' does not exist; for a Hugging Face dataset write 'hf:HuggingFaceH4/ultrachat_200k'"),
    ("a split of a plain file", lambda f: written("txt", f) + ":train", {},
     "data.source: '{f}/corpus.txt' is not a save_to_disk folder, so it has no splits (':train')"),
    ("text and record files in one folder", lambda f: (written("folder of txt", f), written("parquet.gz", f / "texts"))[0], {},
     "data.source: folder '{f}/texts' holds both text files (23) and record files (1); point data.source at a folder of one kind"),
]


@pytest.mark.parametrize("name, make, params, message", BAD_FORMS, ids=[b[0] for b in BAD_FORMS])
def test_bad_input_of_each_form_is_one_line_naming_the_path(tmp_path, hub_cache, name, make, params, message):
    source = make(tmp_path)
    with pytest.raises(CtxlmError) as err:
        list(iter_documents(DataParams(source=str(source), **params), seed=0))
    assert message.format(f=tmp_path) in str(err.value)
    assert "\n" not in str(err.value)


# ---- held out in runs; read no further than needed ---------------------------------------------

def test_held_out_documents_are_drawn_run_by_run(tmp_path):
    """250 documents, 12.5% validation and 5% test. By hand: after each run of 100 the first n
    documents hold ceil(0.125 n) validation documents, 13, 25 and 32 (of 250), so the runs hold 13,
    12 and 7; and ceil(0.05 n) test documents, 5, 10 and 13, so 5, 5 and 3."""
    from ctxlm.sources import split_documents

    documents = [(f"d{i}", f"doc {i}") for i in range(250)]
    docs = list(split_documents(iter(documents), 0.125, 0.05, seed=3))
    assert [d["text"] for d in docs] == [text for _, text in documents]
    runs = [Counter(d["split"] for d in docs[start:start + HELD_OUT_RUN]) for start in range(0, 250, HELD_OUT_RUN)]
    assert runs == [Counter(train=82, val=13, test=5), Counter(train=83, val=12, test=5), Counter(train=40, val=7, test=3)]
    again = list(split_documents(iter(documents), 0.125, 0.05, seed=3))
    other = list(split_documents(iter(documents), 0.125, 0.05, seed=4))
    assert again == docs and [d["split"] for d in other] != [d["split"] for d in docs]
    held_out = [[i % HELD_OUT_RUN for i, d in enumerate(docs) if d["split"] != "train" and i // HELD_OUT_RUN == run] for run in (0, 1)]
    assert held_out[0] != held_out[1]  # each run draws anew


def test_a_corpus_within_one_run_is_held_out_as_before_runs():
    """Under 100 documents the choice is the one ctxlm made before it drew in runs (and that
    docs/corpora.md promises): of random.Random(seed).sample(range(count), n_val + n_test), the first
    n_val documents are validation, the rest test. 40 documents, 10% and 20%: 4 and 8."""
    import random

    from ctxlm.sources import split_documents

    chosen = random.Random(7).sample(range(40), 12)
    expected = ["val" if i in chosen[:4] else "test" if i in chosen[4:] else "train" for i in range(40)]
    docs = split_documents(((f"d{i}", f"doc {i}") for i in range(40)), 0.1, 0.2, seed=7)
    assert [d["split"] for d in docs] == expected


class Counted:
    """An endless source of documents that counts how many were read."""

    def __init__(self):
        self.read = 0

    def __iter__(self):
        for i in itertools.count():
            self.read += 1
            yield f"d{i}", f"document number {i} has a few words in it"


def test_an_endless_source_is_read_only_as_far_as_the_token_budgets_take(tmp_path):
    """Validation is the last split to fill here (about 60 of its documents, one in ten, against 50
    training documents): reading stops after the first chunk of 256 documents that fills all three;
    in chunks of one document, after the very document that fills the last split."""
    from ctxlm.sources import split_documents

    tokenizer = load_tokenizer(resolve_model_dir("minilm"))
    source = Counted()
    budgets = {"train": 500, "val": 600, "test": 300}
    kept = list(within_budgets(split_documents(source, 0.1, 0.1, seed=0), tokenizer, budgets))

    def full(documents) -> dict[str, bool]:
        counts = {split: SplitTokenizer(tokenizer, budget) for split, budget in budgets.items()}
        for split, tokens in counts.items():
            tokens.add([d["text"] for d in documents if d["split"] == split])
        return {split: tokens.full for split, tokens in counts.items()}

    assert len(kept) % 256 == 0 and all(full(kept).values()) and not all(full(kept[:-256]).values())
    exact = list(within_budgets(split_documents(Counted(), 0.1, 0.1, seed=0), tokenizer, budgets, chunk=1))
    assert all(full(exact).values()) and not all(full(exact[:-1]).values())  # a document at a time: the shortest prefix
    assert kept == list(itertools.islice(split_documents(Counted(), 0.1, 0.1, seed=0), len(kept)))  # the stream's first documents
    assert source.read <= len(kept) + HELD_OUT_RUN  # (a run of documents is held ahead)


@pytest.mark.parametrize("row_group_rows", [1000, 40_000])
def test_a_parquet_file_is_read_a_little_at_a_time(tmp_path, row_group_rows):
    """Reading every row of a Parquet file of 40 MB of text, in row groups of 1 MB or one of 40 MB,
    holds a few MB of Arrow memory at any time (pyarrow's default reader held all it had read)."""
    rows = 40_000
    letters = np.random.default_rng(0).integers(ord("a"), ord("z") + 1, size=(rows, 1000), dtype=np.uint8)
    frame = pd.DataFrame({"text": [f"row {i} " + line.tobytes().decode() for i, line in enumerate(letters)]})  # incompressible
    frame.to_parquet(tmp_path / "big.parquet", row_group_size=row_group_rows)
    before, held, count = pa.total_allocated_bytes(), 0, 0
    for count, (_, text) in enumerate(source_documents(str(tmp_path / "big.parquet")), 1):
        if count % 500 == 0:
            held = max(held, pa.total_allocated_bytes() - before)
    assert count == rows and text.startswith(f"row {rows - 1} ")
    assert held < 10_000_000, held  # the file's text is 40 MB
