import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, sh
from ctxlm.errors import CtxlmError
from ctxlm.results.experiments import (COMPARISONS, EXPERIMENTS, NEXT_FAMILY, SEEDS, experiment_commands, experiment_name, parse_experiment_name,
                                       run_seed_experiments)
from ctxlm.results.report import comparison_table, mean_interval, paired_verdict

TINY_SIZE = ["data.max_train_tokens=1500", "data.max_val_tokens=600", "data.max_test_tokens=600",
             "phase1.max_iterations=1", "phase2.epochs=1", "phase2.patience=1"]


def test_every_comparison_names_defined_experiments_and_a_seed_figure_per_metric():
    for comparison in COMPARISONS:
        for setting in (comparison.a, comparison.b):
            assert setting.experiment in EXPERIMENTS
            assert len(setting.seed) == len(comparison.metrics)
    queued = experiment_commands()
    assert len(queued) == len(EXPERIMENTS) * SEEDS and all(command[:4] == ["dvc", "exp", "run", "--temp"] and command[-1] == "evaluate"
                                                           for command in queued)
    names = [command[command.index("-n") + 1] for command in queued]
    assert len(set(names)) == len(names)
    for command, name in zip(queued, names):  # each run sets the seed its name says
        setting, seed = parse_experiment_name(name)
        assert f"seed={seed}" in command and setting in EXPERIMENTS


def test_the_research_s_later_comparisons_are_well_formed():
    family = NEXT_FAMILY
    for comparison in family.comparisons:
        for setting in (comparison.a, comparison.b):
            assert setting.experiment in family.experiments and len(setting.seed) == len(comparison.metrics)
    queued = experiment_commands(family=family)
    names = [command[command.index("-n") + 1] for command in queued]
    assert sorted(names) == sorted(f"next-{setting}-s{seed}" for setting in family.experiments for seed in range(SEEDS))
    assert all(parse_experiment_name(name, family) and not parse_experiment_name(name) for name in names)  # not the seed family's
    base_width = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["context_dim"]
    blocks = family.experiments["blocks-2"]
    assert int(blocks["model.context_blocks"]) * int(blocks["model.context_dim"]) == base_width  # at equal total width


def test_a_comparison_without_a_quoted_figure_says_which_side_is_better_outside_the_noise():
    control = NEXT_FAMILY.comparisons[2]  # A untrained, B trained; no research figure
    untrained = {s: {"metrics": {"val_ppl": 400.0 + s, "test_ppl": 410.0, "effective_rank_ratio": 0.5 + 0.1 * s}} for s in range(3)}
    trained = {s: {"metrics": {"val_ppl": 300.0 + s, "test_ppl": 410.0, "effective_rank_ratio": 0.6 - 0.1 * s}} for s in range(3)}
    rows, sentence, agree, compared = comparison_table(control, {"untrained": untrained, "base": trained}, "research")
    assert (agree, compared) == (0, 0) and "no research figure to compare with" in sentence
    assert "| research A | research B | research change |" in rows[0]
    assert rows[2].endswith("| B better, outside the noise |")  # val PPL 25% lower on every seed
    assert rows[3].endswith("| within noise |") and rows[4].endswith("| within noise |")  # equal; changes of both signs


def test_experiment_names_round_trip():
    assert experiment_name("layers-3-first-input", 2) == "seed-layers-3-first-input-s2"
    assert parse_experiment_name("seed-layers-3-first-input-s2") == ("layers-3-first-input", 2)
    assert parse_experiment_name("seed-base") is None and parse_experiment_name("seed-unknown-s0") is None


def test_a_size_override_must_be_key_equals_value_and_seeds_at_least_two():
    with pytest.raises(CtxlmError, match="expected key=value"):
        run_seed_experiments(["phase2.epochs"], dry_run=True)
    with pytest.raises(CtxlmError, match="at least 2 seeds"):
        run_seed_experiments([], seeds=1, dry_run=True)


def test_a_failing_dvc_command_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not a DVC repository: the first `dvc exp run` fails
    with pytest.raises(CtxlmError, match=r"`dvc exp run --temp -n seed-base-s0 .*` failed \(exit status \d+"):
        run_seed_experiments([])


