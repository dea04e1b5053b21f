"""The `ctxlm` command: the seed's experiments, collecting their results, and the results report
(the stages have their own CLIs)."""

from pathlib import Path

import typer

from ctxlm.cli import DEBUG_OPTION, make_app, stage_run
from ctxlm.experiments import SEEDS, run_seed_experiments
from ctxlm.report import RESULTS, collect_experiments, write_report

app = make_app()


@app.command("seed-experiments")
def seed_experiments(
    size: list[str] = typer.Option([], "-S", "--set", help="key=value replacing or adding to the reduced size (repeatable)"),
    seeds: int = typer.Option(SEEDS, "--seeds", help="run every setting with seeds 0 .. N-1 (at least 2)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing"),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Queue the seed's comparisons as named DVC experiments (reduced size, N seeds) and run the queue."""
    with stage_run("seed-experiments", debug):
        run_seed_experiments(size, seeds, dry_run)


@app.command()
def collect(out: Path = typer.Option(RESULTS, help="the JSON file to write (commit it)"), debug: bool = DEBUG_OPTION) -> None:
    """Write the seed experiments' metrics and curves from DVC to a JSON file that travels with the repository."""
    with stage_run("collect", debug):
        collect_experiments(out)


@app.command()
def report(out: Path = typer.Option(Path("docs/RESULTS.md"), help="the Markdown file; plots go to results/ beside it"),
           results: Path = typer.Option(RESULTS, help="the collected experiments (ctxlm collect)"),
           debug: bool = DEBUG_OPTION) -> None:
    """Write docs/RESULTS.md and its plots from the collected seed experiments and the committed metrics."""
    with stage_run("report", debug):
        write_report(out, results)
