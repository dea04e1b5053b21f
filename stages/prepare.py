"""Corpus -> data/corpus/documents.parquet: each split's seeded sample of whole documents up to its
token budget (one row per document: split train/val/test, group, title, text), drawn from the region
of the corpus read in a seeded order until every budget is full; and each split's mix of groups."""

import time
from pathlib import Path

from ctxlm.cli import DEBUG_OPTION, PARAMS_OPTION, elapsed_since, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.data.files import SPLITS, atomic_dir, write_json_atomic
from ctxlm.data.sources import iter_documents, write_documents
from ctxlm.data.tokenizer import load_token_counter, resolve_model_dir
from ctxlm.data.tokens import MIX_TOLERANCE, chosen_documents, sample_documents

app = make_app()


@app.command()
def main(params_file: Path = PARAMS_OPTION, debug: bool = DEBUG_OPTION) -> None:
    with stage_run("prepare", debug):
        start = time.perf_counter()
        params = load_params(params_file)
        data = params.data
        token_counts = load_token_counter(resolve_model_dir(params.embedding.model))
        sample = sample_documents(iter_documents(data, params.seed), token_counts, data.token_budgets,
                                  whole_groups_held_out=data.source == "shakespeare")
        with atomic_dir(Path("data/corpus")) as out:  # a second reading, streamed: the corpus is never held whole
            counts = write_documents(chosen_documents(iter_documents(data, params.seed), sample), out / "documents.parquet", data.source)
        region = "the whole corpus" if sample.read_to_end else "the corpus read so far"
        print(f"prepare: read {sample.region:,} documents ({region}), in a seeded order")
        for split in SPLITS:
            gap, group = sample.gap(split)
            print(f"prepare: {split}: {counts[split]} documents, {sample.kept(split, 'tokens'):,} tokens from {len(sample.mix[split])} group(s); "
                  f"largest gap to the region's mix {gap:.1%} ({group})")
            off = sample.off_mix(split)
            if off:
                print(f"prepare: warning: the {split} split's mix differs from the region it was drawn from by more than {MIX_TOLERANCE:.0%}: "
                      + ", ".join(f"{row['group']} {row['share']:.1%} of the split, {row['region_share']:.1%} of the region" for row in off))
        write_json_atomic(Path("metrics/prepare.json"), {
            **{f"{split}_documents": counts[split] for split in SPLITS},
            **{f"{split}_tokens": sample.kept(split, "tokens") for split in SPLITS},
            **{f"{split}_groups": len(sample.mix[split]) for split in SPLITS},
            **{f"{split}_mix_gap": sample.gap(split)[0] for split in SPLITS},
            "region_documents": sample.region,
            "read_to_end": sample.read_to_end,
            "seconds": elapsed_since(start),
            "mix": sample.mix,
        })


if __name__ == "__main__":
    app()