def test_mean_interval_by_hand():
    mean, half = mean_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2 df) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    mean, half = mean_interval([5.0, 5.0])
    assert (mean, half) == (5.0, 0.0)
    with pytest.raises(CtxlmError):
        mean_interval([1.0])


def test_paired_verdict_decides_by_the_interval_not_a_band():
    assert paired_verdict([0.010, 0.012, 0.011], seed_change=0.5)[0] == "agrees"  # small but consistent
    assert paired_verdict([-0.010, -0.012, -0.011], seed_change=0.5)[0] == "disagrees"
    assert paired_verdict([0.30, -0.20, 0.25], seed_change=0.5)[0] == "within noise"  # large but inconsistent
    assert paired_verdict([0.1, 0.2], seed_change=None)[0] == "no seed figure"
    half = 4.303 * 0.1 / math.sqrt(3)  # sd 0.1: 0.248
    assert paired_verdict([0.1, 0.2, 0.3], seed_change=-1.0) == ("within noise", pytest.approx(0.2 - half), pytest.approx(0.2 + half))
    assert paired_verdict([0.2, 0.3, 0.4], seed_change=-1.0) == ("disagrees", pytest.approx(0.3 - half), pytest.approx(0.3 + half))


def test_comparison_table_means_intervals_and_verdicts():
    embedding = COMPARISONS[0]  # A trained (seed PPL 1189), B frozen (seed 334): the seed found B better
    trained = {0: {"metrics": {"test_ppl": 200.0, "test_acc": 0.15}}, 1: {"metrics": {"test_ppl": 210.0, "test_acc": 0.16}},
               2: {"metrics": {"test_ppl": 190.0, "test_acc": 0.15}}}
    frozen = {0: {"metrics": {"test_ppl": 300.0, "test_acc": 0.15}}, 1: {"metrics": {"test_ppl": 315.0, "test_acc": 0.15}},
              2: {"metrics": {"test_ppl": 285.0, "test_acc": 0.16}}}
    rows, sentence, agree, compared = comparison_table(embedding, {"trained-embedding": trained, "base": frozen})
    assert (agree, compared) == (0, 2)
    # PPL: every seed +50%: the interval is [+50%, +50%], the seed's change -71.9%: disagrees
    assert "disagrees on test PPL (ours +50.0% [+50.0%, +50.0%], seed -71.9%)" in sentence
    assert "within noise on test acc" in sentence
    ppl = rows[2]
    assert "| 200 ± 24.8 | 300 ± 37.3 |" in ppl and "disagrees (seed: B better)" in ppl  # 4.303 * 10 / sqrt(3) = 24.8


