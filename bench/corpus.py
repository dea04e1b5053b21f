"""`prepare` on a large corpus, in several forms: does it read only as far as the token budgets take,
and does its memory stay flat when it must read everything?

    python -m bench.corpus [--documents 100000] [--forms txt.gz,jsonl.gz,parquet,arrow]

A corpus of `documents` documents (Shakespeare's scenes in turn, each prefixed by its number and cut
to 2,000 characters: about 1.9 KB a document) is written in each form: a gzip-compressed text file
(blank lines between documents), gzip-compressed JSON lines, a Parquet file of one row group, and an
Arrow IPC stream. For each form `prepare` runs twice as a subprocess, alone: with the default token
budgets (the baseline), then with budgets no corpus fills, so that it reads every document. Printed
per form and run: the documents read (and those kept), the wall time and the peak RSS (from the kernel); then the
ratios whole/budgeted. Streaming means the peak RSS ratio stays near 1 while the documents read grow
by two orders of magnitude.
"""

from __future__ import annotations

import gzip
import itertools
import json
import multiprocessing
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import typer
import yaml

from bench.common import run_stage, workdir
from ctxlm.config import Params
from ctxlm.data.sources import shakespeare_documents

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
FORMS = ("txt.gz", "jsonl.gz", "parquet", "arrow")
UNFILLABLE = 10**12  # tokens: a budget no corpus here fills


def corpus_texts(documents: int):
    scenes = [scene["text"] for scene in shakespeare_documents([], [])]
    for i in range(documents):
        yield f"[{i}] " + scenes[i % len(scenes)][:2000]


def text_batches(documents: int, rows: int = 10_000):
    texts = corpus_texts(documents)
    return iter(lambda: list(itertools.islice(texts, rows)), [])


def write_corpus(folder: Path, form: str, documents: int) -> None:
    """folder/corpus.<form>, written a batch at a time (the one-row-group Parquet file excepted)."""
    path = folder / f"corpus.{form}"
    if form in ("txt.gz", "jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
            for text in corpus_texts(documents):
                f.write(text + "\n\n" if form == "txt.gz" else json.dumps({"text": text}) + "\n")
    elif form == "parquet":  # one row group: the whole file, the hardest case for a reader
        with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
            writer.write_table(pa.table({"text": pa.chunked_array([pa.array(b) for b in text_batches(documents)])}), row_group_size=documents)
    elif form == "arrow":
        with pa.ipc.new_stream(path, pa.schema([("text", pa.string())])) as writer:
            for batch in text_batches(documents):
                writer.write_batch(pa.record_batch({"text": batch}))
    else:
        raise ValueError(f"unknown form {form!r}; known: {', '.join(FORMS)}")


def run_prepare(folder: Path, source: Path, budget: int | None) -> dict:
    """prepare on `source` with the default budgets, or every budget `budget`: documents, seconds, peak RSS."""
    params = Params().model_dump()
    params["data"]["source"] = str(source)
    if budget is not None:
        params["data"].update(max_train_tokens=budget, max_val_tokens=budget, max_test_tokens=budget)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rss, seconds = run_stage(folder, "prepare")
    counts = json.loads((folder / "metrics/prepare.json").read_text())
    shutil.rmtree(folder / "data")
    return {"documents": counts["region_documents"], "kept": sum(counts[f"{split}_documents"] for split in ("train", "val", "test")),
            "seconds": round(seconds, 2), "peak_rss_mb": round(rss, 1)}


@app.command()
def main(documents: int = 100_000, forms: str = ",".join(FORMS)) -> None:
    unknown = sorted(set(forms.split(",")) - set(FORMS))
    if unknown:
        raise typer.BadParameter(f"unknown form(s) {unknown}; known: {', '.join(FORMS)}", param_hint="--forms")
    root = workdir()
    results = {}
    for form in forms.split(","):
        folder = root / form
        folder.mkdir()
        # written by another process: a child's peak RSS counts the parent's pages from before its exec
        writer = multiprocessing.get_context("spawn").Process(target=write_corpus, args=(folder, form, documents))
        writer.start()
        writer.join()
        source = folder / f"corpus.{form}"
        if writer.exitcode != 0 or not source.is_file():
            raise SystemExit(f"bench: writing the {form} corpus failed")
        size_mb = source.stat().st_size / 2**20
        budgeted, whole = run_prepare(folder, source, None), run_prepare(folder, source, UNFILLABLE)
        source.unlink()
        results[form] = {"file_mb": round(size_mb, 1), "budgeted": budgeted, "whole": whole,
                         "documents_ratio": round(whole["documents"] / budgeted["documents"], 1),
                         "time_ratio": round(whole["seconds"] / budgeted["seconds"], 2),
                         "rss_ratio": round(whole["peak_rss_mb"] / budgeted["peak_rss_mb"], 3)}
        for run in ("budgeted", "whole"):
            r = results[form][run]
            print(f"{form:<9} {size_mb:7,.0f} MB file, {run:<8}: {r['documents']:>9,} documents read, {r['kept']:>9,} kept  {r['seconds']:7.1f} s  "
                  f"peak RSS {r['peak_rss_mb']:6,.0f} MB", flush=True)
    print(f"\n{documents:,} documents of ~1.9 KB; the default budgets (250k/100k/100k tokens) are the baseline")
    print(f"{'form':<10}{'documents read':>16}{'time':>9}{'peak RSS':>10}   (whole corpus / budgeted)")
    for form, r in results.items():
        print(f"{form:<10}{r['documents_ratio']:>15,.1f}x{r['time_ratio']:>8.2f}x{r['rss_ratio']:>9.3f}x")
    shutil.rmtree(root)
    print(json.dumps({"documents": documents, "forms": results, "max_rss_ratio": max(r["rss_ratio"] for r in results.values())}))


if __name__ == "__main__":
    app()
