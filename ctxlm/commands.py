"""The `ctxlm` command: using a trained model (generate, score, export), the seed's experiments,
collecting their results, and the results report (the stages have their own CLIs).

Each command imports what it needs when it runs, so that `ctxlm generate` starts without the
report's plotting libraries."""

import sys
from pathlib import Path

import typer

from ctxlm.cli import DEBUG_OPTION, make_app, stage_run
from ctxlm.errors import CtxlmError
from ctxlm.results.experiments import FULL_SIZE_RESULTS, FULL_SIZE_TARGETS, PROBE_RESULTS, RESULTS, SCALING_MODELS, SCALING_SIZES, SEEDS, WHOLE_SPLIT

MODEL_OPTION = typer.Option("ctxlm", "--model", help="ctxlm | lstm | transformer (of this DVC workspace) or a folder from `ctxlm export`")

app = make_app()


SIZE_OPTION = typer.Option([], "-S", "--set", help="key=value replacing or adding to the reduced size (repeatable)")
SEEDS_OPTION = typer.Option(SEEDS, "--seeds", help="run every setting with seeds 0 .. N-1 (at least 2)")
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing")


@app.command("seed-experiments")
def seed_experiments(size: list[str] = SIZE_OPTION, seeds: int = SEEDS_OPTION, dry_run: bool = DRY_RUN_OPTION, debug: bool = DEBUG_OPTION) -> None:
    """Run the seed's comparisons as named DVC experiments (reduced size, N seeds), one after the other."""
    from ctxlm.results.experiments import run_seed_experiments

    with stage_run("seed-experiments", debug):
        run_seed_experiments(size, seeds, dry_run)


@app.command("next-experiments")
def next_experiments(size: list[str] = SIZE_OPTION, seeds: int = SEEDS_OPTION, dry_run: bool = DRY_RUN_OPTION, debug: bool = DEBUG_OPTION) -> None:
    """Run the research's later comparisons (two ContextBlocks, previous contexts, the untrained
    control) as named DVC experiments next-<setting>-s<seed> (reduced size, N seeds)."""
    from ctxlm.results.experiments import NEXT_FAMILY, run_seed_experiments

    with stage_run("next-experiments", debug):
        run_seed_experiments(size, seeds, dry_run, NEXT_FAMILY)