@pytest.mark.slow
def test_report_is_rebuilt_from_a_clone_and_experiments_travel_through_remotes(repo: Path, tmp_path: Path):
    sh(repo, "dvc", "repro", "evaluate")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "tiny run")
    args = [item for setting in TINY_SIZE for item in ("-S", setting)]
    sh(repo, sys.executable, "-m", "ctxlm", "seed-experiments", "--seeds", "2", *args)
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    runs = {rev["name"]: rev["data"] for e in shown[1]["experiments"] for rev in e["revs"]}
    assert set(runs) == {experiment_name(name, seed) for name in EXPERIMENTS for seed in (0, 1)}

    sh(repo, sys.executable, "-m", "ctxlm", "collect")
    printed = sh(repo, sys.executable, "-m", "ctxlm", "report").stdout
    assert "wrote docs/RESULTS.md and 3 plots" in printed
    report = (repo / "docs/RESULTS.md").read_text()
    for comparison in COMPARISONS:
        assert f"### {comparison.title}" in report
    collected = json.loads((repo / "docs/results/experiments.json").read_text())
    for name in (experiment_name("base", 1), experiment_name("layers-6", 0)):  # the figures are the runs'
        assert collected[name]["metrics"]["metrics/eval.json"] == runs[name]["metrics"]["metrics/eval.json"]["data"], name
    curve = collected[experiment_name("base", 1)]["curve"]  # from the experiment's DVCLive files in its commit
    assert curve["epoch"] == [1] and curve["val_ppl"] == [runs[experiment_name("base", 1)]["metrics"]["metrics/eval.json"]["data"]["val_ppl"]]
    base = [collected[experiment_name("base", s)]["metrics"]["metrics/eval.json"]["test_ppl"] for s in (0, 1)]
    mean, half = mean_interval(base)
    assert f"{mean:,.1f} ± {half:,.1f}" in report
    assert "-S model.num_layers=6" in report and "-S phase1.max_iterations=1" in report

    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "results")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    shutil.rmtree(clone / "docs")
    sh(clone, "git", "checkout", "-q", "--", "docs/results/experiments.json")
    sh(clone, sys.executable, "-m", "ctxlm", "report")
    rebuilt, original = (clone / "docs/RESULTS.md").read_text().splitlines(), report.splitlines()
    assert len(rebuilt) == len(original) and original[2].startswith("Written by `ctxlm report` on ")
    assert [i for i, (a, b) in enumerate(zip(rebuilt, original)) if a != b] in ([], [2])  # at most the date line
    for png in ("seed_val_curves", "effective_rank_by_layer", "baseline_val_curves"):
        assert (clone / f"docs/results/{png}.png").read_bytes() == (repo / f"docs/results/{png}.png").read_bytes(), png

    # sharing the experiments themselves: a bare git remote for their refs, a local DVC remote for their data
    bare, store = tmp_path / "origin.git", tmp_path / "dvc-store"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(bare))
    sh(repo, "git", "remote", "add", "origin", str(bare))
    sh(repo, "git", "push", "-q", "origin", "main")
    sh(repo, "dvc", "remote", "add", "--local", "-d", "store", str(store))  # --local: read at every experiment's commit
    name = experiment_name("untied", 1)
    sh(repo, "dvc", "exp", "push", "origin", name)  # its git ref to origin, its outputs to the DVC remote
    teammate = tmp_path / "teammate"
    sh(tmp_path, "git", "clone", "-q", str(bare), str(teammate))
    sh(teammate, "dvc", "remote", "add", "--local", "-d", "store", str(store))
    sh(teammate, "dvc", "exp", "pull", "origin", name)
    listed = sh(teammate, "dvc", "exp", "list", "--all-commits", "--name-only").stdout.split()
    assert name in listed
    sh(teammate, "dvc", "exp", "apply", name)
    sh(teammate, "dvc", "pull", "-q")
    assert json.loads((teammate / "metrics/eval.json").read_text()) == runs[name]["metrics"]["metrics/eval.json"]["data"]
    assert (teammate / "data/token_model/manifest.json").is_file()


def test_full_size_seeds_queue_the_other_seeds_of_each_model_by_name():
    from ctxlm.results.experiments import full_size_commands, full_size_name, parse_full_size_name

    commands = full_size_commands(["ctxlm", "lstm"], seeds=3, workspace_seed=0)
    assert all(c[:4] == ["dvc", "exp", "run", "--temp"] for c in commands)
    queued = {tuple(c[c.index("-n") + 1:]) for c in commands}
    assert queued == {("full-ctxlm-s1", "-S", "seed=1", "evaluate"), ("full-ctxlm-s2", "-S", "seed=2", "evaluate"),
                      ("full-lstm-s1", "-S", "seed=1", "baselines/dvc.yaml:baseline_neural@lstm"),
                      ("full-lstm-s2", "-S", "seed=2", "baselines/dvc.yaml:baseline_neural@lstm")}
    assert parse_full_size_name(full_size_name("lstm", 2)) == ("lstm", 2) and parse_full_size_name("full-gru-s1") is None
    with pytest.raises(CtxlmError, match="--model gru"):
        full_size_commands(["gru"], seeds=3, workspace_seed=0)


