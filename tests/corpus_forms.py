"""Every form `data.source` accepts, written from the same documents: the tests read each back and
run the tiny pipeline on each (a real file of each form, written with pyarrow, pandas, gzip and
`datasets`, not with ctxlm)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HUB_ID = "ctxlm-tests/tiny_chat"  # a hub dataset id, written into a local Hugging Face cache (hub_cache)
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def text_of(document: list[str]) -> str:
    """A document is a list of lines (none blank); as text, one line each; as messages, one message each."""
    return "\n".join(document)


def messages_of(document: list[str]) -> list[dict]:
    return [{"role": ("user", "assistant")[i % 2], "content": line} for i, line in enumerate(document)]


def other_documents(documents: list[list[str]]) -> list[list[str]]:
    """Documents of another split, which a reader of the asked split must not return."""
    return [[f"not this split {i}: " + line for line in document] for i, document in enumerate(documents[:5])]


def gzipped(path: Path) -> Path:
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return packed


def txt_file(folder: Path, documents) -> tuple[str, dict]:
    (folder / "corpus.txt").write_text("\n\n".join(map(text_of, documents)) + "\n", encoding="utf-8")
    return str(folder / "corpus.txt"), {}


def txt_gz(folder: Path, documents) -> tuple[str, dict]:
    source, _ = txt_file(folder, documents)
    return str(gzipped(Path(source))), {}


def txt_folder(folder: Path, documents, compress: bool = False) -> tuple[str, dict]:
    (folder / "texts").mkdir()
    for i, document in enumerate(documents):
        path = folder / "texts" / f"{i:04d}.txt"
        path.write_text(text_of(document), encoding="utf-8")
        if compress:
            gzipped(path)
    return str(folder / "texts"), {}


def txt_gz_folder(folder: Path, documents) -> tuple[str, dict]:
    return txt_folder(folder, documents, compress=True)


def jsonl_messages(folder: Path, documents) -> tuple[str, dict]:
    lines = [json.dumps({"prompt_id": i, "messages": messages_of(d)}) for i, d in enumerate(documents)]
    (folder / "chat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(folder / "chat.jsonl"), {}


def jsonl_gz(folder: Path, documents) -> tuple[str, dict]:
    lines = [json.dumps({"text": text_of(d)}) for d in documents]
    (folder / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(gzipped(folder / "corpus.jsonl")), {}


def parquet_body(folder: Path, documents) -> tuple[str, dict]:
    """The text in a column named `body`, chosen by data.text_field; several row groups."""
    frame = pd.DataFrame({"id": range(len(documents)), "body": [text_of(d) for d in documents]})
    frame.to_parquet(folder / "corpus.parquet", row_group_size=7)
    return str(folder / "corpus.parquet"), {"text_field": "body"}


def parquet_gz(folder: Path, documents) -> tuple[str, dict]:
    pd.DataFrame({"text": [text_of(d) for d in documents]}).to_parquet(folder / "corpus.parquet")
    return str(gzipped(folder / "corpus.parquet")), {}


def messages_table(documents) -> pa.Table:
    return pa.Table.from_pylist([{"messages": messages_of(d)} for d in documents])


def arrow_file(folder: Path, documents) -> tuple[str, dict]:
    """Arrow's IPC file format (what pyarrow.feather and `pa.ipc.new_file` write), messages, batches of 9 rows."""
    table = messages_table(documents)
    with pa.ipc.new_file(folder / "chat.arrow", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=9):
            writer.write_batch(batch)
    return str(folder / "chat.arrow"), {}


def arrow_stream(folder: Path, documents) -> tuple[str, dict]:
    """Arrow's IPC stream format (what `datasets` writes)."""
    table = pa.table({"text": [text_of(d) for d in documents]})
    with pa.ipc.new_stream(folder / "corpus.arrow", table.schema) as writer:
        for batch in table.to_batches(max_chunksize=9):
            writer.write_batch(batch)
    return str(folder / "corpus.arrow"), {}


def parquet_folder(folder: Path, documents) -> tuple[str, dict]:
    """Three Parquet files, read in name order."""
    (folder / "shards").mkdir()
    third = -(-len(documents) // 3)
    for part in range(3):
        chunk = documents[part * third:(part + 1) * third]
        pq.write_table(pa.table({"text": [text_of(d) for d in chunk]}), folder / "shards" / f"part-{part}.parquet")
    return str(folder / "shards"), {}


def saved_dataset(folder: Path, documents) -> tuple[str, dict]:
    import datasets

    datasets.Dataset.from_dict({"text": [text_of(d) for d in documents]}).save_to_disk(folder / "saved")
    return str(folder / "saved"), {}


def saved_dataset_dict(folder: Path, documents) -> tuple[str, dict]:
    import datasets

    splits = {"train_sft": documents, "test_sft": other_documents(documents)}
    datasets.DatasetDict({name: datasets.Dataset.from_list([{"messages": messages_of(d)} for d in docs])
                          for name, docs in splits.items()}).save_to_disk(folder / "saved_dict")
    return f"{folder / 'saved_dict'}:train_sft", {}


def hf_saved_dataset_dict(folder: Path, documents) -> tuple[str, dict]:
    source, _ = saved_dataset_dict(folder, documents)
    return f"hf:{source}", {}


def split_files(data: Path, documents) -> None:
    """A hub dataset's layout: data/<split>-00000-of-00001.parquet, messages."""
    data.mkdir(parents=True)
    for name, docs in {"train_sft": documents, "test_sft": other_documents(documents)}.items():
        pq.write_table(messages_table(docs), data / f"{name}-00000-of-00001.parquet")


def hf_folder(folder: Path, documents) -> tuple[str, dict]:
    split_files(folder / "hf_folder" / "data", documents)
    return f"hf:{folder / 'hf_folder'}:train_sft", {}


def hub_cache(folder: Path) -> Path:
    return folder / "hf_cache"


def hub_cached(folder: Path, documents) -> tuple[str, dict]:
    """HUB_ID as huggingface_hub keeps a downloaded dataset (the tests point HF_HUB_CACHE at it):
    datasets--<owner>--<name>/ with refs/main naming a commit, the files' contents in blobs/<hash>,
    and snapshots/<commit>/<path> links to them."""
    repo = hub_cache(folder) / ("datasets--" + HUB_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    snapshot = repo / "snapshots" / HUB_COMMIT
    split_files(snapshot / "data", documents)
    (repo / "blobs").mkdir()
    for file in sorted((snapshot / "data").iterdir()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        file.rename(blob)
        file.symlink_to(os.path.relpath(blob, file.parent))
    return f"hf:{HUB_ID}:train_sft", {}


FORMS = {
    "txt": txt_file, "txt.gz": txt_gz, "folder of txt": txt_folder, "folder of txt.gz": txt_gz_folder,
    "jsonl (messages)": jsonl_messages, "jsonl.gz": jsonl_gz, "parquet (text_field)": parquet_body, "parquet.gz": parquet_gz,
    "arrow file": arrow_file, "arrow stream": arrow_stream, "folder of parquet": parquet_folder,
    "save_to_disk Dataset": saved_dataset, "save_to_disk DatasetDict": saved_dataset_dict,
    "hf: save_to_disk": hf_saved_dataset_dict, "hf: folder": hf_folder, "hf: hub id, cached": hub_cached,
}
