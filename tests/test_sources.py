import itertools
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import corpus_forms
from corpus_forms import FORMS, text_of
from ctxlm.config import DataParams
from ctxlm.data.sources import SMALL_CORPUS, iter_documents, load_documents, play_scenes, source_documents
from ctxlm.data.tokenizer import load_token_counter, load_tokenizer, resolve_model_dir
from ctxlm.data.tokens import MIX_TOLERANCE, chosen_documents, sample_documents
from ctxlm.errors import CtxlmError


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
    assert sorted(docs.text) == sorted(f"doc {i}" for i in range(40))  # each document once
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
    assert sorted(docs.title) == ["a.txt", "b.txt", "c.txt"] and docs.group.tolist() == docs.title.tolist()  # a file each


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
    texts = [text for _, _, text in source_documents(source, **params)]
    assert texts == [text_of(d) for d in DOCUMENTS]  # in order, each whole, none of another split
    seeded = [text for _, _, text in source_documents(source, **params, seed=3)]
    assert sorted(seeded) == sorted(texts) and seeded != texts  # a seeded reading: each document once, in another order


@pytest.mark.parametrize("form", ["txt", "jsonl (messages)", "parquet (text_field)", "save_to_disk DatasetDict", "hf: hub id, cached"])
def test_every_form_is_split_alike(tmp_path, hub_cache, form):
    """The same documents in any form go to the same splits, read in whatever order: a split depends
    on the document's text alone."""
    (tmp_path / "reference").mkdir()
    reference = load(FORMS["txt"](tmp_path / "reference", DOCUMENTS)[0]).sort_values("text", ignore_index=True)
    source, params = FORMS[form](tmp_path, DOCUMENTS)
    docs = load(source, **params).sort_values("text", ignore_index=True)
    assert docs[["split", "text"]].equals(reference[["split", "text"]])


def test_a_saved_dataset_of_one_split_is_read_whatever_its_split_and_refuses_another(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one", "two", "three"]}, split="train_sft").save_to_disk(tmp_path / "saved")
    for source in (f"{tmp_path}/saved", f"hf:{tmp_path}/saved", f"{tmp_path}/saved:train_sft"):
        assert [text for _, _, text in source_documents(source)] == ["one", "two", "three"], source
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


# ---- held out by the text's draw; each split a seeded sample of the region read ------------------

def draws(text: str, seed: int) -> tuple[float, int]:
    """The documented draw (docs/corpora.md), computed here from hashlib directly: blake2b of the
    UTF-8 text, 16 bytes, keyed by the seed's decimal digits; the first 8 bytes (big-endian) / 2**64
    choose the split, the last 8 are the sampling key."""
    import hashlib

    digest = hashlib.blake2b(text.encode(), digest_size=16, key=str(seed).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:], "big")


def test_a_large_corpus_is_split_by_each_documents_draw_in_any_order():
    """1,000 documents, 12.5% validation and 5% test: a document is val below 0.125, test below
    0.175, by its own draw, wherever it sits; reversed, the same documents get the same splits."""
    from ctxlm.data.sources import split_documents

    documents = [("g", f"d{i}", f"doc {i}") for i in range(1000)]
    docs = list(split_documents(iter(documents), 0.125, 0.05, seed=3))
    expected = ["val" if draws(text, 3)[0] < 0.125 else "test" if draws(text, 3)[0] < 0.175 else "train" for _, _, text in documents]
    assert [d["split"] for d in docs] == expected and [d["key"] for d in docs] == [draws(t, 3)[1] for _, _, t in documents]
    counts = Counter(expected)
    assert abs(counts["val"] - 125) < 4 * (1000 * 0.125 * 0.875) ** 0.5 and abs(counts["test"] - 50) < 4 * (1000 * 0.05 * 0.95) ** 0.5
    backwards = {d["text"]: d["split"] for d in split_documents(iter(documents[::-1]), 0.125, 0.05, seed=3)}
    assert backwards == {d["text"]: d["split"] for d in docs}
    other = list(split_documents(iter(documents), 0.125, 0.05, seed=4))
    assert sum(a["split"] != b["split"] for a, b in zip(docs, other)) > 100  # another seed, another split


