"""`ctxlm scaling`: its DVC experiments, its checks before any run, the collected runs and the
report's section (fits, crossings) from points whose curves are known."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, TINY, sh
from ctxlm.errors import CtxlmError
from ctxlm.results.experiments import SCALING_MODELS, parse_scaling_name, run_scaling, scaling_commands, scaling_name


def test_scaling_commands_set_each_size_and_model_smallest_first():
    commands = scaling_commands(["ctxlm", "lstm"], [400, 100, 200, 300], {"seed": "1"})
    names = [c[c.index("-n") + 1] for c in commands]
    assert names == [scaling_name(m, n) for n in (100, 200, 300, 400) for m in ("ctxlm", "lstm")]
    for command, name in zip(commands, names):
        model, tokens = parse_scaling_name(name)
        assert command[:4] == ["dvc", "exp", "run", "--temp"] and command[-1] == SCALING_MODELS[model].target
        assert f"data.max_train_tokens={tokens}" in command and "seed=1" in command
    assert "model.freeze_embedding=false" in scaling_commands(["ctxlm-trained-e"], [1, 2, 3, 4], {})[0]
    assert parse_scaling_name("scale-ctxlm-trained-e-n25000") == ("ctxlm-trained-e", 25000)
    assert parse_scaling_name("scale-gpt-n25000") is None and parse_scaling_name("seed-base-s0") is None


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git repository with the project's params.yaml (the offline Shakespeare corpus), as cwd."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    sh(tmp_path, "git", "init", "-q", "-b", "main")
    sh(tmp_path, "git", "add", "-A")
    sh(tmp_path, "git", "commit", "-q", "-m", "params", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_sizes_larger_than_the_training_split_stop_before_any_run(project, capsys):
    with pytest.raises(CtxlmError) as err:
        run_scaling(["ctxlm"], [1000, 2000, 4000, 50_000_000], [], dry_run=True)
    assert str(err.value).startswith("--sizes: 50,000,000 training tokens asked, but the training split of data.source 'shakespeare' holds ")
    assert "$ dvc" not in capsys.readouterr().out
    with pytest.raises(CtxlmError, match="at least 4 distinct training sizes"):
        run_scaling(["ctxlm"], [1000, 1000, 2000, 3000], [], dry_run=True)
    with pytest.raises(CtxlmError, match="--model gpt: one of ctxlm, ctxlm-trained-e, kneser-ney, lstm"):
        run_scaling(["gpt"], [1000, 2000, 3000, 4000], [], dry_run=True)
    with pytest.raises(CtxlmError, match=r"params.yaml with -S data.max_val_tokens=20000 -S model.context_blocks=0: model.context_blocks: Input should be greater"):
        run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], ["model.context_blocks=0"], dry_run=True)


def test_all_is_the_whole_training_split(project, capsys):
    """The default corpus's training split holds 1,024,619 MiniLM tokens (counted by tokenize on a
    run with data.max_train_tokens above it): `all` runs that size, as any other."""
    run_scaling(["kneser-ney"], [1000, 2000, 3000, "all"], [], dry_run=True)
    printed = capsys.readouterr().out
    assert "all = the whole training split, 1,024,619 tokens" in printed
    assert f"-n {scaling_name('kneser-ney', 1_024_619)} " in printed and "-S data.max_train_tokens=1024619 " in printed


def test_runs_finished_with_the_same_params_are_skipped(project, capsys):
    """A finished run is a git ref refs/exps/<baseline sha split 2/38>/<name> to a commit with its params.yaml (as DVC keeps it)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    workspace = yaml.safe_load((project / "params.yaml").read_text())

    def finished(name: str, **data) -> None:
        params = {**workspace, "data": {**workspace["data"], **data}, "model": {**workspace["model"], "freeze_embedding": True}}
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        sh(project, "git", "commit", "-q", "-am", name)
        sh(project, "git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{name}", "HEAD")
        sh(project, "git", "reset", "-q", "--hard", head)

    finished(scaling_name("ctxlm", 2000), max_train_tokens=2000, max_val_tokens=20000)  # as `ctxlm scaling` sets them
    finished(scaling_name("ctxlm", 3000), max_train_tokens=3000, max_val_tokens=100000)  # another validation split
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    printed = capsys.readouterr().out
    assert "1 of 4 runs already finished with these params" in printed
    assert scaling_name("ctxlm", 2000) not in printed and scaling_name("ctxlm", 3000) in printed


