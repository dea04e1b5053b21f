"""Corpus -> data/corpus/documents.parquet: one row per document (split train/val/test, group, title, text),
read as a stream and no further than the documents whose tokens the token budgets take."""

import time
from pathlib import Path

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.embedding import load_tokenizer, resolve_model_dir
from ctxlm.shards import SPLITS, atomic_dir, write_json_atomic
from ctxlm.sources import iter_documents, write_documents
from ctxlm.tokens import within_budgets

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("prepare", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        data = params.data
        tokenizer = load_tokenizer(resolve_model_dir(params.embedding.model))
        documents = within_budgets(iter_documents(data, params.seed), tokenizer, data.token_budgets)
        with atomic_dir(Path("data/corpus")) as out:  # streamed: the corpus is never held whole
            counts = write_documents(documents, out / "documents.parquet", data.source)
        print("prepare: " + ", ".join(f"{counts[split]} {split}" for split in SPLITS) + " documents")
        write_json_atomic(
            Path("metrics/prepare.json"),
            {**{f"{split}_documents": counts[split] for split in SPLITS}, "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