def test_a_small_corpus_holds_out_exact_counts_of_lowest_draw():
    """Under SMALL_CORPUS documents, ceil(fraction * n) each: 40 documents, 10% and 20% give the 4
    of lowest draw to validation, the next 8 to test."""
    from ctxlm.data.sources import split_documents

    texts = [f"doc {i}" for i in range(40)]
    ranked = sorted(texts, key=lambda text: draws(text, 7)[0])
    expected = {text: "val" if text in ranked[:4] else "test" if text in ranked[4:12] else "train" for text in texts}
    docs = split_documents((("g", t, t) for t in texts), 0.1, 0.2, seed=7)
    assert {d["text"]: d["split"] for d in docs} == expected
    assert len(texts) < SMALL_CORPUS


def test_held_out_count_rounds_before_its_ceiling():
    """0.07 * 100 is 7.000000000000001 in floats: its plain ceiling is 8, the held-out count 7."""
    from ctxlm.data.sources import held_out_count

    assert math.ceil(0.07 * 100) == 8 and held_out_count(0.07, 100) == 7 and held_out_count(0.075, 100) == 8


def words(document: dict) -> int:
    """A document's tokens for a tokenizer that splits at spaces (the tests' FakeTokenizer)."""
    return len(document["text"].split())


def space_counts(texts: list[str]) -> list[int]:
    """A stand-in for a tokenizer's counts: one token per space-separated word."""
    return [len(text.split()) for text in texts]


def reference_sample(documents: list[dict], budgets: dict[str, int]) -> tuple[int, dict[int, str]]:
    """A plain reading of the rule: the region is the shortest prefix (in chunks of one document)
    whose splits all hold their budgets (the whole list if none is); each split keeps its documents
    of the region by increasing key until their words reach its budget."""
    seen = dict.fromkeys(budgets, 0)
    region = len(documents)
    for i, document in enumerate(documents):
        seen[document["split"]] += words(document)
        if all(seen[s] >= b for s, b in budgets.items()):
            region = i + 1
            break
    chosen = {}
    for split, budget in budgets.items():
        total = 0
        for i in sorted((i for i in range(region) if documents[i]["split"] == split), key=lambda i: documents[i]["key"]):
            if total >= budget:
                break
            chosen[i] = split
            total += words(documents[i])
    return region, chosen


def corpus_of(count: int, seed: int = 0, groups: int = 4) -> list[dict]:
    rng = random.Random(seed)
    return [{"split": rng.choice(["train"] * 8 + ["val", "test"]), "group": f"g{i % groups}", "title": f"d{i}",
             "text": " ".join(["w"] * rng.randint(1, 30)), "key": rng.getrandbits(64)} for i in range(count)]


@pytest.mark.parametrize("budgets", [{"train": 500, "val": 300, "test": 200}, {"train": 40, "val": 1, "test": 1}, {"train": 10**9, "val": 10**9, "test": 10**9}])
def test_each_split_keeps_its_lowest_keys_of_the_region_until_its_budget(budgets):
    documents = corpus_of(2000)
    region, chosen = reference_sample(documents, budgets)
    sample = sample_documents(iter(documents), space_counts, budgets, whole_groups_held_out=False, chunk=1)
    assert (sample.region, sample.chosen_splits()) == (region, chosen)
    assert sample.read_to_end == (region == len(documents))
    for split, budget in budgets.items():
        total = sum(words(documents[i]) for i, s in chosen.items() if s == split)
        assert sample.kept(split, "tokens") == min(total, budget)  # the last document is cut to the budget
        assert sample.last[split] == max((i for i, s in chosen.items() if s == split), key=lambda i: documents[i]["key"])
    kept = list(chosen_documents(iter(documents), sample))  # the second reading: in order, each split's last at the end
    assert sorted(d["title"] for d in kept) == sorted(documents[i]["title"] for i in chosen)
    assert {d["title"] for d in kept[-3:]} == {documents[sample.last[s]]["title"] for s in budgets}


def test_tokenize_writes_a_split_in_key_order_and_cuts_the_document_of_highest_key():
    """prepare writes a split's documents in reading order with its highest key last; tokenize keeps
    the first `budget` tokens in that order (cutting that last one) and orders them by key: here the
    documents of 3, 2 and 4 words with keys 20, 10 and 30, a budget of 7: [10: 2, 20: 3, 30: first 2]."""
    from ctxlm.data.tokens import SplitTokenizer

    tokenizer = load_tokenizer(resolve_model_dir("minilm"))
    split = SplitTokenizer(tokenizer, budget=7)
    split.add(["one two three", "four five"], [20, 10])
    split.add(["six seven eight nine"], [30])
    result = split.result()
    assert result.offsets.tolist() == [0, 2, 5, 7]
    assert tokenizer.decode(result.ids.tolist()) == "four five one two three six seven"


