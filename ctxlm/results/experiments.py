"""The seed's five comparisons (docs/design.md, "The research notes' figures") as named DVC experiments, each
setting run with several seeds.

Each comparison sets two experiments side by side; experiments shared by two comparisons run once
per seed. They run at a reduced size (SIZE), chosen so that the whole set (7 settings x 3 seeds)
takes about 90 minutes on a 2-core AVX2 CPU (phase 2 in fp32), and only up to `evaluate` (the baselines are compared at
full size, in the main workspace).

The research's later findings (docs/design.md, "Where the research went next") are a second family
of the same kind: several ContextBlocks, previous contexts, and the untrained control, each against
the same base, as experiments `next-<setting>-s<seed>`.

ctxlm and the LSTM (the strongest baseline) also run at full size with more seeds, as experiments
`full-<model>-s<seed>` beside the workspace's committed run, for the baseline table's intervals.

The scaling curves (`ctxlm scaling`) run ctxlm (frozen and trained embedding), the Kneser-Ney
trigram and the LSTM at several training sizes, as experiments `scale-<model>-n<tokens>`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ctxlm.errors import CtxlmError

PREFIX = "seed-"
RESULTS = Path("docs/results/experiments.json")  # the seed experiments, collected (ctxlm collect)
FULL_SIZE_RESULTS = Path("docs/results/full_size.json")  # the full-size seed runs, collected
SEEDS = 3
FULL_PREFIX = "full-"  # full-size runs with other seeds: full-<model>-s<seed>
FULL_SIZE_TARGETS = {"ctxlm": "evaluate", "lstm": "baselines/dvc.yaml:baseline_neural@lstm"}  # the DVC target each runs
SIZE = {
    "data.max_train_tokens": "20000",
    "data.max_val_tokens": "10000",
    "data.max_test_tokens": "10000",
    "phase1.max_iterations": "20",
    "phase2.epochs": "6",
}
EXPERIMENTS = {  # name (without PREFIX) -> the switches it sets beyond SIZE
    "base": {},
    "trained-embedding": {"model.freeze_embedding": "false"},
    "untied": {"model.weight_tying": "false"},
    "no-noise": {"phase1.context_noise": "0"},
    "layers-3": {"model.num_layers": "3"},
    "layers-6": {"model.num_layers": "6"},
    "layers-3-first-input": {"model.num_layers": "3", "model.token_input_all_layers": "false"},
}


@dataclass(frozen=True)
class Metric:
    key: str  # a key of report.experiment_metrics
    label: str
    higher_is_better: bool
    unit: str = ""  # "%" (a fraction shown in per cent), "x" (a factor), "M" (millions), "s"


@dataclass(frozen=True)
class Setting:
    label: str
    experiment: str  # a key of EXPERIMENTS
    seed: tuple[float | None, ...]  # the seed's figures for the comparison's metrics (docs/design.md); None: not reported


@dataclass(frozen=True)
class Comparison:
    title: str
    metrics: tuple[Metric, ...]
    a: Setting
    b: Setting
    note: str = ""


PPL = Metric("test_ppl", "test PPL", higher_is_better=False)
VAL_PPL = Metric("val_ppl", "val PPL", higher_is_better=False)
ACC = Metric("test_acc", "test acc", higher_is_better=True, unit="%")
ER = Metric("effective_rank_ratio", "val ER", higher_is_better=True, unit="%")

COMPARISONS = (
    Comparison("Embedding: trained or frozen", (PPL, ACC),
               Setting("trained", "trained-embedding", (1189, 0.116)), Setting("frozen", "base", (334, 0.189))),
    Comparison("Weight tying", (Metric("params_total", "total params", False, "M"), PPL),
               Setting("off", "untied", (91.43e6, None)), Setting("on", "base", (52.78e6, None)),
               note="The seed counted parameters with GPT-2's dimensions (V 50,257, d_e 768); ours are MiniLM's (V 30,522, d_e 384)."),
    Comparison("ContextBlock layers", (ER, Metric("test_ppl", "best PPL (test)", False), Metric("phase1_seconds", "phase-1 time", False, "s")),
               Setting("3", "layers-3", (0.695, 775, 46.5)), Setting("6", "layers-6", (0.614, 996, 79.4))),
    Comparison("Context noise in phase 1", (Metric("epochs_improving", "epochs improving (new best val PPL)", True),
                                            Metric("val_train_ppl_gap", "val/train PPL", False, "x"), ACC),
               Setting("0", "no-noise", (1, 101, 0.174)), Setting("0.1", "base", (6, 8.3, 0.208))),
    Comparison("Token input at every ContextBlock layer (3 layers)", (ER, PPL, ACC),
               Setting("yes", "layers-3", (0.763, 334, 0.189)), Setting("no (first layer only)", "layers-3-first-input", (0.086, 536, 0.154))),
)


NEXT_EXPERIMENTS = {  # the research's later findings: each against the same base
    "base": {},
    "blocks-2": {"model.context_blocks": "2", "model.context_dim": "256"},  # the base's total width, 512
    "prev-2": {"model.prev_contexts": "2"},
    "untrained": {"phase1.max_iterations": "0"},
}
NEXT_COMPARISONS = (
    Comparison("Two ContextBlocks at equal total width", (VAL_PPL, PPL),
               Setting("1 block of 512", "base", (134.0, None)), Setting("2 blocks of 256", "blocks-2", (111.9, None)),
               note="The research's widths were 1 x 1000 and 2 x 500 (GPT-2 embeddings, UltraChat, one seed, a 22,723-token validation set)."),
    Comparison("The TokenBlock reads two previous contexts", (VAL_PPL, PPL),
               Setting("p = 0", "base", (127.4, None)), Setting("p = 2", "prev-2", (114.7, None)),
               note="The research's figures are at 1,600 training samples (its notes give one previous context 118.2)."),
    Comparison("What phase 1 adds: untrained or trained ContextBlock", (VAL_PPL, PPL, ER),
               Setting("untrained (phase1.max_iterations 0)", "untrained", (None, None, None)), Setting("trained", "base", (None, None, None)),
               note="The research did not run this control; the untrained block is the seeded random initialisation, frozen."),
)


@dataclass(frozen=True)
class Family:
    """Settings run with several seeds at SIZE, each compared with another; collected from one commit."""
    prefix: str  # experiment names: <prefix><setting>-s<seed>
    experiments: dict[str, dict[str, str]]  # setting -> the switches it sets beyond SIZE
    comparisons: tuple[Comparison, ...]
    results: Path  # where `ctxlm collect` writes the runs
    command: str  # the ctxlm command that runs them
    quoted: str  # whose figures the comparisons quote


SEED_FAMILY = Family(PREFIX, EXPERIMENTS, COMPARISONS, RESULTS, "seed-experiments", "seed")
NEXT_FAMILY = Family("next-", NEXT_EXPERIMENTS, NEXT_COMPARISONS, Path("docs/results/next_experiments.json"), "next-experiments", "research")


def experiment_name(setting: str, seed: int, family: Family = SEED_FAMILY) -> str:
    """The DVC experiment name of a setting (a key of the family's experiments) run with `seed`."""
    return f"{family.prefix}{setting}-s{seed}"


def _parse_name(name: str | None, prefix: str, known) -> tuple[str, int] | None:
    """'<prefix><what>-s<seed>' -> (what, seed) when `what` is in `known`, else None."""
    match = re.fullmatch(rf"{re.escape(prefix)}(.+)-s(\d+)", name or "")
    return (match[1], int(match[2])) if match and match[1] in known else None


def parse_experiment_name(name: str, family: Family = SEED_FAMILY) -> tuple[str, int] | None:
    """experiment_name's inverse: (setting, seed), or None for a name that is not one of the family's."""
    return _parse_name(name, family.prefix, family.experiments)


# `dvc exp run --temp` runs one experiment in a temporary copy of the repository and returns when it is
# done, leaving the workspace as it was. DVC's queue (`--queue`, then `--run-all`) would do the same
# in the background, but its worker can die after a run or two and leave the queue hanging
# (treeverse/dvc#10398, #10428: a JSONDecodeError in the worker; met here with DVC 3.67 under load).
EXP_RUN = ["dvc", "exp", "run", "--temp"]


def experiment_commands(size: dict[str, str] = SIZE, seeds: int = SEEDS, family: Family = SEED_FAMILY) -> list[list[str]]:
    """The `dvc exp run --temp` command of each setting and seed, run one after the other."""
    commands = []
    for seed in range(seeds):
        for name, switches in family.experiments.items():
            command = [*EXP_RUN, "-n", experiment_name(name, seed, family)]
            for key, value in {**size, "seed": str(seed), **switches}.items():
                command += ["-S", f"{key}={value}"]
            commands.append([*command, "evaluate"])
    return commands


def full_size_name(model: str, seed: int) -> str:
    """The DVC experiment name of a full-size run of `model` (a key of FULL_SIZE_TARGETS) with `seed`."""
    return f"{FULL_PREFIX}{model}-s{seed}"


def parse_full_size_name(name: str) -> tuple[str, int] | None:
    """full_size_name's inverse: (model, seed), or None."""
    return _parse_name(name, FULL_PREFIX, FULL_SIZE_TARGETS)


def full_size_commands(models: list[str], seeds: int, workspace_seed: int) -> list[list[str]]:
    """`dvc exp run --temp` for each model and each seed 0 .. seeds-1 but the workspace's own (its
    committed run is that seed)."""
    unknown = [m for m in models if m not in FULL_SIZE_TARGETS]
    if unknown or not models:
        raise CtxlmError(f"--model {', '.join(unknown) or '(none)'}: one of {', '.join(FULL_SIZE_TARGETS)}")
    return [[*EXP_RUN, "-n", full_size_name(model, seed), "-S", f"seed={seed}", FULL_SIZE_TARGETS[model]]
            for model in models for seed in range(seeds) if seed != workspace_seed]


def run_commands(commands: list[list[str]], dry_run: bool, prefix: str, checkpoints: Path | None = None) -> None:
    """Print and run each command, then its wall time (the figure a set's duration is measured by);
    the first that fails is one clear error. With `checkpoints`, each experiment keeps its stages'
    checkpoints in checkpoints/<its name> (CTXLM_CHECKPOINTS), so that one cut short resumes there."""
    for i, command in enumerate(commands, 1):
        env = dict(os.environ)
        if checkpoints:
            env["CTXLM_CHECKPOINTS"] = str((checkpoints / command[command.index("-n") + 1]).resolve())
        print("$ " + shlex.join(command), flush=True)
        if dry_run:
            continue
        start = time.perf_counter()
        if code := subprocess.run(command, env=env).returncode:
            raise CtxlmError(f"`{shlex.join(command)}` failed (exit status {code}; DVC's message is above). "
                             f"An experiment of the same name on this commit? Remove the old ones: dvc exp remove {prefix}...")
        print(f"ctxlm: run {i} of {len(commands)} took {time.perf_counter() - start:,.0f} s", flush=True)


def run_seed_experiments(size_overrides: list[str], seeds: int = SEEDS, dry_run: bool = False, family: Family = SEED_FAMILY) -> None:
    """Run every setting with seeds 0 .. seeds-1 as named experiments (one at a time: parallel runs
    would share 2 cores).

    `size_overrides` ("key=value") replace or extend SIZE, e.g. for a smaller trial."""
    if seeds < 2:
        raise CtxlmError(f"--seeds {seeds}: at least 2 seeds are needed for an interval")
    size = {**SIZE, **parse_switches(size_overrides)}
    run_commands(experiment_commands(size, seeds, family), dry_run, family.prefix)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def experiment_refs() -> list[tuple[str, str]]:
    """(baseline commit, experiment name) of every finished DVC experiment of HEAD's history, newest
    commit first. DVC keeps an experiment as the git ref refs/exps/<sha[:2]>/<sha[2:]>/<name> of its
    baseline commit <sha>: the refs find experiments however many commits ago they were made."""
    parts = [ref.split("/") for ref in git("for-each-ref", "--format=%(refname)", "refs/exps").split()]
    by_commit: dict[str, list[str]] = {}
    for p in parts:
        if len(p) == 5 and len(p[2] + p[3]) == 40:
            by_commit.setdefault(p[2] + p[3], []).append(p[4])
    return [(commit, name) for commit in git("rev-list", "HEAD").split() for name in sorted(by_commit.get(commit, []))]


# ---- scaling curves ------------------------------------------------------------------------------

SCALING_PREFIX = "scale-"
SCALING_RESULTS = Path("docs/results/scaling.json")
PROBE_RESULTS = Path("docs/results/probe.json")  # ctxlm probe: what C* remembers
SCALING_CHECKPOINTS = Path("data/checkpoints/scaling")  # each run's stage checkpoints, outside its temporary copy
# A factor-2 ladder from 3,125 tokens to 800,000, then the whole training split, and a validation
# split (early stopping only; every run scores the same whole test split) cut to 20,000 tokens:
# validating 64k tokens after every epoch costs more than training at the smaller sizes. The set takes
# hours on a 2-core CPU (measured timings: docs/experiments.md): one for several sessions, or a GPU.
WHOLE_SPLIT = "all"  # a size: every token of the training split
SCALING_SIZES = (3_125, 6_250, 12_500, 25_000, 50_000, 100_000, 200_000, 400_000, 800_000, WHOLE_SPLIT)
SCALING_SWITCHES = {"data.max_val_tokens": "20000"}


@dataclass(frozen=True)
class ScalingModel:
    label: str
    switches: dict[str, str]  # beyond data.max_train_tokens
    target: str  # the DVC stage that makes its figures
    metrics: str  # the metrics file that holds them
    timed: tuple[str, ...]  # the metrics files of its pipeline's stages, whose seconds add up to its time


CTXLM_STAGES = tuple(f"metrics/{stage}.json" for stage in ("tokenize", "train_context", "generate_cstar", "train_token", "eval"))
SCALING_MODELS = {
    "ctxlm": ScalingModel("ctxlm, frozen embedding", {"model.freeze_embedding": "true"}, "evaluate", "metrics/eval.json", CTXLM_STAGES),
    "ctxlm-trained-e": ScalingModel("ctxlm, trained embedding", {"model.freeze_embedding": "false"}, "evaluate", "metrics/eval.json",
                                    CTXLM_STAGES),
    "kneser-ney": ScalingModel("Kneser-Ney trigram", {}, "baselines/dvc.yaml:baseline_ngram", "metrics/baselines/kneser_ney.json",
                               ("metrics/tokenize.json", "metrics/baselines/kneser_ney.json")),
    "lstm": ScalingModel("LSTM, frozen embedding", {"model.freeze_embedding": "true"}, "baselines/dvc.yaml:baseline_neural@lstm",
                         "metrics/baselines/lstm.json", ("metrics/tokenize.json", "metrics/baselines/lstm.json")),
}


def scaling_name(model: str, tokens: int) -> str:
    return f"{SCALING_PREFIX}{model}-n{tokens}"


def parse_scaling_name(name: str | None) -> tuple[str, int] | None:
    """scaling_name's inverse: (model, tokens), or None."""
    match = re.fullmatch(rf"{re.escape(SCALING_PREFIX)}(.+)-n(\d+)", name or "")
    return (match[1], int(match[2])) if match and match[1] in SCALING_MODELS else None


def scaling_switches(model: str, size: int, switches: dict[str, str]) -> dict[str, str]:
    """Every -S of one scaling run: the set's switches, the model's, its training size."""
    return {**switches, **SCALING_MODELS[model].switches, "data.max_train_tokens": str(size)}


def scaling_commands(models: list[str], sizes: list[int], switches: dict[str, str]) -> list[list[str]]:
    """`dvc exp run --temp` for each size (smallest first, so that an interrupted set has every model
    at its smaller sizes) and each model."""
    return [[*EXP_RUN, "-n", scaling_name(model, size),
             *(item for key, value in scaling_switches(model, size, switches).items() for item in ("-S", f"{key}={value}")),
             SCALING_MODELS[model].target]
            for size in sorted(sizes) for model in models]


def parse_switches(overrides: list[str]) -> dict[str, str]:
    """["key=value", ...] -> {key: value}; one clear error for an item without '='."""
    switches = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise CtxlmError(f"-S {override!r}: expected key=value, e.g. -S data.max_train_tokens=20000")
        switches[key] = value
    return switches


def params_with(switches: dict[str, str], path: Path = Path("params.yaml")):
    """params.yaml with `switches` applied as `dvc exp run -S` applies them (values read as YAML), validated."""
    import yaml

    from ctxlm.config import load_params, parse_params

    load_params(path)  # the file itself first: its own errors name it
    raw = yaml.safe_load(path.read_text())
    for key, value in switches.items():
        *sections, last = key.split(".")
        node = raw
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = yaml.safe_load(value)
    return parse_params(raw, Path(f"{path} with -S {' -S '.join(f'{k}={v}' for k, v in switches.items())}"))


def training_tokens(params, up_to: int) -> int:
    """How many tokens the training split of `params`' corpus holds, counted up to `up_to` (the
    corpus is streamed, as `prepare` and `tokenize` stream it, and read no further than needed).
    Counted as `prepare` counts, with the `tokenizers` library alone: no transformers to import."""
    from ctxlm.data.sources import iter_documents
    from ctxlm.data.tokenizer import load_token_counter, resolve_model_dir

    count_tokens = load_token_counter(resolve_model_dir(params.embedding.model))
    counted = 0
    batch: list[str] = []
    for document in iter_documents(params.data, params.seed):
        if document["split"] == "train":
            batch.append(document["text"])
        if len(batch) == 256:
            counted += sum(count_tokens(batch))
            batch = []
            if counted >= up_to:
                return up_to
    return min(up_to, counted + sum(count_tokens(batch)))


def run_scaling(models: list[str], sizes: list[int | str], overrides: list[str], dry_run: bool = False) -> None:
    """Check the sizes against the corpus (WHOLE_SPLIT: the training split's token count), then run
    every (size, model) experiment that has not
    already finished with the same params and the pipelines' present code, in this branch's
    experiments or among the runs collected in SCALING_RESULTS (`ctxlm scaling` resumes a set that a
    session's end cut short, even from a fresh clone, and reruns a point whose params or code changed)."""
    unknown = [m for m in models if m not in SCALING_MODELS]
    if unknown or not models:
        raise CtxlmError(f"--model {', '.join(unknown) or '(none)'}: one of {', '.join(SCALING_MODELS)}")
    numbers = [size for size in sizes if size != WHOLE_SPLIT]
    if len(set(sizes)) < 4 or min(numbers, default=2) < 2:
        raise CtxlmError(f"--sizes {','.join(map(str, sizes))}: give at least 4 distinct training sizes of 2 tokens or more "
                         "(a power law has 3 parameters)")
    switches = {**SCALING_SWITCHES, **parse_switches(overrides)}
    params = params_with(switches)
    whole = WHOLE_SPLIT in sizes
    available = training_tokens(params, 10**15 if whole else max(numbers))
    if numbers and available < max(numbers):
        raise CtxlmError(f"--sizes: {max(numbers):,} training tokens asked, but the training split of data.source "
                         f"'{params.data.source}' holds {available:,} tokens ({params.embedding.model}'s tokenizer); "
                         f"the largest size must be at most {available:,}")
    sizes = sorted(set(numbers) | ({available} if whole else set()))
    if whole:
        print(f"ctxlm scaling: {WHOLE_SPLIT} = the whole training split, {available:,} tokens", flush=True)
    newest = {name: commit for commit, name in reversed(experiment_refs())}  # name -> the baseline commit of its newest run
    collected = json.loads(SCALING_RESULTS.read_text()) if SCALING_RESULTS.is_file() else {}  # committed by earlier sessions
    code = pipeline_code()
    todo = []
    for command in scaling_commands(models, sizes, switches):
        name = command[command.index("-n") + 1]
        model, size = parse_scaling_name(name)
        expected = params_with(scaling_switches(model, size, switches)).model_dump()
        in_refs = name in newest and experiment_params(newest[name], name) == expected and same_code(newest[name], code)
        run = collected.get(name, {})
        in_collected = run.get("params") == expected and same_code(run.get("commit", ""), code)
        if not (in_refs or in_collected):
            todo.append(command)
    print(f"ctxlm scaling: {len(sizes) * len(models) - len(todo)} of {len(sizes) * len(models)} runs already finished with these "
          f"params and the pipelines' present code (in this branch's experiments or {SCALING_RESULTS}); {len(todo)} to run", flush=True)
    run_commands(todo, dry_run, SCALING_PREFIX, checkpoints=SCALING_CHECKPOINTS)


PIPELINES = (Path("dvc.yaml"), Path("baselines/dvc.yaml"))


def pipeline_code(commit: str | None = None) -> list[str]:
    """The files the pipelines' stages run, in the working tree or at `commit`: both dvc.yaml files and
    every dependency they list outside data/ and metrics/."""
    return _listed_code(None) if commit is None else list(_listed_code_at(os.getcwd(), commit))


@functools.cache
def _listed_code_at(repository: str, commit: str) -> tuple[str, ...]:
    """pipeline_code at a commit, read once per repository and commit (a commit never changes): the
    stale-run check asks for the same few commits once per run."""
    return tuple(_listed_code(commit))


def _listed_code(commit: str | None) -> list[str]:
    import yaml

    paths = {path.as_posix() for path in PIPELINES}
    for pipeline in PIPELINES:
        text = pipeline_text(pipeline, commit)
        for stage in (yaml.safe_load(text)["stages"].values() if text else []):
            paths.update(dep for dep in stage.get("do", stage).get("deps", []) if not dep.startswith(("data/", "metrics/")))
    return sorted(paths)


def pipeline_text(pipeline: Path, commit: str | None) -> str | None:
    """A dvc.yaml's text in the working tree or at `commit` (None where it does not exist)."""
    if commit is None:
        return pipeline.read_text() if pipeline.is_file() else None
    shown = subprocess.run(["git", "show", f"{commit}:{pipeline.as_posix()}"], capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


# Commits that changed the pipelines' code but no figure, one a line: "<sha> <how that was checked>".
# A run made before such a commit stays finished work (same_code); list a commit only once its
# figures are shown unchanged, bit for bit, e.g. by rerunning a finished run and comparing.
RESULTS_PRESERVING = Path("docs/results/results_preserving.txt")


def results_preserving_commits() -> list[str]:
    if not RESULTS_PRESERVING.is_file():
        return []
    return [line.split()[0] for line in RESULTS_PRESERVING.read_text().splitlines() if line.strip() and not line.startswith("#")]


def same_code(commit: str, code: list[str]) -> bool:
    """Whether a run made from `commit` ran HEAD's pipelines: none of their `code` (pipeline_code())
    changed since, or every commit since that changed it is listed in RESULTS_PRESERVING (a run of
    older code, a different sampling of the corpus say, is not finished work)."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        return False
    code = sorted({*code, *pipeline_code(commit)})  # a module moved since: changes to its old path count too
    if subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", *code], capture_output=True).returncode == 0:
        return True
    changed = subprocess.run(["git", "log", "--format=%H", f"{commit}..HEAD", "--", *code], capture_output=True, text=True)
    preserving = results_preserving_commits()
    return changed.returncode == 0 and all(any(sha.startswith(listed) for listed in preserving) for sha in changed.stdout.split())


def experiment_params(commit: str, name: str) -> dict | None:
    """The validated params of the finished experiment `name` of baseline `commit` (None when unreadable)."""
    try:
        return params_at(f"refs/exps/{commit[:2]}/{commit[2:]}/{name}")
    except CtxlmError:
        return None


def params_at(rev: str) -> dict | None:
    """The validated params.yaml of git revision `rev`, as a dict; None when `rev` has none (a
    CtxlmError when it is invalid)."""
    import yaml

    from ctxlm.config import parse_params

    shown = subprocess.run(["git", "show", f"{rev}:params.yaml"], capture_output=True, text=True)
    return parse_params(yaml.safe_load(shown.stdout)).model_dump() if shown.returncode == 0 else None


@dataclass(frozen=True)
class WorkspaceFigure:
    """One of the workspace's own figures a probe's record quotes: the stage that writes it, its file
    and key, and how the report words and formats it."""
    stage: str
    file: str
    key: str
    label: str
    format: str


WORKSPACE_FIGURES = {
    "phase1_convergence_rate": WorkspaceFigure("train_context", "metrics/train_context.json", "convergence_rate", "phase 1's convergence rate", ".3f"),
    "ctxlm_test_ppl": WorkspaceFigure("evaluate", "metrics/eval.json", "test_ppl", "ctxlm's test PPL", ".1f"),
    "lstm_test_ppl": WorkspaceFigure("baselines/dvc.yaml:baseline_neural@lstm", "metrics/baselines/lstm.json", "test_ppl", "the LSTM's test PPL", ".1f"),
}


def workspace_record(params: dict) -> dict:
    """Where a stage-free command's figures (`ctxlm probe`'s) come from: the workspace's commit, the
    params that differ from that commit's params.yaml (`params`: the workspace's, validated; both
    None before a first commit), and
    the workspace's own figures, each only when `dvc status` finds its stage and every stage before
    it up to date (a metrics file committed from an older run is not this workspace's figure)."""
    import sys

    from ctxlm.config import flatten_params

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else None  # None: not in git, or no commit yet
    at_commit = params_at(commit) if commit else None
    committed = None if at_commit is None else flatten_params(at_commit)
    figures = {}
    for name, figure in WORKSPACE_FIGURES.items():
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", figure.stage], capture_output=True, text=True)
        if status.returncode == 0 and json.loads(status.stdout.strip() or "{}") == {} and Path(figure.file).is_file():
            figures[name] = json.loads(Path(figure.file).read_text()).get(figure.key)
    changed = None if committed is None else {key: value for key, value in flatten_params(params).items() if committed.get(key) != value}
    return {"commit": commit, "params_changed": changed, "figures": figures}