def test_a_run_of_older_pipeline_code_is_not_finished_work_and_collected_runs_resume_a_set(project, capsys):
    """A finished run (a ref, as DVC keeps it) whose baseline commit ran other code of a stage listed
    in dvc.yaml is run again, unless every such commit is listed as changing no figure; one recorded
    in the committed docs/results/scaling.json with the same params and the present code is skipped,
    refs or not (a fresh clone has none)."""
    from ctxlm.results.experiments import RESULTS_PRESERVING, SCALING_RESULTS, params_with, scaling_switches

    (project / "stages").mkdir()
    (project / "stages/prepare.py").write_text("# version 1\n")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "python -m stages.prepare",
                                                                             "deps": ["stages/prepare.py", "data/raw"]}}}))
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-q", "-m", "a pipeline", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    first = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    switches = {"data.max_val_tokens": "20000"}
    expected = {n: params_with(scaling_switches("ctxlm", n, switches)).model_dump() for n in (1000, 2000)}
    SCALING_RESULTS.parent.mkdir(parents=True)
    SCALING_RESULTS.write_text(json.dumps({scaling_name("ctxlm", n): {"commit": first, "params": expected[n]} for n in (1000, 2000)}))
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "2 of 4 runs already finished" in capsys.readouterr().out  # from the collected runs alone

    (project / "stages/prepare.py").write_text("# version 1, faster\n")
    sh(project, "git", "commit", "-q", "-am", "same figures", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "0 of 4 runs already finished" in capsys.readouterr().out
    faster = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    RESULTS_PRESERVING.write_text(f"# commits that changed no figure\n{faster[:12]} rerun: the same test PPL to every digit\n")
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "2 of 4 runs already finished" in capsys.readouterr().out  # listed as changing no figure

    (project / "stages/prepare.py").write_text("# version 2: another sampling\n")
    sh(project, "git", "commit", "-q", "-am", "new code", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "0 of 4 runs already finished" in capsys.readouterr().out  # one unlisted commit is enough
    (project / "notes.md").write_text("not pipeline code")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-q", "-m", "notes", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
    second = subprocess.run(["git", "rev-parse", "HEAD~1"], capture_output=True, text=True, check=True).stdout.strip()
    SCALING_RESULTS.write_text(json.dumps({scaling_name("ctxlm", 1000): {"commit": second, "params": expected[1000]}}))
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "1 of 4 runs already finished" in capsys.readouterr().out  # a change outside the pipelines' code keeps it



def test_a_change_made_before_a_module_moved_still_makes_its_runs_stale(project, capsys):
    """The code a run depends on is what the pipeline lists now and what it listed at the run's
    commit: a change to a stage's program before it was renamed counts, though the rename itself is
    listed as changing no figure."""
    from ctxlm.results.experiments import RESULTS_PRESERVING, SCALING_RESULTS, params_with, scaling_switches

    def commit(message: str) -> str:
        sh(project, "git", "add", "-A")
        sh(project, "git", "commit", "-q", "-m", message, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t")
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()

    def pipeline(program: str) -> None:
        (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": f"python -m stages.{program}",
                                                                                 "deps": [f"stages/{program}.py", "data/raw"]}}}))

    (project / "stages").mkdir()
    (project / "stages/prepare.py").write_text("# version 1\n")
    pipeline("prepare")
    first = commit("a pipeline")
    expected = params_with(scaling_switches("ctxlm", 1000, {"data.max_val_tokens": "20000"})).model_dump()
    SCALING_RESULTS.parent.mkdir(parents=True)
    SCALING_RESULTS.write_text(json.dumps({scaling_name("ctxlm", 1000): {"commit": first, "params": expected}}))
    (project / "stages/prepare.py").write_text("# version 2: another sampling\n")
    changed = commit("new code")
    sh(project, "git", "mv", "stages/prepare.py", "stages/sample.py")
    pipeline("sample")
    moved = commit("a rename")
    RESULTS_PRESERVING.write_text(f"{moved[:12]} a rename only\n")
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "0 of 4 runs already finished" in capsys.readouterr().out  # the change to stages/prepare.py counts
    RESULTS_PRESERVING.write_text(f"{moved[:12]} a rename only\n{changed[:12]} rerun: the same figures\n")
    run_scaling(["ctxlm"], [1000, 2000, 3000, 4000], [], dry_run=True)
    assert "1 of 4 runs already finished" in capsys.readouterr().out

