"""Documents -> token shards (ids + document offsets per split, the documents in order of their sampling
keys) and the embedding matrix E."""

import time
from pathlib import Path

import pyarrow.parquet as pq

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.cli import progress
from ctxlm.config import load_params
from ctxlm.data.embedding import check_vocab, load_embedding
from ctxlm.data.files import atomic_dir, save_tokens, write_json_atomic, write_manifest
from ctxlm.data.shards import save_embedding
from ctxlm.data.tokenizer import load_tokenizer, resolve_model_dir
from ctxlm.data.tokens import SplitTokenizer
from ctxlm.errors import CtxlmError

app = make_app()
CORPUS = Path("data/corpus/documents.parquet")


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("tokenize", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        if not CORPUS.is_file():
            raise CtxlmError(f"{CORPUS}: missing; run: dvc repro prepare")
        model_dir = resolve_model_dir(params.embedding.model)
        tokenizer = load_tokenizer(model_dir)
        embedding = load_embedding(model_dir)
        check_vocab(tokenizer, embedding, model_dir)
        budgets = params.data.token_budgets
        counts = {}
        bar = progress(total=sum(budgets.values()), desc="tokenize", unit="tok", unit_scale=True, leave=False)
        splits = {split: SplitTokenizer(tokenizer, budget, bar) for split, budget in budgets.items()}
        for batch in pq.ParquetFile(CORPUS).iter_batches(batch_size=256, columns=["split", "text", "key"]):  # streamed, never whole
            rows = batch.to_pydict()
            for split, tokens in splits.items():
                chosen = [i for i, s in enumerate(rows["split"]) if s == split]
                tokens.add([rows["text"][i] for i in chosen], [rows["key"][i] for i in chosen])
            if all(tokens.full for tokens in splits.values()):
                break
        bar.close()
        with atomic_dir(Path("data/tokens")) as out:
            for split, budget in budgets.items():
                tokens = splits[split].result()
                ids, offsets = tokens.ids, tokens.offsets
                if len(ids) < 2:
                    raise CtxlmError(f"{CORPUS}: the {split} split has {len(ids)} tokens; need at least 2")
                if len(ids) < budget:
                    print(f"tokenize: data.max_{split}_tokens is {budget:,} but the {split} split has {len(ids):,} tokens: using them all")
                save_tokens(out, split, ids, offsets)
                counts[split] = {"tokens": int(len(ids)), "documents": int(len(offsets) - 1),
                                 "predicted_bytes": tokens.predicted_bytes, "predicted_chars": tokens.predicted_chars}
                print(f"tokenize: {split}: {len(ids):,} tokens in {len(offsets) - 1} documents")
            save_embedding(out, embedding)
            write_manifest(out, {"embedding_model": params.embedding.model, "vocab_size": embedding.shape[0], "embed_dim": embedding.shape[1], **counts})
        write_json_atomic(
            Path("metrics/tokenize.json"),
            {**{f"{split}_{key}": count[key] for split, count in counts.items() for key in ("tokens", "documents", "predicted_bytes")},
             "seconds": elapsed_since(start)},
        )


if __name__ == "__main__":
    app()