@app.command("full-size-seeds")
def full_size_seeds(
    model: list[str] = typer.Option(list(FULL_SIZE_TARGETS), "--model", help=" | ".join(FULL_SIZE_TARGETS) + " (repeatable)"),
    seeds: int = typer.Option(SEEDS, "--seeds", help="seeds 0 .. N-1 in all; the workspace's committed run is its own seed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing"),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Run ctxlm and the LSTM at full size with the other seeds, one after the other, as named DVC experiments."""
    from ctxlm.config import load_params
    from ctxlm.results.experiments import FULL_PREFIX, full_size_commands, run_commands

    with stage_run("full-size-seeds", debug):
        run_commands(full_size_commands(model, seeds, load_params(Path("params.yaml")).seed), dry_run, FULL_PREFIX)


@app.command()
def scaling(
    sizes: str = typer.Option(",".join(map(str, SCALING_SIZES)), "--sizes",
                              help=f"training sizes in tokens, comma-separated (at least 4); {WHOLE_SPLIT}: the whole training split"),
    model: list[str] = typer.Option(list(SCALING_MODELS), "--model", help=" | ".join(SCALING_MODELS) + " (repeatable)"),
    switches: list[str] = typer.Option([], "-S", "--set", help="key=value for every run, e.g. -S seed=1 (repeatable)"),
    dry_run: bool = DRY_RUN_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Run each model at each training size (data.max_train_tokens) as DVC experiments scale-<model>-n<tokens>,
    the same validation and test tokens for all, smallest size first; runs already finished are skipped.
    Then `ctxlm collect` and `ctxlm report` fit PPL(n) = E + A n^-alpha to each model and plot the curves."""
    from ctxlm.results.experiments import run_scaling

    with stage_run("scaling", debug):
        try:
            asked = [WHOLE_SPLIT if size.strip() == WHOLE_SPLIT else int(size) for size in sizes.split(",")]
        except ValueError:
            raise CtxlmError(f"--sizes {sizes!r}: expected whole numbers of tokens (or {WHOLE_SPLIT}) separated by commas, "
                             "e.g. 25000,50000,100000,all") from None
        run_scaling(model, asked, switches, dry_run)


@app.command()
def probe(
    train_positions: int = typer.Option(20_000, "--train-positions", help="training positions the probes learn from (whole documents, seeded)"),
    val_positions: int = typer.Option(10_000, "--val-positions", help="validation positions they are scored on"),
    classes: int = typer.Option(1_000, "--classes", help="the most frequent training tokens a probe names"),
    out: Path = typer.Option(PROBE_RESULTS, "--out", help="the figures' JSON file (commit it; ctxlm report reads it)"),
    debug: bool = DEBUG_OPTION,
) -> None:
    """What C* remembers: for k = 0..16, a linear probe names the token k positions back from the
    trained C*, from the untrained ContextBlock's (phase1.max_iterations: 0), from the LSTM's hidden
    state (when the workspace has trained it) and from the mean of the last 17 embeddings."""
    from ctxlm.config import load_params
    from ctxlm.data.files import write_json_atomic
    from ctxlm.data.shards import CstarReader, decode_cstar, load_token_folder
    from ctxlm.generation.inference import PROBE_DEPTH, documents_of, probe_features, probe_memory, sampled_documents
    from ctxlm.model import ContextBlocks
    from ctxlm.results.experiments import workspace_record
    from ctxlm.training.phase1 import initial_block
    from ctxlm.weights import load_context_blocks

    with stage_run("probe", debug):
        params = load_params(Path("params.yaml"))
        _, splits, embedding = load_token_folder(Path("data/tokens"))
        _, cfg = load_context_blocks(Path("data/context"))
        control = ContextBlocks(cfg, [initial_block(cfg, params.seed, j)[0] for j in range(cfg.context_blocks)]).eval()
        lstm = None
        if Path("data/baselines/lstm").is_dir():
            from ctxlm.evaluation.baselines import load_baseline
            lstm = load_baseline(Path("data/baselines/lstm"), embedding)
        else:
            print("ctxlm probe: no data/baselines/lstm (dvc repro baselines/dvc.yaml:baseline_neural@lstm makes it): the LSTM is left out")
        sets = {}
        for split, wanted in (("train", train_positions), ("val", val_positions)):
            tokens = splits[split]
            docs, rows = documents_of(tokens.ids, tokens.offsets, sampled_documents(tokens.offsets, wanted, params.seed))
            trained = decode_cstar(CstarReader(Path(f"data/cstar/{split}")).read(rows)).numpy()
            sets[split] = (docs, probe_features(docs, trained, control, embedding, lstm))
        result = probe_memory(*sets["train"], *sets["val"], classes, params.seed) | {"workspace": workspace_record(params.model_dump())}
        write_json_atomic(out, result)
        names = [name for name in result["within_2x_of_unigram"]]
        print(f"{'k':>3} {'unigram':>8} " + " ".join(f"{name:>10}" for name in names))
        for row in result["by_k"]:
            print(f"{row['k']:>3} {row['unigram_accuracy']:>8.3f} " + " ".join(f"{row[name]['accuracy']:>10.3f}" for name in names))
        print("accuracy within 2x of the unigram guess from k = " + ", ".join(
            f"{name}: {k if k is not None else f'beyond {PROBE_DEPTH}'}" for name, k in result["within_2x_of_unigram"].items()))
        print(f"ctxlm probe: wrote {out}")


@app.command()
def collect(out: Path = typer.Option(RESULTS, help="the seed experiments' JSON file (commit it)"),
            full_size_out: Path = typer.Option(FULL_SIZE_RESULTS, help="the full-size seeds' JSON file (commit it)"),
            debug: bool = DEBUG_OPTION) -> None:
    """Write the seed experiments', the research's later comparisons', the full-size seeds' and the
    scaling runs' metrics (and curves) from DVC to JSON files that travel with the repository."""
    from ctxlm.results.experiments import NEXT_FAMILY
    from ctxlm.results.report import collect_experiments, collect_full_size, collect_scaling

    with stage_run("collect", debug):
        others = (collect_full_size(full_size_out) + collect_scaling()
                  + collect_experiments(NEXT_FAMILY.results, required=False, family=NEXT_FAMILY))
        collect_experiments(out, required=not others)  # one of the kinds at least


@app.command()
def report(out: Path = typer.Option(Path("docs/RESULTS.md"), help="the Markdown file; plots go to results/ beside it"),
           results: Path = typer.Option(RESULTS, help="the collected experiments (ctxlm collect)"),
           debug: bool = DEBUG_OPTION) -> None:
    """Write docs/RESULTS.md and its plots from the collected seed experiments and the committed metrics."""
    from ctxlm.results.report import write_report

    with stage_run("report", debug):
        write_report(out, results)


@app.command()
def generate(
    prompt: str = typer.Argument("", help="the text to continue (empty: start from the zero context)"),
    max_tokens: int = typer.Option(100, "--max-tokens", min=1, help="tokens to generate"),
    temperature: float = typer.Option(1.0, "--temperature", help="> 0; below 1 sharpens the distribution"),
    top_k: int = typer.Option(0, "--top-k", help="sample among the k most likely tokens (0: all)"),
    top_p: float = typer.Option(1.0, "--top-p", help="sample among the most likely tokens whose probability reaches p, in (0, 1]"),
    greedy: bool = typer.Option(False, "--greedy", help="take the most likely token every step"),
    seed: int = typer.Option(0, "--seed", help="same seed, same text"),
    model: str = MODEL_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Continue PROMPT with a trained model, printing the text as it comes: the prompt is read once,
    then each new token one recurrence step (ctxlm's cost per token does not grow with the text)."""
    from ctxlm.generation.export import load_model
    from ctxlm.generation.inference import Sampling, generate_ids, stream_text

    with stage_run("generate", debug, timing=False):
        sampling = Sampling(temperature, top_k, top_p, greedy)
        loaded = load_model(model)
        prompt_ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sys.stdout.write(prompt)
        for piece in stream_text(loaded.tokenizer, prompt_ids, generate_ids(loaded.stepper, prompt_ids, max_tokens, sampling, seed)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


@app.command()
def score(
    file: str = typer.Argument(..., help="a .txt file (documents between blank lines), a .jsonl file (a 'text' or 'messages' "
                                         "per line), a folder of .txt files (a document each), or - for standard input"),
    out: Path = typer.Option(None, "--out", help="per-token figures to this .csv or .json file"),
    one_document: bool = typer.Option(False, "--one-document", help="the whole text as one document (no context reset at blank lines)"),
    model: str = MODEL_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Score a text with a trained ctxlm: each token's log-probability and surprisal, and the totals
    (perplexity, accuracy, bits per byte). Documents are cut as `data.source` cuts a corpus, and the
    context resets at each; a document's first token is not predicted (as in evaluate)."""
    from ctxlm.data.tokens import tokenize_documents
    from ctxlm.generation.export import load_model
    from ctxlm.generation.inference import score_tokens, text_to_documents, write_scores

    with stage_run("score", debug, timing=False):
        if out is not None and out.suffix not in (".csv", ".json"):
            raise CtxlmError(f"--out {out}: give a .csv or .json file")
        documents = text_to_documents(file, one_document)
        loaded = load_model(model)
        if loaded.block is None:
            raise CtxlmError(f"--model {model}: ctxlm score scores ctxlm models (the workspace's or an exported one)")
        # a token covers at least one byte of text, so this budget keeps every token
        tokens = tokenize_documents(loaded.tokenizer, documents, budget=1 + sum(len(d.encode()) for d in documents))
        scores = score_tokens(loaded.block, loaded.token_model, tokens)
        if out is not None:
            write_scores(out, scores, loaded.tokenizer)
        print(f"{len(scores.logprob):,} tokens scored in {len(tokens.offsets) - 1:,} document(s): perplexity {scores.perplexity:.2f}, "
              f"accuracy {scores.accuracy:.2%}, {scores.bits_per_byte:.4f} bits per byte"
              + (f"; per-token figures in {out}" if out else ""))


@app.command()
def export(out: Path = typer.Argument(..., help="the folder to write (a folder of an earlier export is replaced; any other existing folder is refused)"), debug: bool = DEBUG_OPTION) -> None:
    """Write the workspace's trained ctxlm (after `dvc repro`) to a self-contained folder: safetensors
    weights, the embedding, the tokenizer, config.json and a model card; `--model OUT` loads it."""
    from ctxlm.generation.export import export_model

    with stage_run("export", debug):
        config = export_model(out, f"ctxlm export {out}")
        print(f"ctxlm export: wrote {out} (test perplexity {config['metrics'].get('test_ppl', float('nan')):.1f})")