def known_runs(curves: dict[str, tuple[float, float, float]], sizes) -> dict[str, dict]:
    """Collected runs whose test PPL lies exactly on E + A n^-alpha for each model."""
    return {scaling_name(model, n): {"model": model, "size": n, "train_tokens": n, "commit": "c" * 40, "rev": "r", "seconds": 10.0,
                                     "metrics": {"test_ppl": E + A * n**-alpha}}
            for model, (E, A, alpha) in curves.items() for n in sizes}


def test_the_report_section_fits_each_model_and_finds_where_the_curves_cross(tmp_path):
    from ctxlm.results.report import scaling_section

    sizes = [25_000, 50_000, 100_000, 250_000, 500_000]
    # same alpha: E1 + A1 n^-a = E2 + A2 n^-a at n = ((A1 - A2) / (E2 - E1))^(1/a) = (80000 / 50)^2 = 2.56M
    runs = known_runs({"ctxlm": (100.0, 1e5, 0.5), "kneser-ney": (150.0, 2e4, 0.5), "lstm": (50.0, 2e4, 0.5)}, sizes)
    lines = scaling_section(runs, tmp_path / "scaling.png")
    text = "\n".join(lines)
    assert "| 25,000 | 732.5 | 276.5 | 176.5 |" in text  # 100 + 1e5/158.1, 150 + 2e4/158.1, 50 + 2e4/158.1
    ctxlm = next(line for line in lines if line.startswith("| ctxlm, frozen embedding | 5 |"))
    assert "| 100.0 [" in ctxlm and "| 0.500 [" in ctxlm and "| 1.0000 | 50 |" in ctxlm  # E, alpha, R², 5 x 10 s
    assert ("Kneser-Ney trigram: at 500k tokens the fit of ctxlm, frozen embedding is above (241.4 vs 178.3); they cross at 2.56M tokens "
            "(an extrapolation, 2.4 doublings beyond the largest size measured).") in text  # log2(2.56M / 500k) = 2.36
    assert "LSTM, frozen embedding: at 500k tokens the fit of ctxlm, frozen embedding is above (241.4 vs 78.3); no crossing" in text
    assert (tmp_path / "scaling.png").stat().st_size > 0



def test_a_fit_held_at_a_bound_has_no_interval_there_and_its_crossings_say_so(tmp_path):
    from ctxlm.results.report import scaling_section

    sizes = [25_000, 50_000, 100_000, 250_000, 500_000]
    runs = known_runs({"ctxlm": (100.0, 1e5, 0.5), "kneser-ney": (-50.0, 1e5, 0.5)}, sizes)  # the best E >= 0 is 0
    lines = scaling_section(runs, tmp_path / "scaling.png")
    kneser_ney = next(line for line in lines if line.startswith("| Kneser-Ney trigram | 5 |"))
    assert "| 0.0 (at its bound: no interval) |" in kneser_ney and kneser_ney.count("[") == 2  # A and alpha keep theirs
    ctxlm = next(line for line in lines if line.startswith("| ctxlm, frozen embedding | 5 |"))
    assert "bound" not in ctxlm and ctxlm.count("[") == 3
    crossing = next(line for line in lines if line.startswith("- ctxlm, frozen embedding vs Kneser-Ney trigram"))
    assert crossing.endswith("(from a fit with Kneser-Ney trigram's E held at a bound).")

