"""The seed's five comparisons (docs/design.md, "The research notes' figures") as named DVC experiments, each
setting run with several seeds.

Each comparison sets two experiments side by side; experiments shared by two comparisons run once
per seed. They run at a reduced size (SIZE), chosen so that the whole set (7 settings x 3 seeds)
takes about 90 minutes on a 2-core AVX2 CPU (phase 2 in fp32), and only up to `evaluate` (the baselines are compared at
full size, in the main workspace).

ctxlm and the LSTM (the strongest baseline) also run at full size with more seeds, as experiments
`full-<model>-s<seed>` beside the workspace's committed run, for the baseline table's intervals.
"""

from __future__ import annotations

import re
import shlex
import subprocess
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


def experiment_name(setting: str, seed: int) -> str:
    """The DVC experiment name of a setting (a key of EXPERIMENTS) run with `seed`."""
    return f"{PREFIX}{setting}-s{seed}"


def _parse_name(name: str | None, prefix: str, known) -> tuple[str, int] | None:
    """'<prefix><what>-s<seed>' -> (what, seed) when `what` is in `known`, else None."""
    match = re.fullmatch(rf"{re.escape(prefix)}(.+)-s(\d+)", name or "")
    return (match[1], int(match[2])) if match and match[1] in known else None


def parse_experiment_name(name: str) -> tuple[str, int] | None:
    """experiment_name's inverse: (setting, seed), or None for a name that is not one of ours."""
    return _parse_name(name, PREFIX, EXPERIMENTS)


# `dvc exp run --temp` runs one experiment in a temporary copy of the repository and returns when it is
# done, leaving the workspace as it was. DVC's queue (`--queue`, then `--run-all`) would do the same
# in the background, but its worker can die after a run or two and leave the queue hanging
# (treeverse/dvc#10398, #10428: a JSONDecodeError in the worker; met here with DVC 3.67 under load).
EXP_RUN = ["dvc", "exp", "run", "--temp"]


def experiment_commands(size: dict[str, str] = SIZE, seeds: int = SEEDS) -> list[list[str]]:
    """The `dvc exp run --temp` command of each setting and seed, run one after the other."""
    commands = []
    for seed in range(seeds):
        for name, switches in EXPERIMENTS.items():
            command = [*EXP_RUN, "-n", experiment_name(name, seed)]
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


def run_commands(commands: list[list[str]], dry_run: bool, prefix: str) -> None:
    """Print and run each command; the first that fails is one clear error."""
    for command in commands:
        print("$ " + shlex.join(command), flush=True)
        if not dry_run and (code := subprocess.run(command).returncode):
            raise CtxlmError(f"`{shlex.join(command)}` failed (exit status {code}; DVC's message is above). "
                             f"An experiment of the same name on this commit? Remove the old ones: dvc exp remove {prefix}...")


def run_seed_experiments(size_overrides: list[str], seeds: int = SEEDS, dry_run: bool = False) -> None:
    """Run every setting with seeds 0 .. seeds-1 as named experiments (one at a time: parallel runs
    would share 2 cores).

    `size_overrides` ("key=value") replace or extend SIZE, e.g. for a smaller trial."""
    if seeds < 2:
        raise CtxlmError(f"--seeds {seeds}: at least 2 seeds are needed for an interval")
    size = dict(SIZE)
    for override in size_overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise CtxlmError(f"-S {override!r}: expected key=value, e.g. -S data.max_train_tokens=20000")
        size[key] = value
    run_commands(experiment_commands(size, seeds), dry_run, PREFIX)
