"""The `ctxlm` command: the seed's experiments and the results report (the stages have their own CLIs)."""

from pathlib import Path

import typer

from ctxlm.cli import DEBUG_OPTION, make_app, stage_run
from ctxlm.experiments import run_seed_experiments
from ctxlm.report import write_report

app = make_app()


@app.command("seed-experiments")
def seed_experiments(
    size: list[str] = typer.Option([], "-S", "--set", help="key=value replacing or adding to the reduced size (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the dvc commands, run nothing"),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Queue the seed's comparisons as named DVC experiments (reduced size) and run the queue."""
    with stage_run("seed-experiments", debug):
        run_seed_experiments(size, dry_run)


@app.command()
def report(out: Path = typer.Option(Path("docs/RESULTS.md"), help="the Markdown file; plots go to results/ beside it"),
           debug: bool = DEBUG_OPTION) -> None:
    """Write docs/RESULTS.md and its plots from the seed experiments and the baselines."""
    with stage_run("report", debug):
        write_report(out)