def test_the_report_gives_train_ppl_beside_test_ppl_and_checks_each_fit_on_its_largest_size(tmp_path):
    """ctxlm's largest size 20% under its curve: its check says not predictive, 25% over; the
    LSTM's on its curve (with scatter) is predictive. A crossing inside the measured sizes is no
    extrapolation."""
    from ctxlm.results.report import scaling_section

    sizes = [3_125, 6_250, 12_500, 25_000, 50_000, 100_000]
    runs = known_runs({"ctxlm": (100.0, 1e5, 0.5), "lstm": (200.0, 1e4, 0.5)}, sizes)
    runs[scaling_name("ctxlm", 100_000)]["metrics"]["test_ppl"] *= 0.8
    for n, wobble in zip(sizes, [1.0, -1.5, 0.5, 2.0, -1.0, 0.5]):
        runs[scaling_name("lstm", n)]["metrics"]["test_ppl"] += wobble
    runs[scaling_name("ctxlm", 3_125)]["metrics"]["train_ppl"] = 1234.5
    lines = scaling_section(runs, tmp_path / "scaling.png")
    assert "| 3,125 | 1,888.9 (1,234.5) | 379.9 |" in lines  # 100 + 1e5/55.9; 200 + 1e4/55.9 + 1.0; the LSTM's train PPL not given
    ctxlm = next(line for line in lines if line.startswith("| ctxlm, frozen embedding | 100,000 |"))
    assert ctxlm.endswith("| 416.2 [416.2, 416.2] | 333.0 | +25.0% | *not predictive* |")  # 100 + 1e5/316.2; measured x 0.8
    lstm = next(line for line in lines if line.startswith("| LSTM, frozen embedding | 100,000 |"))
    assert lstm.endswith("| predictive |")


def test_a_model_with_too_few_points_is_reported_without_a_fit(tmp_path):
    from ctxlm.results.report import scaling_section

    runs = known_runs({"ctxlm": (100.0, 1e5, 0.5)}, [25_000, 50_000, 100_000])
    text = "\n".join(scaling_section(runs, tmp_path / "scaling.png"))
    assert "a power-law fit needs at least 4 distinct training sizes" in text


@pytest.mark.slow
def test_scaling_runs_collects_and_reports_on_tiny_sizes(repo: Path):
    sh(repo, "dvc", "repro", "evaluate")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "tiny run")
    sizes = [500, 1000, 2000, 3000]
    args = ["-m", "ctxlm", "scaling", "--sizes", ",".join(map(str, sizes)), "--model", "ctxlm", "--model", "kneser-ney",
            "-S", f"data.max_val_tokens={TINY['data']['max_val_tokens']}"]  # the tiny size's, not the default set's 20,000
    sh(repo, sys.executable, *args)
    again = sh(repo, sys.executable, *args)
    assert "8 of 8 runs already finished" in again.stdout
    sh(repo, sys.executable, "-m", "ctxlm", "collect")
    collected = json.loads((repo / "docs/results/scaling.json").read_text())
    assert set(collected) == {scaling_name(m, n) for m in ("ctxlm", "kneser-ney") for n in sizes}
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    runs = {rev["name"]: rev["data"]["metrics"] for e in shown[1]["experiments"] for rev in e["revs"]}
    for model in ("ctxlm", "kneser-ney"):
        for n in sizes:
            name = scaling_name(model, n)
            run = collected[name]
            assert run["train_tokens"] == runs[name]["metrics/tokenize.json"]["data"]["train_tokens"] <= n
            assert run["metrics"]["test_ppl"] == runs[name][SCALING_MODELS[model].metrics]["data"]["test_ppl"]
    tokens = [collected[scaling_name("kneser-ney", n)]["train_tokens"] for n in sizes]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4  # each size its own training set
    from ctxlm.results.report import scaling_section

    section = "\n".join(scaling_section(collected, repo / "scaling.png"))
    for n, tokens_n in zip(sizes, tokens):  # the report's table holds each run's test PPL, then its train PPL
        ctxlm, kneser_ney = (collected[scaling_name(model, n)]["metrics"] for model in ("ctxlm", "kneser-ney"))
        assert (f"| {tokens_n:,} | {ctxlm['test_ppl']:,.1f} ({ctxlm['train_ppl']:,.1f}) | "
                f"{kneser_ney['test_ppl']:,.1f} ({kneser_ney['train_ppl']:,.1f}) |") in section


def test_each_scaling_run_keeps_its_checkpoints_outside_its_temporary_copy(tmp_path, capfd):
    """run_commands gives each experiment CTXLM_CHECKPOINTS=<checkpoints>/<its name>, and the stages'
    Checkpoint saves there: a run cut short finds them again when `ctxlm scaling` reruns it."""
    from ctxlm.results.experiments import run_commands

    show = "import ctxlm.training.checkpoint as c, os; print(c.Checkpoint('train_context', {}).folder)"
    run_commands([[sys.executable, "-c", show, "-n", scaling_name("lstm", 800)]], False, "scale-", checkpoints=tmp_path / "runs")
    assert capfd.readouterr().out.splitlines()[1] == str(tmp_path / "runs" / scaling_name("lstm", 800) / "train_context")