def test_a_budget_larger_than_the_corpus_takes_every_document_once():
    documents = corpus_of(300)
    sample = sample_documents(iter(documents), space_counts, dict.fromkeys(["train", "val", "test"], 10**9), whole_groups_held_out=False)
    kept = list(chosen_documents(iter(documents), sample))
    assert sample.read_to_end and sample.region == 300 and sorted(d["title"] for d in kept) == sorted(d["title"] for d in documents)


def test_a_corpus_that_changes_between_readings_is_refused():
    documents = corpus_of(50)
    sample = sample_documents(iter(documents), space_counts, {"train": 100, "val": 10, "test": 10}, whole_groups_held_out=False)
    changed = [d | {"key": d["key"] + 1} for d in documents]
    with pytest.raises(CtxlmError, match="differs between two readings: the corpus changed"):
        list(chosen_documents(iter(changed), sample))


def test_the_mix_compares_each_split_with_the_region_by_hand():
    """Six documents, two groups, everything kept: train holds a 3 + 1 words, b 2 (a: 4/6 of train);
    val a 2 (all); test b 4. The region (all 12 words): a 6/12, b 6/12."""
    documents = [{"split": s, "group": g, "title": str(i), "text": " ".join(["w"] * n), "key": i}
                 for i, (s, g, n) in enumerate([("train", "a", 3), ("train", "b", 2), ("val", "a", 2), ("test", "b", 4), ("train", "a", 1)])]
    sample = sample_documents(iter(documents), space_counts, dict.fromkeys(["train", "val", "test"], 100), whole_groups_held_out=False)
    shares = {split: {row["group"]: (row["documents"], row["tokens"], row["share"], row["region_share"]) for row in rows} for split, rows in sample.mix.items()}
    assert shares["train"] == {"a": (2, 4, 4 / 6, 6 / 12), "b": (1, 2, 2 / 6, 6 / 12)}
    assert shares["val"] == {"a": (1, 2, 1.0, 0.5), "b": (0, 0, 0.0, 0.5)} and sample.gap("val") == (0.5, "a")
    held_out = sample_documents(iter(documents), space_counts, dict.fromkeys(["train", "val", "test"], 100), whole_groups_held_out=True)
    assert {row["group"]: row["region_share"] for row in held_out.mix["train"]} == {"a": 4 / 6, "b": 2 / 6}  # its own split's documents


def two_book_folder(folder: Path, first: str, second: str) -> Path:
    """Two sources of different style as files named <book>_<nnn>.txt, sorted by book: 150 scenes
    of the comedies (cut to 1,500 characters) and 150 made-up ledger entries of numbers."""
    from ctxlm.data.sources import shakespeare_documents

    scenes = [scene["text"] for scene in shakespeare_documents([], [])]
    rng = random.Random(0)
    folder.mkdir()
    for i in range(150):
        (folder / f"{first}_{i:03d}.txt").write_text(f"{i}. " + scenes[(7 * i) % len(scenes)][:1500])
        (folder / f"{second}_{i:03d}.txt").write_text(" ".join(f"entry {rng.randint(0, 999)} paid {rng.randint(0, 99)}" for _ in range(40)))
    return folder


