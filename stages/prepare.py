"""Corpus -> data/corpus/documents.parquet: one row per document (split train/val/test, group, title, text)."""

import time
from pathlib import Path

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.shards import SPLITS, atomic_dir, write_json_atomic
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
        print("prepare: " + ", ".join(f"{counts[split]} {split}" for split in SPLITS) + " documents")
        write_json_atomic(
            Path("metrics/prepare.json"),
            {**{f"{split}_documents": counts[split] for split in SPLITS}, "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