def test_the_baseline_table_gives_ctxlm_and_the_lstm_over_their_seeds(tmp_path, monkeypatch):
    from ctxlm.results.report import baseline_rows

    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics/baselines").mkdir(parents=True)
    figures = {"test_acc": 0.15, "test_bits_per_byte": 2.0, "val_ppl": 300.0, "best_epoch": 4}
    (tmp_path / "metrics/eval.json").write_text(json.dumps({**figures, "test_ppl": 240.0, "params_blocks": 1000, "seconds": 1.0}))
    for stage in ("train_context", "generate_cstar", "train_token"):
        (tmp_path / f"metrics/{stage}.json").write_text(json.dumps({"seconds": 10.0}))
    (tmp_path / "metrics/baselines/lstm.json").write_text(json.dumps({**figures, "test_ppl": 160.0, "params_trainable_body": 990, "seconds": 5.0}))
    full_size = tmp_path / "full_size.json"
    full_size.write_text(json.dumps({  # two more ctxlm seeds, none for the LSTM
        "full-ctxlm-s2": {"model": "ctxlm", "seed": 2, "metrics": {**figures, "test_ppl": 260.0}},
        "full-ctxlm-s1": {"model": "ctxlm", "seed": 1, "metrics": {**figures, "test_ppl": 250.0}}}))
    ctxlm_row, lstm_row = baseline_rows(full_size)[2:4]
    # 240, 250, 260: mean 250, sd 10, half-width 4.303 * 10 / sqrt(3) = 24.8
    assert ctxlm_row.startswith("| ctxlm (ContextBlock + TokenBlock) | 3 | 250 ± 24.8 | +0.0% | 15.0% ± 0.0 |")
    assert lstm_row.startswith("| LSTM | 1 | 160 | -33.3% | 15.0% |")


def test_collect_full_size_keeps_each_finished_run_s_own_model_figures(tmp_path, monkeypatch):
    """The runs come from `dvc exp show --json` (its shape: commits newest first, each with its
    experiments' revs); a failed run and runs of other names are left out, and of two
    runs of one name the newer commit's is kept."""
    import ctxlm.results.report as report

    def rev(name, metrics, error=None):
        return {"revs": [{"name": name, "rev": f"rev-{name}", "error": error, "data": {"metrics": metrics}}]}

    lstm_figures, ctxlm_figures = {"test_ppl": 160.0}, {"test_ppl": 250.0}
    shown = [{"rev": "abc123", "experiments": [
                 rev("full-lstm-s1", {"metrics/baselines/lstm.json": {"data": lstm_figures}, "metrics/eval.json": {"data": ctxlm_figures}}),
                 rev("full-ctxlm-s2", {"metrics/eval.json": {"data": ctxlm_figures}}),
                 rev("full-ctxlm-s1", {}, error={"msg": "killed"}),
                 rev("seed-base-s0", {"metrics/eval.json": {"data": ctxlm_figures}})]},
             {"rev": "older", "experiments": [  # an older commit's run of the same name is replaced; others are kept
                 rev("full-ctxlm-s2", {"metrics/eval.json": {"data": {"test_ppl": 999.0}}}),
                 rev("full-lstm-s2", {"metrics/baselines/lstm.json": {"data": lstm_figures}})]}]
    monkeypatch.setattr(report, "_shown_commits", lambda: shown)
    assert report.collect_full_size(tmp_path / "full_size.json") == 3
    runs = json.loads((tmp_path / "full_size.json").read_text())
    assert runs == {"full-ctxlm-s2": {"model": "ctxlm", "seed": 2, "rev": "rev-full-ctxlm-s2", "commit": "abc123", "metrics": ctxlm_figures},
                    "full-lstm-s1": {"model": "lstm", "seed": 1, "rev": "rev-full-lstm-s1", "commit": "abc123", "metrics": lstm_figures},
                    "full-lstm-s2": {"model": "lstm", "seed": 2, "rev": "rev-full-lstm-s2", "commit": "older", "metrics": lstm_figures}}


