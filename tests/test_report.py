import json
import sys
from pathlib import Path

import pytest

from conftest import sh
from ctxlm.experiments import COMPARISONS, EXPERIMENTS, PREFIX, queue_commands, run_seed_experiments
from ctxlm.errors import CtxlmError
from ctxlm.report import comparison_table

TINY_SIZE = ["data.max_train_tokens=3000", "data.max_val_tokens=1200", "phase1.max_iterations=2", "phase2.epochs=2"]


def test_every_comparison_names_defined_experiments_and_a_seed_figure_per_metric():
    for comparison in COMPARISONS:
        for setting in (comparison.a, comparison.b):
            assert setting.experiment in EXPERIMENTS
            assert len(setting.seed) == len(comparison.metrics)
    queued = [command for command in queue_commands() if "--queue" in command]
    assert len(queued) == len(EXPERIMENTS) and all(command[-1] == "evaluate" for command in queued)


def test_a_size_override_must_be_key_equals_value():
    with pytest.raises(CtxlmError, match="expected key=value"):
        run_seed_experiments(["phase2.epochs"], dry_run=True)


def test_a_failing_dvc_command_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a DVC repository: the first `dvc exp run --queue` fails
    with pytest.raises(CtxlmError, match=r"`dvc exp run --queue -n seed-base .*` failed \(exit status \d+"):
        run_seed_experiments([])


def test_comparison_table_change_and_direction():
    embedding = COMPARISONS[0]  # A trained (seed PPL 1189), B frozen (seed 334): the seed found B better
    metrics = {"val_ppl": 300.0, "val_acc": 0.15}
    experiments = {"trained-embedding": {"metrics": {"val_ppl": 200.0, "val_acc": 0.15}}, "base": {"metrics": metrics}}
    rows, sentence, agree, compared = comparison_table(embedding, experiments)
    assert (agree, compared) == (0, 2)
    assert "disagrees on val PPL (ours +50.0%, seed -71.9%)" in sentence and "no change (under 1%) in val acc" in sentence
    ppl, acc = rows[2], rows[3]
    assert "| 200 | 300 | +50.0% |" in ppl and "-71.9%" in ppl and "disagrees (seed: B better)" in ppl
    assert "+0.0%" in acc and "no change" in acc


@pytest.mark.slow
def test_report_renders_from_real_experiments(repo: Path):
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "tiny run")
    args = [item for setting in TINY_SIZE for item in ("-S", setting)]
    sh(repo, sys.executable, "-m", "ctxlm", "seed-experiments", *args)
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    runs = {rev["name"]: rev["data"] for e in shown[1]["experiments"] for rev in e["revs"]}
    assert set(runs) == {PREFIX + name for name in EXPERIMENTS}

    printed = sh(repo, sys.executable, "-m", "ctxlm", "report").stdout
    assert "wrote docs/RESULTS.md and 3 plots" in printed
    report = (repo / "docs/RESULTS.md").read_text()
    for comparison in COMPARISONS:
        assert f"### {comparison.title}" in report
    for name in ("base", "trained-embedding", "layers-6"):  # figures come from the runs
        ppl = runs[PREFIX + name]["metrics"]["metrics/eval.json"]["data"]["val_ppl"]
        assert f"{ppl:,.1f}" in report, name
    assert "-S model.num_layers=6" in report and "-S phase1.max_iterations=2" in report
    for label in ("LSTM", "GPT-2-style Transformer", "Kneser-Ney trigram"):
        assert f"| {label} |" in report
    assert "Where we agree with the seed: on" in report
    for png in ("seed_val_curves", "effective_rank_by_layer", "baseline_val_curves"):
        data = (repo / f"docs/results/{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