def test_two_books_sorted_by_name_give_every_split_each_books_share(tmp_path):
    """The issue's two-book folder: files sorted by book, budgets about 20% of the corpus. Whichever
    book sorts first, every split holds each book's share of the region read within 10 points."""
    token_counts = load_token_counter(resolve_model_dir("minilm"))
    mixes = []
    for name, (first, second) in {"scenes first": ("scenes", "zledger"), "ledger first": ("scenes", "aledger")}.items():
        folder = two_book_folder(tmp_path / name, first, second)
        params = DataParams(source=str(folder), max_train_tokens=20_000, max_val_tokens=3_000, max_test_tokens=3_000)
        documents = list(iter_documents(params, seed=0))
        sample = sample_documents(iter(documents), token_counts, params.token_budgets, whole_groups_held_out=False)
        assert not sample.read_to_end
        region = documents[:sample.region]
        lengths = token_counts([d["text"] for d in region])
        region_share = sum(n for d, n in zip(region, lengths) if d["group"].startswith("scenes")) / sum(lengths)
        for split in ("train", "val", "test"):
            picked = [(region[i], lengths[i]) for i, s in sample.chosen_splits().items() if s == split]
            share = sum(n for d, n in picked if d["group"].startswith("scenes")) / sum(n for _, n in picked)
            assert abs(share - region_share) < 0.10, (name, split, share, region_share)
            mixes.append(share)
        assert 0.2 < region_share < 0.8  # the region spans both books
    assert max(mixes) - min(mixes) < 0.2


def test_the_default_training_split_draws_from_the_training_plays():
    """The default budgets keep 250,000 of the training plays' tokens, a quarter: a uniform sample
    of their scenes holds every play's share within a few points, so at least 30 of the 35 plays."""
    params = DataParams()
    sample = sample_documents(iter_documents(params, seed=0), load_token_counter(resolve_model_dir("minilm")), params.token_budgets,
                              whole_groups_held_out=True)
    train = {row["group"] for row in sample.mix["train"] if row["documents"]}
    assert len(train) >= 30 and not train & {"hamlet", "macbeth", "othello"} and sample.gap("train")[0] < MIX_TOLERANCE
    assert sample.read_to_end and sample.kept("train", "tokens") == 250_000


def test_another_seed_gives_another_sample(tmp_path):
    folder = two_book_folder(tmp_path / "books", "scenes", "ledger")
    token_counts = load_token_counter(resolve_model_dir("minilm"))
    picked = []
    for seed in (0, 0, 1):
        params = DataParams(source=str(folder), max_train_tokens=20_000, max_val_tokens=3_000, max_test_tokens=3_000)
        sample = sample_documents(iter_documents(params, seed), token_counts, params.token_budgets, whole_groups_held_out=False)
        picked.append(sorted(d["title"] for d in chosen_documents(iter_documents(params, seed), sample)))
    assert picked[0] == picked[1] and len(set(picked[0]) & set(picked[2])) < 0.6 * len(picked[0])


@pytest.mark.parametrize("row_group_rows", [1000, 40_000])
def test_a_parquet_file_is_read_a_little_at_a_time(tmp_path, row_group_rows):
    """Reading every row of a Parquet file of 40 MB of text, in row groups of 1 MB or one of 40 MB,
    holds a few MB of Arrow memory at any time (pyarrow's default reader held all it had read)."""
    rows = 40_000
    letters = np.random.default_rng(0).integers(ord("a"), ord("z") + 1, size=(rows, 1000), dtype=np.uint8)
    frame = pd.DataFrame({"text": [f"row {i} " + line.tobytes().decode() for i, line in enumerate(letters)]})  # incompressible
    frame.to_parquet(tmp_path / "big.parquet", row_group_size=row_group_rows)
    before, held, count = pa.total_allocated_bytes(), 0, 0
    for count, (_, _, text) in enumerate(source_documents(str(tmp_path / "big.parquet")), 1):
        if count % 500 == 0:
            held = max(held, pa.total_allocated_bytes() - before)
    assert count == rows and text.startswith(f"row {rows - 1} ")
    assert held < 10_000_000, held  # the file's text is 40 MB


# ---- what a review by mutation found untested ----------------------------------------------------

def test_the_largest_gap_is_the_largest_in_size_whatever_its_sign():
    """Three groups: the split holds a 50%, b 45%, c 5% of its tokens, the region 40%, 30%, 30%:
    c's gap (-25 points) is the largest, ahead of b's +15 and a's +10."""
    from ctxlm.data.tokens import Sample

    rows = [{"group": g, "documents": 1, "tokens": t, "share": t / 100, "region_share": r} for g, t, r in [("a", 50, 0.4), ("b", 45, 0.3), ("c", 5, 0.3)]]
    sample = Sample(region=0, read_to_end=True, splits=["train"], split_of=np.zeros(0, np.int8), keys=np.zeros(0, np.uint64),
                    chosen=np.zeros(0, bool), last={}, mix={"train": rows})
    assert sample.gap("train") == (pytest.approx(0.25), "c")
    assert [row["group"] for row in sample.off_mix("train")] == ["b", "c"]  # more than 10 points off; a is 10 points off (0.5 - 0.4)