def test_experiment_baselines_finds_experiments_of_any_commit_of_the_history(tmp_path, monkeypatch):
    """DVC keeps an experiment as refs/exps/<sha[:2]>/<sha[2:]>/<name>; its commit is found however far
    back it is, newest first, and a commit outside HEAD's history (another branch) is left out."""
    import ctxlm.results.report as report

    monkeypatch.chdir(tmp_path)
    sh(tmp_path, "git", "init", "-q", "-b", "main")
    commits = []
    for i in range(15):
        sh(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", f"c{i}")
        commits.append(sh(tmp_path, "git", "rev-parse", "HEAD").stdout.strip())
    sh(tmp_path, "git", "checkout", "-q", "-b", "side", commits[5])
    sh(tmp_path, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "side")
    side = sh(tmp_path, "git", "rev-parse", "HEAD").stdout.strip()
    sh(tmp_path, "git", "checkout", "-q", "main")
    for commit, name in ((commits[1], "seed-base-s0"), (commits[1], "seed-base-s1"), (commits[12], "full-ctxlm-s1"), (side, "x")):
        sh(tmp_path, "git", "update-ref", f"refs/exps/{commit[:2]}/{commit[2:]}/{name}", commit)
    sh(tmp_path, "git", "update-ref", "refs/exps/exec/EXEC_BASELINE", commits[3])  # DVC's own refs are not experiments
    assert report.experiment_baselines() == [commits[12], commits[1]]


def test_the_rank_by_layer_plot_puts_each_layer_s_mean_over_seeds_at_its_layer(tmp_path, monkeypatch):
    """3 layers, 2 seeds: the point at x = l is the mean over the seeds of layer l's effective rank / d_c."""
    from ctxlm.results import report

    plotted = {}
    monkeypatch.setattr(report, "_save_single", lambda fig, ax, *args: plotted.update(
        {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}))
    runs = {0: {"context_dim": 10, "rank_by_layer": {"layer_1": 2.0, "layer_2": 4.0, "layer_3": 9.0}},
            1: {"context_dim": 10, "rank_by_layer": {"layer_1": 4.0, "layer_2": 5.0, "layer_3": 7.0}}}
    report.plot_rank_by_layer({"layers-3": runs}, tmp_path / "ranks.png")
    [(xs, ys)] = plotted.values()
    assert xs == [1, 2, 3]
    assert ys == pytest.approx([0.3, 0.45, 0.8])


def test_the_rank_by_layer_plot_orders_layers_by_number_not_as_text(tmp_path, monkeypatch):
    """12 layers stored with sorted keys (layer_1, layer_10, layer_11, layer_12, layer_2, ...): layer l
    whose rank is l is still plotted at x = l."""
    from ctxlm.results import report

    plotted = {}
    monkeypatch.setattr(report, "_save_single", lambda fig, ax, *args: plotted.update(
        {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}))
    ranks = {f"layer_{l}": float(l) for l in sorted(range(1, 13), key=str)}
    report.plot_rank_by_layer({"layers-12": {0: {"context_dim": 1, "rank_by_layer": ranks}}}, tmp_path / "ranks.png")
    [(xs, ys)] = plotted.values()
    assert xs == list(range(1, 13)) and ys == [float(l) for l in range(1, 13)]


def test_the_sampling_change_puts_each_scaling_run_beside_its_run_before(tmp_path, monkeypatch):
    from ctxlm.results.report import sampling_change_section

    monkeypatch.chdir(tmp_path)  # no metrics files: the full-size table is empty
    before = {"commit": "abc", "sampling": "first documents", "metrics": {}, "superseded_runs": [],
              "scaling": {"scale-ctxlm-n1000": {"model": "ctxlm", "train_tokens": 1000, "test_ppl": 900.04},
                          "scale-lstm-n2000": {"model": "lstm", "train_tokens": 2000, "test_ppl": 1234.5},
                          "scale-lstm-n4000": {"model": "lstm", "train_tokens": 4000, "test_ppl": 300.0}}}  # not rerun: left out
    now = {"scale-ctxlm-n1000": {"metrics": {"test_ppl": 450.26}}, "scale-lstm-n2000": {"metrics": {"test_ppl": 1300.71}}}
    lines = sampling_change_section(before, now)
    table = lines[lines.index("| training tokens | ctxlm, frozen embedding | LSTM, frozen embedding |"):]
    assert table[2:4] == ["| 1,000 | 900.0 → 450.3 | – |", "| 2,000 | – | 1,234.5 → 1,300.7 |"] and table[4] == ""
