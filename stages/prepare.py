"""Corpus -> data/corpus/documents.parquet: one row per document (split, group, title, text)."""

import time
from pathlib import Path

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.shards import atomic_dir, write_json_atomic
from ctxlm.sources import load_documents

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("prepare", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        documents = load_documents(params.data, params.seed)
        with atomic_dir(Path("data/corpus")) as out:
            documents.to_parquet(out / "documents.parquet", index=False)
        counts = documents.groupby("split").size().to_dict()
        print(f"prepare: {counts.get('train', 0)} train and {counts.get('val', 0)} validation documents")
        write_json_atomic(
            Path("metrics/prepare.json"),
            {"train_documents": counts.get("train", 0), "val_documents": counts.get("val", 0), "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
