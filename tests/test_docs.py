"""The figures the README and docs/RESULTS.md quote are the committed runs' figures: each test
reads both sides (the Markdown and the metrics or experiment files) and compares them."""

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from ctxlm.results.experiments import FULL_SIZE_RESULTS, NEXT_FAMILY, PROBE_RESULTS, SCALING_RESULTS
from ctxlm.results.report import BEFORE_SAMPLING, RESULTS, write_report

# README's result table: a column per model, read from that model's committed metrics file.
MODEL_FILES = {"ctxlm": "metrics/eval.json", "LSTM": "metrics/baselines/lstm.json",
               "GPT-2-style": "metrics/baselines/transformer.json", "Kneser–Ney trigram": "metrics/baselines/kneser_ney.json"}
STAGE_FILES = {"prepare": "prepare", "tokenize": "tokenize", "train_context": "train_context", "generate_cstar": "generate_cstar",
               "train_token": "train_token", "evaluate": "eval"}
QUOTING_PAGES = ["README.md", "docs/default-run.md"]  # the pages with result or stage-time tables


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of a Markdown text as rows of cells (the separator row left out)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def assert_quoted(cell: str, value: float, where: str) -> None:
    """`cell` shows `value` rounded to the decimals it shows (a % cell shows 100 * value)."""
    text = cell.replace(",", "").replace("`", "")
    percent = text.endswith("%")
    number = text.rstrip("%")
    decimals = len(number.split(".")[1]) if "." in number else 0
    shown = 100 * value if percent else value
    assert float(number) == round(shown, decimals), f"{where}: README shows {cell}, the metrics file has {shown}"


def readme_result_rows():
    for table in (table for page in QUOTING_PAGES for table in markdown_tables((REPO / page).read_text())):
        header = table[0]
        if header[:2] == ["metric", "ctxlm"]:
            for row in table[1:]:
                key = row[0].strip("`")
                for model, cell in zip(header[1:], row[1:]):
                    if cell not in ("", "–"):
                        yield model, key, cell
        if header == ["stage", "seconds"]:
            for stage, cell in table[1:]:
                yield "stage", stage.strip("`"), cell


def test_the_readme_has_result_and_stage_tables():
    found = {(model, key) for model, key, _ in readme_result_rows()}
    assert ("ctxlm", "test_ppl") in found and ("ctxlm", "val_ppl") in found and ("stage", "train_token") in found


@pytest.mark.parametrize("model, key, cell", list(readme_result_rows()))
def test_every_readme_figure_is_the_committed_metrics(model, key, cell):
    if model == "stage":
        metrics, key = json.loads((REPO / f"metrics/{STAGE_FILES[key]}.json").read_text()), "seconds"
    else:
        metrics = json.loads((REPO / MODEL_FILES[model]).read_text())
    assert_quoted(cell, metrics[key], f"{model} {key}")


def test_results_md_is_what_the_committed_results_give(tmp_path, monkeypatch):
    """docs/RESULTS.md, remade from the committed experiments and metrics, differs only in its date line."""
    committed = REPO / "docs/RESULTS.md"
    assert committed.is_file() == (REPO / RESULTS).is_file(), "docs/RESULTS.md and its experiments file come together"
    if not committed.is_file():
        pytest.skip("no seed experiments collected yet (ctxlm seed-experiments, ctxlm collect, ctxlm report)")
    for path in ("metrics", *(f.as_posix() for f in (RESULTS, FULL_SIZE_RESULTS, NEXT_FAMILY.results, SCALING_RESULTS, BEFORE_SAMPLING, PROBE_RESULTS))):
        if not (REPO / path).exists():
            continue
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / path).is_dir() else shutil.copy
        copy(REPO / path, tmp_path / path)
    monkeypatch.chdir(tmp_path)
    write_report(Path("docs/RESULTS.md"))
    remade, original = Path("docs/RESULTS.md").read_text().splitlines(), committed.read_text().splitlines()
    assert original[2].startswith("Written by `ctxlm report` on ") and remade[2].startswith("Written by `ctxlm report` on ")
    assert remade[:2] + remade[3:] == original[:2] + original[3:]  # all but the date line (the same within a minute)


def test_the_readme_is_a_landing_page_under_10000_characters():
    assert len((REPO / "README.md").read_text()) < 10_000


def test_no_page_points_outside_the_repository():
    """The design notes this project started from are not part of it: docs/design.md stands for them."""
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        assert "../shared" not in page.read_text(), page.name


def test_every_relative_link_in_the_readme_and_docs_resolves_inside_the_repository():
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if "://" in target:
                continue
            path = (page.parent / target).resolve()
            assert path.is_relative_to(REPO) and path.exists(), f"{page.name}: {target}"


def test_readme_s_seed_intervals_are_the_committed_and_collected_runs():
    """README's 'ctxlm's test perplexity was M ± H and the LSTM's M ± H' (before the sampling change):
    mean and 95% interval of the committed run's figure then (docs/results/before_sampling.json) and
    those of docs/results/full_size.json's runs of that model made before the change."""
    from ctxlm.results.report import mean_interval

    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = re.search(r"ctxlm's test perplexity was ([\d.]+) ± ([\d.]+) and the LSTM's ([\d.]+) ± ([\d.]+)", readme)
    assert quoted, "README no longer quotes the seed intervals"
    runs = json.loads((REPO / "docs/results/full_size.json").read_text())
    before = json.loads((REPO / "docs/results/before_sampling.json").read_text())
    for model, (mean_text, half_text) in (("ctxlm", quoted.groups()[:2]), ("lstm", quoted.groups()[2:])):
        values = [before["metrics"][model]["test_ppl"]] + [r["metrics"]["test_ppl"] for name, r in runs.items()
                                                           if r["model"] == model and name in before["superseded_runs"]]
        mean, half = mean_interval(values)
        assert (f"{mean:.1f}", f"{half:.1f}") == (mean_text, half_text), model