def test_a_split_whose_documents_fill_its_budget_exactly_takes_no_more():
    """Train documents of 3 and 2 words (keys 1, 2) reach a budget of 5 exactly: the next one (key 3) is left out."""
    documents = [{"split": "train", "group": "g", "title": str(k), "text": " ".join(["w"] * n), "key": k} for k, n in [(1, 3), (2, 2), (3, 4)]]
    documents += [{"split": s, "group": "g", "title": s, "text": "w", "key": 9} for s in ("val", "test")]
    sample = sample_documents(iter(documents), space_counts, {"train": 5, "val": 1, "test": 1}, whole_groups_held_out=False, chunk=1)
    assert {i for i, s in sample.chosen_splits().items() if s == "train"} == {0, 1} and sample.kept("train", "tokens") == 5


def test_a_small_corpus_that_leaves_no_training_document_is_refused_before_reading_on():
    """3 documents, 30% validation (ceil 0.9 = 1) and 60% test (ceil 1.8 = 2): none left for training."""
    from ctxlm.data.sources import split_documents

    with pytest.raises(CtxlmError, match="3 documents leave none for training after 1 validation and 2 test documents"):
        next(split_documents((("g", str(i), f"doc {i}") for i in range(3)), 0.3, 0.6, seed=0))


def test_blank_records_are_not_documents(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["one", "  ", "two", "\n\t", "three"]) + "\n")
    assert sorted(load(path).text) == ["one", "three", "two"]


def test_the_shuffle_buffer_holds_its_size_and_yields_every_item_once():
    """A buffer of 3 over 0..29: the first item out is one of the first 3 in, for any seed; every item
    comes out once; and each of the first 4 can leave early (a slot the draws never reach would hold
    its item to the end)."""
    from ctxlm.data.sources import shuffled

    outs = [list(shuffled(range(30), random.Random(seed), size=3)) for seed in range(60)]
    assert all(sorted(out) == list(range(30)) for out in outs)
    assert {out[0] for out in outs} == {0, 1, 2}
    assert all(min(out.index(item) for out in outs) < 10 for item in range(4))


def numbered_rows(count: int) -> list[str]:
    return [f"row {i} of the corpus" for i in range(count)]


def row_of(text: str) -> int:
    return int(text.split()[1])


def first_rows_yielded(source: str, seed: int = 0, count: int = 100) -> list[int]:
    return [row_of(text) for _, _, text in itertools.islice(source_documents(source, seed=seed), count)]


@pytest.mark.parametrize("form", ["parquet row groups", "arrow file batches", "save_to_disk blocks", "folder of parquet files"])
def test_a_seeded_reading_shuffles_the_parts_of_a_corpus_larger_than_the_buffer(tmp_path, form):
    """3,000 numbered rows in parts of 100 (row groups, batches, 256-row blocks, files): read in order,
    the buffer's first 100 documents all come from the first 1,100 rows; with the parts shuffled,
    some come from further on. Every row is read once, titled with its own row number."""
    import datasets
    import pyarrow.parquet as pq

    texts = numbered_rows(3000)
    table = pa.table({"text": texts})
    if form == "parquet row groups":
        pq.write_table(table, tmp_path / "c.parquet", row_group_size=100)
        source = str(tmp_path / "c.parquet")
    elif form == "arrow file batches":
        with pa.ipc.new_file(tmp_path / "c.arrow", table.schema) as writer:
            for batch in table.to_batches(max_chunksize=100):
                writer.write_batch(batch)
        source = str(tmp_path / "c.arrow")
    elif form == "save_to_disk blocks":
        datasets.Dataset.from_dict({"text": texts}).save_to_disk(tmp_path / "saved")
        source = str(tmp_path / "saved")
    else:
        (tmp_path / "parts").mkdir()
        for part in range(30):
            pq.write_table(table.slice(100 * part, 100), tmp_path / "parts" / f"part-{part:02d}.parquet")
        source = str(tmp_path / "parts")
    assert max(first_rows_yielded(source)) > 1100
    documents = list(source_documents(source, seed=0))
    assert sorted(row_of(text) for _, _, text in documents) == list(range(3000))
    in_order = list(source_documents(source))
    assert [text for _, _, text in in_order] == texts
    def title(row: int) -> str:  # a file's own row number; a folder's files are parts of 100
        return f"part-{row // 100:02d}.parquet#{row % 100}" if form == "folder of parquet files" else f"#{row}"

    if form != "arrow file batches":  # (a seeded Arrow file names a row by its batch: #<batch>:<row>)
        assert all(t.endswith(title(row_of(text))) for _, t, text in documents)
    assert all(t.endswith(title(row_of(text))) for _, t, text in in_order)


