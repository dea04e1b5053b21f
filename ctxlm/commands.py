"""The `ctxlm` command: the seed's experiments, collecting their results, and the results report
(the stages have their own CLIs)."""

from pathlib import Path

import typer

from ctxlm.cli import DEBUG_OPTION, make_app, stage_run
from ctxlm.config import load_params
from ctxlm.experiments import FULL_PREFIX, FULL_SIZE_TARGETS, SEEDS, full_size_commands, run_commands, run_seed_experiments
from ctxlm.report import FULL_SIZE_RESULTS, RESULTS, collect_experiments, collect_full_size, write_report

app = make_app()


@app.command("seed-experiments")
def seed_experiments(
    size: list[str] = typer.Option([], "-S", "--set", help="key=value replacing or adding to the reduced size (repeatable)"),
    seeds: int = typer.Option(SEEDS, "--seeds", help="run every setting with seeds 0 .. N-1 (at least 2)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing"),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Run the seed's comparisons as named DVC experiments (reduced size, N seeds), one after the other."""
    with stage_run("seed-experiments", debug):
        run_seed_experiments(size, seeds, dry_run)


@app.command("full-size-seeds")
def full_size_seeds(
    model: list[str] = typer.Option(list(FULL_SIZE_TARGETS), "--model", help=" | ".join(FULL_SIZE_TARGETS) + " (repeatable)"),
    seeds: int = typer.Option(SEEDS, "--seeds", help="seeds 0 .. N-1 in all; the workspace's committed run is its own seed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing"),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Run ctxlm and the LSTM at full size with the other seeds, one after the other, as named DVC experiments."""
    with stage_run("full-size-seeds", debug):
        run_commands(full_size_commands(model, seeds, load_params(Path("params.yaml")).seed), dry_run, FULL_PREFIX)


@app.command()
def collect(out: Path = typer.Option(RESULTS, help="the seed experiments' JSON file (commit it)"),
            full_size_out: Path = typer.Option(FULL_SIZE_RESULTS, help="the full-size seeds' JSON file (commit it)"),
            debug: bool = DEBUG_OPTION) -> None:
    """Write the seed experiments' and the full-size seeds' metrics (and curves) from DVC to JSON files
    that travel with the repository."""
    with stage_run("collect", debug):
        full_size_runs = collect_full_size(full_size_out)
        collect_experiments(out, required=not full_size_runs)  # one of the two kinds at least


@app.command()
def report(out: Path = typer.Option(Path("docs/RESULTS.md"), help="the Markdown file; plots go to results/ beside it"),
           results: Path = typer.Option(RESULTS, help="the collected experiments (ctxlm collect)"),
           debug: bool = DEBUG_OPTION) -> None:
    """Write docs/RESULTS.md and its plots from the collected seed experiments and the committed metrics."""
    with stage_run("report", debug):
        write_report(out, results)