def test_the_plays_are_read_in_a_seeded_order():
    params = DataParams()
    orders = [list(dict.fromkeys(d["group"] for d in iter_documents(params, seed))) for seed in (0, 0, 1)]
    assert orders[0] == orders[1] and orders[0] != orders[2] and orders[0] != sorted(orders[0])


def test_prepare_writes_each_splits_sample_and_its_figures(tmp_path, monkeypatch):
    """The stage end to end on 8,000 documents of 1 to 40 words in two Parquet files (groups):
    documents.parquet holds exactly each split's sample (the reference rule over the same reading,
    by the tokenizer's counts; more rows than write_documents' batch of 2,048), its tokens and
    documents are the metrics', and the mix of a source that is not Shakespeare compares each split
    with the whole region (each file's share of all the tokens read)."""
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from conftest import REPO, write_params
    from stages import prepare

    rng = random.Random(1)
    texts = [f"doc {i} " + " ".join(["word"] * rng.randint(1, 40)) for i in range(8000)]
    (tmp_path / "parts").mkdir()
    for part, rows in (("a", texts[:5000]), ("b", texts[5000:])):
        pq.write_table(pa.table({"text": rows}), tmp_path / "parts" / f"{part}.parquet")
    budgets = {"max_train_tokens": 20_000, "max_val_tokens": 10**6, "max_test_tokens": 10**6}
    write_params(tmp_path, {"data": {"source": str(tmp_path / "parts"), **budgets}}, base=REPO)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(prepare.app, [])
    assert result.exit_code == 0, result.output
    written = pd.read_parquet(tmp_path / "data/corpus/documents.parquet")
    metrics = json.loads((tmp_path / "metrics/prepare.json").read_text())

    params = DataParams(source=str(tmp_path / "parts"), **budgets)
    documents = list(iter_documents(params, seed=0))
    tokenizer = load_tokenizer(resolve_model_dir("minilm"))
    lengths = [len(ids) for ids in tokenizer([d["text"] for d in documents], add_special_tokens=False)["input_ids"]]
    region, chosen = reference_sample([d | {"text": " ".join(["w"] * n)} for d, n in zip(documents, lengths)], params.token_budgets)
    assert region == len(documents) == metrics["region_documents"] == 8000 and metrics["read_to_end"]
    assert sorted(zip(written.split, written.text)) == sorted((documents[i]["split"], documents[i]["text"]) for i in chosen)
    assert len(written) > 2048
    for split, budget in params.token_budgets.items():
        total = sum(lengths[i] for i, s in chosen.items() if s == split)
        assert metrics[f"{split}_tokens"] == min(total, budget) and metrics[f"{split}_documents"] == (written.split == split).sum()
    file_a = sum(n for d, n in zip(documents, lengths) if d["group"] == "a.parquet") / sum(lengths)
    for split in ("train", "val", "test"):
        assert {row["group"]: row["region_share"] for row in metrics["mix"][split]} == pytest.approx({"a.parquet": file_a, "b.parquet": 1 - file_a})


def test_smaller_training_budgets_take_nested_samples_when_the_whole_corpus_is_read():
    """The scaling sizes: with the held-out budgets unfilled, every size reads the whole corpus, so
    each size's training documents are among the next size's."""
    documents = corpus_of(2000)
    chosen = []
    for budget in (500, 1000, 2000, 4000):
        sample = sample_documents(iter(documents), space_counts, {"train": budget, "val": 10**9, "test": 10**9}, whole_groups_held_out=False)
        assert sample.read_to_end
        chosen.append({i for i, s in sample.chosen_splits().items() if s == "train"})
    assert all(a < b for a, b in zip(chosen, chosen[1:]))
