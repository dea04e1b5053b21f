"""`ctxlm collect` and `ctxlm report`: docs/RESULTS.md and its plots, from committed records of real runs.

`ctxlm collect` reads the seed experiments of ctxlm.results.experiments from DVC (`dvc exp show --json`,
their curves from the experiments' git commits) into docs/results/experiments.json, which is
committed. `ctxlm report` reads only that file and the committed metrics files (ctxlm and the
baselines at full size), so it remakes the same report in any clone. Every number in the report is
read from those; only the seed's own figures are quoted (docs/design.md).
"""

from __future__ import annotations

import io
import json
import math
import statistics
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ctxlm.config import flatten_params  # noqa: E402
from ctxlm.errors import CtxlmError  # noqa: E402
from ctxlm.results.experiments import (  # noqa: E402
    COMPARISONS, EXPERIMENTS, FULL_PREFIX, FULL_SIZE_RESULTS, NEXT_FAMILY, PREFIX, PROBE_RESULTS, RESULTS, SCALING_MODELS, SCALING_PREFIX, SCALING_RESULTS,
    SEED_FAMILY, WORKSPACE_FIGURES, Comparison, Family, Metric, experiment_params, experiment_refs, git, parse_experiment_name, parse_full_size_name, parse_scaling_name,
    pipeline_code, same_code,
)
from ctxlm.results.scaling import PowerLawFit, check_fit, crossings, doublings_outside, fit_power_law  # noqa: E402
from ctxlm.training.curves import BASELINE_CURVES, CURVES, load_curve, metrics_dir, read_curve  # noqa: E402

BASELINES = {"lstm": "LSTM", "transformer": "GPT-2-style Transformer", "kneser_ney": "Kneser-Ney trigram"}
FULL_SIZE_METRICS = {"ctxlm": "metrics/eval.json", "lstm": "metrics/baselines/lstm.json"}  # each model's figures in a run
SCALING_FIGURES = ("test_ppl", "test_acc", "test_bits_per_byte", "val_ppl", "train_ppl", "epochs_run", "best_epoch", "device")
STAGE_METRICS = ("train_context", "generate_cstar", "train_token", "eval")  # ctxlm's training and scoring stages
BEFORE_SAMPLING = Path("docs/results/before_sampling.json")  # the committed figures before each split became a seeded sample (issue 26)


def superseded_runs() -> set[str]:
    """The collected full-size runs made before the sampling change: their training split was another one."""
    return set(json.loads(BEFORE_SAMPLING.read_text())["superseded_runs"]) if BEFORE_SAMPLING.is_file() else set()
# Student's t quantile t(0.975, df) for df = 1..30: a 95% interval of a mean of df + 1 values.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def experiment_curve(rev: str) -> pd.DataFrame:
    """The phase-2 curve of the experiment at git revision `rev`: DVCLive's .tsv files, or, for an
    experiment made before ctxlm logged through DVCLive, the CSV that train_token wrote then."""
    folder = metrics_dir(CURVES / "train_token").as_posix()
    listed = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{folder}"], capture_output=True, text=True)
    if listed.returncode != 0:
        return pd.read_csv(io.StringIO(git("show", f"{rev}:metrics/train_token_curve.csv")))
    files = [name for name in listed.stdout.split() if name.endswith(".tsv")]
    return read_curve({name[:-4]: git("show", f"{rev}:{folder}/{name}") for name in files}, "epoch")


def mean_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (n >= 2; the normal 1.96 beyond 31 values)."""
    n = len(values)
    if n < 2:
        raise CtxlmError(f"an interval needs at least 2 values, got {n}")
    t = T_975[n - 2] if n - 1 <= len(T_975) else 1.96
    return statistics.fmean(values), t * statistics.stdev(values) / math.sqrt(n)


def experiment_metrics(metrics: dict[str, dict], curve: pd.DataFrame) -> dict[str, float]:
    """The figures the comparisons use, from an experiment's metrics files and its phase-2 curve."""
    evaluation = metrics["metrics/eval.json"]
    best_so_far = curve["val_ppl"].cummin()
    return {
        "test_ppl": evaluation["test_ppl"],
        "test_acc": evaluation["test_acc"],
        "val_ppl": evaluation["val_ppl"],
        "effective_rank_ratio": evaluation["effective_rank_ratio"],
        "params_total": evaluation["params_total"],
        "phase1_seconds": metrics["metrics/train_context.json"]["phase1_seconds"],
        "epochs_improving": int((curve["val_ppl"] <= best_so_far).sum()),  # epochs that set a new best
        "val_train_ppl_gap": evaluation["val_ppl"] / evaluation["train_ppl"],
    }


def _switches(commit_params: dict, experiment_params: dict) -> list[str]:
    """The `-S key=value` an experiment set on top of its commit's params.yaml."""
    before, after = flatten_params(commit_params), flatten_params(experiment_params)
    return [f"{key}={json.dumps(value)}" for key, value in after.items() if before.get(key) != value]


def experiment_baselines() -> list[str]:
    """The commits of HEAD's history that have DVC experiments, newest first."""
    return list(dict.fromkeys(commit for commit, _ in experiment_refs()))


def _shown_commits() -> list[dict]:
    """`dvc exp show --json` of every commit with experiments (experiment_baselines), newest first."""
    baselines = experiment_baselines()
    if not baselines:
        return []
    revs = [item for commit in baselines for item in ("--rev", commit)]
    shown = subprocess.run(["dvc", "exp", "show", "--json", "-n", "1", *revs], check=True, capture_output=True, text=True).stdout
    by_commit = {commit["rev"]: commit for commit in json.loads(shown)}
    return [by_commit[commit] for commit in baselines if commit in by_commit]


def _newest_runs(parse, metrics_file: Callable[[str], str]) -> dict[str, dict]:
    """The finished experiments whose names `parse` reads as (what, number), from every commit of
    HEAD's history, the newest run of each name: {name: {"parsed", "rev", "commit", "metrics"
    (the data of its `metrics_file(what)`), "all_metrics" (every metrics file's)}}."""
    runs = {}
    for commit in reversed(_shown_commits()):  # oldest first: a newer run of the same name replaces it
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                parsed = parse(rev.get("name"))
                metrics = rev["data"].get("metrics") or {}
                if parsed and not rev.get("error") and "data" in metrics.get(metrics_file(parsed[0]), {}):
                    runs[rev["name"]] = {"parsed": parsed, "rev": rev["rev"], "commit": commit["rev"],
                                         "metrics": metrics[metrics_file(parsed[0])]["data"],
                                         "all_metrics": {path: entry["data"] for path, entry in metrics.items() if "data" in entry}}
    return runs


def collect_full_size(out: Path = FULL_SIZE_RESULTS) -> int:
    """Write the finished full-size seed runs (`ctxlm full-size-seeds`) of every commit of HEAD's history
    to `out`: each run's model, seed, commit and figures, the newest run of each name; returns how many.

    Unlike the seed comparisons, whose settings must come from one commit, these runs may come from
    several: a full-size run takes an hour or more, and the code may move on between them."""
    runs = {name: {"model": run["parsed"][0], "seed": run["parsed"][1], "rev": run["rev"], "commit": run["commit"], "metrics": run["metrics"]}
            for name, run in _newest_runs(parse_full_size_name, FULL_SIZE_METRICS.get).items()}
    if not runs:
        print(f"ctxlm collect: no finished {FULL_PREFIX}<model>-s<seed> experiments in this branch's history "
              "(ctxlm full-size-seeds makes them)")
        return 0
    _write_runs(out, runs)
    print(f"ctxlm collect: wrote {len(runs)} full-size runs to {out}")
    return len(runs)


def collect_scaling(out: Path = SCALING_RESULTS) -> int:
    """Write the finished scaling runs (`ctxlm scaling`) of every commit of HEAD's history to `out`,
    the newest run of each name: model, asked size, its params, the training tokens it had, its
    figures and the seconds of its pipeline's stages (a stage another run made too, restored from
    DVC's run cache, counts in both). Like the full-size runs, they may come from several commits and
    sessions (the set takes hours): the runs `out` already holds are kept while the pipelines' code is
    unchanged since theirs (a fresh clone has no experiment refs), and dropped once it changed."""
    earlier = json.loads(out.read_text()) if out.is_file() else {}
    code = pipeline_code()
    runs = {name: run for name, run in earlier.items() if same_code(run.get("commit", ""), code)}  # runs of earlier sessions, still valid
    for name, run in _newest_runs(parse_scaling_name, lambda model: SCALING_MODELS[model].metrics).items():
        tokenized = run["all_metrics"].get("metrics/tokenize.json", {})
        runs[name] = {"model": run["parsed"][0], "size": run["parsed"][1], "rev": run["rev"], "commit": run["commit"],
                      "params": experiment_params(run["commit"], name),
                      "train_tokens": tokenized.get("train_tokens", run["parsed"][1]),
                      "metrics": {key: run["metrics"][key] for key in SCALING_FIGURES if key in run["metrics"]},
                      "devices": sorted({figures["device"] for figures in run["all_metrics"].values() if "device" in figures}),
                      "seconds": round(sum(run["all_metrics"].get(path, {}).get("seconds", 0.0) for path in SCALING_MODELS[run["parsed"][0]].timed), 1)}
    if not runs:
        print(f"ctxlm collect: no finished {SCALING_PREFIX}<model>-n<tokens> experiments in this branch's history (ctxlm scaling makes them)")
        return 0
    _write_runs(out, runs)
    print(f"ctxlm collect: wrote {len(runs)} scaling runs to {out}")
    return len(runs)


def _write_runs(out: Path, runs: dict[str, dict]) -> None:
    """Collected runs as JSON that a later collect of the same runs rewrites byte for byte."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(sorted(runs.items())), indent=1, sort_keys=True) + "\n")


def collect_experiments(out: Path = RESULTS, required: bool = True, family: Family = SEED_FAMILY) -> int:
    """Write the experiments of a family (the seed's by default) of the newest commit of HEAD's history that has every setting
    with the same seeds (at least 2) to `out`; returns how many runs it holds. None found: an error,
    or (not `required`) a message and 0."""
    for commit in _shown_commits():
        runs = {}
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                parsed = parse_experiment_name(rev.get("name"), family)
                if not parsed or rev.get("error") or not rev["data"].get("metrics"):
                    continue
                curve = experiment_curve(rev["rev"])
                runs[rev["name"]] = {
                    "setting": parsed[0], "seed": parsed[1], "rev": rev["rev"], "commit": commit["rev"],
                    "switches": _switches(commit["data"]["params"]["params.yaml"]["data"], rev["data"]["params"]["params.yaml"]["data"]),
                    "context_dim": rev["data"]["params"]["params.yaml"]["data"]["model"]["context_dim"],
                    "metrics": {path: entry["data"] for path, entry in rev["data"]["metrics"].items() if "data" in entry},
                    "curve": curve.to_dict(orient="list"),
                }
        seeds = {setting: sorted(r["seed"] for r in runs.values() if r["setting"] == setting) for setting in family.experiments}
        if all(len(s) >= 2 and s == seeds["base"] for s in seeds.values()):
            _write_runs(out, runs)
            print(f"ctxlm collect: wrote {len(runs)} runs of commit {commit['rev'][:10]} ({len(seeds['base'])} seeds) to {out}")
            return len(runs)
    missing = (f"no commit of this branch's history has finished experiments {family.prefix}<setting>-s<seed> for every setting "
               f"({', '.join(family.experiments)}) with the same seeds (at least 2); run: ctxlm {family.command}")
    if required:
        raise CtxlmError(missing)
    print(f"ctxlm collect: {missing}")
    return 0


def load_results(path: Path = RESULTS) -> dict[str, dict[int, dict]]:
    """The collected runs by setting, then seed: {"metrics": experiment_metrics, "curve", "rank_by_layer", ...}."""
    if not path.is_file():
        raise CtxlmError(f"{path} not found: run `ctxlm seed-experiments`, then `ctxlm collect`")
    experiments: dict[str, dict[int, dict]] = {}
    for run in json.loads(path.read_text()).values():
        curve = pd.DataFrame(run["curve"])
        experiments.setdefault(run["setting"], {})[run["seed"]] = {
            **run, "curve": curve, "metrics": experiment_metrics(run["metrics"], curve),
            "rank_by_layer": run["metrics"]["metrics/eval.json"].get("effective_rank_by_layer", {}),
        }
    return {setting: dict(sorted(by_seed.items())) for setting, by_seed in experiments.items()}


def _format(value: float | None, metric: Metric) -> str:
    if value is None:
        return "–"
    if metric.unit == "%":
        return f"{100 * value:.1f}%"
    if metric.unit == "M":
        return f"{value / 1e6:.2f}M"
    if metric.unit == "x":
        return f"{value:.1f}×"
    if metric.unit == "s":
        return f"{value:.1f} s"
    if metric.unit == "b":  # bits per byte
        return f"{value:.3f}"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _format_interval(values: list[float], metric: Metric) -> str:
    """'mean ± half-width' of a setting's per-seed values."""
    mean, half = mean_interval(values)
    spread = _format(half, metric)
    return f"{_format(mean, metric)} ± {spread.removesuffix('%').removesuffix(' s').removesuffix('×').removesuffix('M')}"


def _change(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else (b - a) / abs(a)


def _percent(change: float | None) -> str:
    return "–" if change is None else f"{100 * change:+.1f}%"


def paired_verdict(changes: list[float], seed_change: float | None) -> tuple[str, float, float]:
    """From the per-seed changes A→B of one metric: 'agrees' or 'disagrees' (with the seed's sign)
    when the 95% interval of their mean excludes zero, else 'within noise'; and that interval."""
    mean, half = mean_interval(changes)
    low, high = mean - half, mean + half
    if seed_change is None:
        return "no seed figure", low, high
    if low <= 0 <= high:
        return "within noise", low, high
    return ("agrees" if (mean > 0) == (seed_change > 0) else "disagrees"), low, high


def comparison_table(comparison: Comparison, experiments: dict[str, dict[int, dict]], quoted: str = "seed") -> tuple[list[str], str, int, int]:
    """Markdown rows of one comparison (each setting's mean ± 95% interval over its seeds, and the
    paired same-seed change A→B with its interval), a sentence with the verdicts, and how many of its
    metrics (those with a quoted figure) agree with the direction of the `quoted` source (the seed's)."""
    a, b = comparison.a, comparison.b
    runs_a, runs_b = experiments[a.experiment], experiments[b.experiment]
    seeds = sorted(set(runs_a) & set(runs_b))
    rows = [f"| metric | A: {a.label} | B: {b.label} | change A→B (95% interval) | {quoted} A | {quoted} B | {quoted} change | verdict |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    verdicts: dict[str, list[str]] = {"agrees": [], "disagrees": [], "within noise": []}
    for metric, seed_a, seed_b in zip(comparison.metrics, a.seed, b.seed):
        values_a = [runs_a[s]["metrics"][metric.key] for s in seeds]
        values_b = [runs_b[s]["metrics"][metric.key] for s in seeds]
        changes = [_change(x, y) for x, y in zip(values_a, values_b)]
        seed = _change(seed_a, seed_b)
        verdict, low, high = paired_verdict(changes, seed)
        mean = statistics.fmean(changes)
        if verdict != "no seed figure":
            verdicts[verdict].append(f"{metric.label} (ours {_percent(mean)} [{_percent(low)}, {_percent(high)}], {quoted} {_percent(seed)})")
            better = "B" if (seed > 0) == metric.higher_is_better else "A"
            verdict = f"{verdict} ({quoted}: {better} better)"
        elif low > 0 or high < 0:
            verdict = f"{'B' if (mean > 0) == metric.higher_is_better else 'A'} better, outside the noise"
        else:
            verdict = "within noise"
        rows.append(f"| {metric.label} | {_format_interval(values_a, metric)} | {_format_interval(values_b, metric)} | "
                    f"{_percent(mean)} [{_percent(low)}, {_percent(high)}] | {_format(seed_a, metric)} | {_format(seed_b, metric)} | "
                    f"{_percent(seed)} | {verdict} |")
    compared = sum(len(v) for v in verdicts.values())
    parts = [f"{kind} on {', '.join(items)}" for kind, items in verdicts.items() if items] or [f"no {quoted} figure to compare with"]
    sentence = f"**{comparison.title}** ({a.label} → {b.label}): " + "; ".join(parts) + "."
    return rows, sentence, len(verdicts["agrees"]), compared


def baseline_rows(full_size: Path = FULL_SIZE_RESULTS) -> list[str]:
    """ctxlm and the baselines of the committed full-size run side by side; for ctxlm and the LSTM,
    mean ± 95% interval over their full-size seeds when more than one has run (runs of an earlier
    sampling of the splits left out)."""
    runs = json.loads(full_size.read_text()) if full_size.is_file() else {}
    collected = sorted((run for name, run in runs.items() if name not in superseded_runs()), key=lambda r: r["seed"])

    def with_seeds(model: str, committed: dict) -> list[dict]:
        """The committed run's figures first, then those of the model's collected `full-*` runs in seed order."""
        return [committed] + [run["metrics"] for run in collected if run["model"] == model]

    ctxlm = json.loads(Path("metrics/eval.json").read_text())
    seconds = sum(json.loads(Path(f"metrics/{stage}.json").read_text())["seconds"] for stage in STAGE_METRICS)
    rows = [("ctxlm (ContextBlock + TokenBlock)", with_seeds("ctxlm", ctxlm), ctxlm["params_blocks"], seconds)]
    for name, label in BASELINES.items():
        path = Path(f"metrics/baselines/{name}.json")
        if path.is_file():
            m = json.loads(path.read_text())
            rows.append((label, with_seeds(name, m), m.get("params_trainable_body", 0), m["seconds"]))

    def figure(runs: list[dict], key: str, metric: Metric) -> str:
        values = [m[key] for m in runs if key in m]
        if len(values) < len(runs) or not values:
            return "–"
        return _format_interval(values, metric) if len(values) > 1 else _format(values[0], metric)

    ppl, acc, bits = Metric("ppl", "", False), Metric("acc", "", True, "%"), Metric("bits", "", False, "b")
    table = ["| model | seeds | test PPL | test PPL vs ctxlm (seed 0) | test acc | test bits/byte | val PPL | trainable params (blocks only) | "
             "best epoch (seed 0) | seconds (seed 0) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, runs, blocks, secs in rows:
        first = runs[0]
        versus = _percent(_change(ctxlm["test_ppl"], first["test_ppl"])) if "test_ppl" in first else "–"
        table.append(f"| {label} | {len(runs)} | {figure(runs, 'test_ppl', ppl)} | {versus} | {figure(runs, 'test_acc', acc)} | "
                     f"{figure(runs, 'test_bits_per_byte', bits)} | {figure(runs, 'val_ppl', ppl)} | {blocks:,} | "
                     f"{first.get('best_epoch', '–')} | {secs:,.0f} |")
    return table


def _save_single(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: the same runs give the same bytes
    plt.close(fig)


def plot_comparison_curves(experiments: dict[str, dict[int, dict]], path: Path, comparisons: tuple[Comparison, ...] = COMPARISONS) -> None:
    """Validation PPL per epoch, one panel per comparison, A and B as two colours, one line per seed."""
    fig, axes = plt.subplots(1, len(comparisons), figsize=(4 * len(comparisons), 3.4), squeeze=False)
    for ax, comparison in zip(axes[0], comparisons):
        for setting, style, colour in ((comparison.a, "--", "tab:orange"), (comparison.b, "-", "tab:blue")):
            for i, run in enumerate(experiments[setting.experiment].values()):
                curve = run["curve"]
                ax.plot(curve["epoch"], curve["val_ppl"], style, color=colour, marker="o", markersize=3,
                        label=setting.label if i == 0 else None)
        ax.set_title(comparison.title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("validation PPL (one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def layer_number(key: str) -> int:
    """'layer_12' -> 12."""
    return int(key.removeprefix("layer_"))


def plot_rank_by_layer(experiments: dict[str, dict[int, dict]], path: Path) -> None:
    """Effective rank of the validation C* per ContextBlock layer, as a fraction of d_c, mean over seeds."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, by_seed in experiments.items():
        per_seed = [[run["rank_by_layer"][layer] / run["context_dim"] for layer in sorted(run["rank_by_layer"], key=layer_number)]
                    for run in by_seed.values()]  # by number: collected runs are stored with sorted keys, layer_10 before layer_2
        if per_seed and per_seed[0]:
            means = [statistics.fmean(layer) for layer in zip(*per_seed)]
            ax.plot(range(1, len(means) + 1), means, marker="o", label=PREFIX + name)
    _save_single(fig, ax, path, "ContextBlock layer", "effective rank / d_c (mean over seeds)")


def plot_baseline_curves(path: Path) -> bool:
    """Validation PPL per epoch of ctxlm and the neural baselines (the committed full-size run)."""
    folders = {"ctxlm": CURVES / "train_token", **{BASELINES[name]: BASELINE_CURVES / name for name in ("lstm", "transformer")}}
    curves = {label: curve for label, folder in folders.items() if (curve := load_curve(folder, "epoch")) is not None}
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, curve in curves.items():
        ax.plot(curve["epoch"], curve["val_ppl"], marker="o", label=label)
    _save_single(fig, ax, path, "epoch", "validation PPL")
    return bool(curves)


def write_report(out: Path = Path("docs/RESULTS.md"), results: Path = RESULTS) -> None:
    """Read the collected seed experiments and the committed metrics, write `out` and its PNG plots beside it."""
    if not Path("metrics/eval.json").is_file():
        raise CtxlmError("metrics/eval.json not found: run `dvc repro` first (from the repository root)")
    experiments = load_results(results)
    figures = out.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    base = experiments["base"]
    seeds = list(base)
    first = base[seeds[0]]
    plot_comparison_curves(experiments, figures / "seed_val_curves.png")
    plot_rank_by_layer(experiments, figures / "effective_rank_by_layer.png")
    has_baseline_curves = plot_baseline_curves(figures / "baseline_val_curves.png")
    size = [switch for switch in first["switches"] if not switch.startswith("seed=")]

    lines = ["# Results", "",
             f"Written by `ctxlm report` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             f"Read from `{results.as_posix()}` ({sum(len(s) for s in experiments.values())} runs of the experiments of commit "
             f"`{first['commit'][:10]}`, collected by `ctxlm collect`) and the committed metrics files. Every figure below is read "
             "from those runs; only the seed's own figures (docs/design.md, \"The research notes' figures that ctxlm quotes\": GPT-2 embeddings, UltraChat) "
             "are quoted.", "",
             "## How these results were made", "", "```sh", "dvc repro                 # the full-size run of ctxlm", "dvc repro baselines/dvc.yaml   # and of the baselines",
             f"ctxlm seed-experiments --seeds {len(seeds)}   # ran, for each seed k in {seeds}:"]
    lines += [f"  dvc exp run --temp -n {PREFIX}{name}-s<k> -S seed=<k> "
              + " ".join(f"-S {s}" for s in experiments[name][seeds[0]]["switches"] if not s.startswith("seed=")) + " evaluate"
              for name in EXPERIMENTS]
    lines += ["ctxlm full-size-seeds --seeds 3   # ctxlm and the LSTM at full size, the other seeds",
              "ctxlm collect             # -> docs/results/experiments.json, docs/results/full_size.json", "ctxlm report", "```", "",
              "## The seed's comparisons", "",
              f"Each experiment runs the pipeline up to `evaluate` at a reduced size, {', '.join(f'`{s}`' for s in size)}, "
              f"every other key as in `params.yaml`, once for each seed ({len(seeds)} seeds: the model's initialisation, "
              "phase-1 noise and phase-2 order change with it). A and B give each setting's mean ± the half-width of its 95% "
              "Student-t interval over the seeds. *change A→B* is the mean of the paired (same-seed) changes (B − A) / A with "
              "its 95% interval; the *verdict* is *agrees* or *disagrees* (with the sign of the seed's change) when that "
              "interval excludes zero, else *within noise*.", ""]
    tables, sentences, total_agree, total_compared = [], [], 0, 0
    for comparison in COMPARISONS:
        rows, sentence, agree, compared = comparison_table(comparison, experiments)
        sentences.append(f"- {sentence}")
        total_agree, total_compared = total_agree + agree, total_compared + compared
        tables += [f"### {comparison.title}", "",
                   f"A = `{PREFIX}{comparison.a.experiment}-s*`, B = `{PREFIX}{comparison.b.experiment}-s*`.", "", *rows, ""]
        if comparison.note:
            tables += [comparison.note, ""]
    lines += [f"**Where we agree with the seed: on {total_agree} of {total_compared} metrics the change is outside the noise and "
              "has the seed's sign.** The seed ran GPT-2 embeddings on UltraChat; these runs use MiniLM embeddings on Shakespeare "
              "at the reduced size above.", "", *sentences, "", *tables,
              "![validation PPL per epoch](results/seed_val_curves.png)", "",
              "![effective rank per layer](results/effective_rank_by_layer.png)", "",
              "## Baselines on the very same tokens (full size)", "",
              "Same tokens, same test and validation positions, same frozen embedding and tied head (as `params.yaml` sets them), "
              "same optimiser, batch tokens, epochs and early stopping (on the validation split); the trained blocks have about "
              "ctxlm's parameter count. Test figures are the headline: the test play is in neither training nor validation. "
              "ctxlm's seconds are its four training and scoring stages; – marks a figure the committed run does not have. "
              "ctxlm and the LSTM are given mean ± 95% interval over their seeds when more than one has run: the committed "
              f"run and the `{FULL_PREFIX}<model>-s<seed>` experiments of `ctxlm full-size-seeds` "
              f"(`{FULL_SIZE_RESULTS.as_posix()}`); the other baselines ran once.", "",
              *baseline_rows(), ""]
    if has_baseline_curves:
        lines += ["![validation PPL per epoch, ctxlm and the baselines](results/baseline_val_curves.png)", ""]
    scaling = json.loads(SCALING_RESULTS.read_text()) if SCALING_RESULTS.is_file() else {}
    if BEFORE_SAMPLING.is_file():
        lines += sampling_change_section(json.loads(BEFORE_SAMPLING.read_text()), scaling)
    if NEXT_FAMILY.results.is_file():
        lines += next_section(load_results(NEXT_FAMILY.results), figures / "next_val_curves.png")
    if SCALING_RESULTS.is_file():
        lines += scaling_section(scaling, figures / "scaling.png")
    if PROBE_RESULTS.is_file():
        lines += probe_section(json.loads(PROBE_RESULTS.read_text()), figures / "probe.png")
    out.write_text("\n".join(lines))
    print(f"ctxlm report: wrote {out} and {len(list(figures.glob('*.png')))} plots in {figures}")


def sampling_change_section(before: dict, scaling: dict[str, dict]) -> list[str]:
    """The committed full-size figures, and the scaling runs' test PPL (`scaling`: the collected runs),
    before and after every split became a seeded sample of the corpus."""
    files = {"ctxlm": Path("metrics/eval.json"), **{name: Path(f"metrics/baselines/{name}.json") for name in BASELINES}}
    labels = {"ctxlm": "ctxlm", **BASELINES}
    ppl = Metric("ppl", "", False)
    lines = ["### The sampling change", "",
             f"Up to commit `{before['commit']}`, {before['sampling']}. Now each split is a seeded "
             "sample of whole documents from the whole corpus read (docs/corpora.md): the training split draws from every "
             "training play. The same validation and test plays; the figures of the committed runs (seed 0), before and now. "
             f"The other seeds' full-size runs ({', '.join(f'`{name}`' for name in before['superseded_runs'])}) were made "
             "before the change and are left out of the intervals above until they are rerun; the seed comparisons above and "
             "the research's later comparisons below were also run before it, at reduced sizes whose training split was then "
             "the first documents.", "",
             "| model | test PPL before | test PPL now | change | val PPL before | val PPL now | train PPL before | train PPL now |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, path in files.items():
        if name not in before["metrics"] or not path.is_file():
            continue
        old, new = before["metrics"][name], json.loads(path.read_text())
        train = [_format(m["train_ppl"], ppl) if "train_ppl" in m else "–" for m in (old, new)]
        lines.append(f"| {labels[name]} | {_format(old['test_ppl'], ppl)} | {_format(new['test_ppl'], ppl)} | "
                     f"{_percent(_change(old['test_ppl'], new['test_ppl']))} | {_format(old['val_ppl'], ppl)} | {_format(new['val_ppl'], ppl)} | "
                     f"{train[0]} | {train[1]} |")
    both = {name: run for name, run in before.get("scaling", {}).items() if "test_ppl" in scaling.get(name, {}).get("metrics", {})}
    if not both:
        return lines + [""]
    models = [m for m in SCALING_MODELS if any(run["model"] == m for run in both.values())]
    lines += ["", "The scaling runs' test PPL, before → now (each size's training split, before: the first scenes in corpus order, "
              "one or two plays below 50,000 tokens):", "",
              "| training tokens | " + " | ".join(SCALING_MODELS[m].label for m in models) + " |", "|---:|" + "---:|" * len(models)]
    cells = {(run["model"], run["train_tokens"]): f"{_format(run['test_ppl'], ppl)} → {_format(scaling[name]['metrics']['test_ppl'], ppl)}"
             for name, run in both.items()}
    for n in sorted({n for _, n in cells}):
        lines.append(f"| {n:,} | " + " | ".join(cells.get((m, n), "–") for m in models) + " |")
    return lines + [""]


def next_section(experiments: dict[str, dict[int, dict]], curves: Path) -> list[str]:
    """The report's section on the research's later findings (NEXT_FAMILY), its curves plotted to `curves`."""
    family = NEXT_FAMILY
    first = next(iter(experiments["base"].values()))
    seeds = list(experiments["base"])
    size = [switch for switch in first["switches"] if not switch.startswith("seed=")]
    plot_comparison_curves(experiments, curves, family.comparisons)
    lines = ["## Where the research went next", "",
             f"`ctxlm {family.command} --seeds {len(seeds)}` ran each setting below with seeds {seeds}, up to `evaluate`, at the "
             f"seed comparisons' reduced size ({', '.join(f'`{s}`' for s in size)}), as experiments `{family.prefix}<setting>-s<seed>` "
             f"of commit `{first['commit'][:10]}` (`{family.results.as_posix()}`). Intervals and verdicts as above; the *research* "
             "columns quote the research's own later figures (GPT-2 embeddings, UltraChat, one seed) where it has them "
             "(docs/design.md, \"Where the research went next\").", ""]
    for name, switches in family.experiments.items():
        lines.append(f"- `{family.prefix}{name}`: " + (" ".join(f"`-S {k}={v}`" for k, v in switches.items()) or "the size above alone"))
    lines.append("")
    for comparison in family.comparisons:
        rows, sentence, _, _ = comparison_table(comparison, experiments, family.quoted)
        lines += [f"### {comparison.title}", "", f"A = `{family.prefix}{comparison.a.experiment}-s*`, "
                  f"B = `{family.prefix}{comparison.b.experiment}-s*`.", "", *rows, "", sentence, ""]
        if comparison.note:
            lines += [comparison.note, ""]
    return lines + [f"![validation PPL per epoch]({curves.parent.name}/{curves.name})", ""]


def _fit_or_reason(points: list[tuple[int, float]]) -> PowerLawFit | str:
    """The power-law fit of (training tokens, test PPL) points, or why there is none."""
    try:
        return fit_power_law([n for n, _ in points], [ppl for _, ppl in points])
    except CtxlmError as err:
        return str(err)
    except RuntimeError as err:  # scipy's curve_fit did not converge
        return f"the fit did not converge ({err})"


def _tokens(n: float) -> str:
    return f"{n / 1e6:,.2f}M" if n >= 1e6 else f"{n / 1e3:,.0f}k"


def scaling_section(runs: dict[str, dict], plot: Path) -> list[str]:
    """Test PPL against training tokens for each model of `ctxlm scaling` (its collected runs), the
    fits PPL(n) = E + A n^-alpha with their 95% intervals, where the fitted curves cross, and a
    log-log plot of points and curves to `plot`."""
    points: dict[str, list[tuple[int, float]]] = {}
    for run in sorted(runs.values(), key=lambda r: r["train_tokens"]):
        if "test_ppl" in run["metrics"]:
            points.setdefault(run["model"], []).append((run["train_tokens"], run["metrics"]["test_ppl"]))
    models = [m for m in SCALING_MODELS if m in points]
    fits = {model: _fit_or_reason(points[model]) for model in models}
    sizes = sorted({n for pts in points.values() for n, _ in pts})
    commits = sorted({run["commit"][:10] for run in runs.values()})
    lines = ["## Scaling with training tokens", "",
             f"`ctxlm scaling` ran each model at each training size as an experiment `{SCALING_PREFIX}<model>-n<tokens>` "
             f"(commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)}; `{SCALING_RESULTS.as_posix()}`): "
             "`data.max_train_tokens` set to the size and every other key as in `params.yaml`, so the validation and test "
             "tokens are the same for all. One seed per point. The fit is PPL(n) = E + A·n^(−α) by least squares on the test "
             "perplexities (scipy's `curve_fit`), with 95% intervals from its covariance (Student's t, points − 3 degrees of freedom). "
             "A parameter the fit pushes onto its bound (E = 0, α = 5) is held there and the others refitted (points − 2 degrees of "
             "freedom); it gets no interval, and crossings from such a fit say so.", "",
             "| training tokens | " + " | ".join(SCALING_MODELS[m].label for m in models) + " |",
             "|---:|" + "---:|" * len(models)]
    by_size = {m: dict(points[m]) for m in models}
    train_ppl = {(run["model"], run["train_tokens"]): run["metrics"]["train_ppl"] for run in runs.values() if "train_ppl" in run["metrics"]}
    for n in sizes:
        lines.append(f"| {n:,} | " + " | ".join(_test_and_train(by_size[m].get(n), train_ppl.get((m, n))) for m in models) + " |")
    lines += ["", "Each cell: test PPL, and in brackets the train PPL where the run recorded it (ctxlm's and the LSTM's on the fixed "
              "post-epoch sample of training positions, in fp32, at the best epoch; Kneser-Ney's on the whole training split). A train PPL far under the test PPL is "
              "overfitting; the two close together and high, underfitting."]
    devices = sorted({device for run in runs.values() for device in run.get("devices", [])})
    mixed = sorted(name for name, run in runs.items() if len(run.get("devices", [])) > 1)
    if devices:
        lines += ["", f"Devices the runs record: {'; '.join(devices)}."
                  + (f" **Runs whose stages ran on different devices:** {', '.join(mixed)}." if mixed else "")]
    lines += ["", "| model | points | E (95% interval) | A (95% interval) | α (95% interval) | R² | seconds (all sizes) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for model in models:
        fit, seconds = fits[model], sum(r["seconds"] for r in runs.values() if r["model"] == model)
        if isinstance(fit, str):
            lines.append(f"| {SCALING_MODELS[model].label} | {len(points[model])} | {fit} | | | | {seconds:,.0f} |")
            continue
        lines.append(f"| {SCALING_MODELS[model].label} | {len(points[model])} | {_fitted(fit.E, fit.E_interval, ',.1f')} | "
                     f"{_fitted(fit.A, fit.A_interval, '.3g')} | {_fitted(fit.alpha, fit.alpha_interval, '.3f')} | {fit.r2:.4f} | {seconds:,.0f} |")
    lines += _fit_checks(points, models)
    lines += ["", "Where the fitted curves cross (searched from 1k to 10T training tokens); a crossing outside the measured sizes, "
              f"{_tokens(sizes[0])} to {_tokens(sizes[-1])}, is an extrapolation of the fits, and says how many doublings beyond them:", ""]
    for first in (m for m in ("ctxlm", "ctxlm-trained-e") if isinstance(fits.get(m), PowerLawFit)):
        for second in (m for m in models if m != first and m != "ctxlm" and isinstance(fits[m], PowerLawFit)):
            a, b = fits[first], fits[second]
            at = crossings(a, b)
            largest = sizes[-1]
            now = "below" if a(largest) < b(largest) else "above"
            where = (f"they cross at {' and '.join(_crossing(n, sizes[0], largest) for n in at)}" if at
                     else f"no crossing: {SCALING_MODELS[first].label} stays {now}")
            held = [f"{SCALING_MODELS[m].label}'s {', '.join(fits[m].at_bound)}" for m in (first, second) if fits[m].at_bound]
            caveat = f" (from a fit with {' and '.join(held)} held at a bound)" if held else ""
            lines.append(f"- {SCALING_MODELS[first].label} vs {SCALING_MODELS[second].label}: at {_tokens(largest)} tokens "
                         f"the fit of {SCALING_MODELS[first].label} is {now} ({a(largest):,.1f} vs {b(largest):,.1f}); {where}{caveat}.")
    _plot_scaling(points, fits, plot)
    return lines + ["", f"![test PPL against training tokens]({plot.parent.name}/{plot.name})", ""]


def _test_and_train(test: float | None, train: float | None) -> str:
    if test is None:
        return "–"
    return f"{test:,.1f}" + (f" ({train:,.1f})" if train is not None else "")


def _crossing(n: float, low: float, high: float) -> str:
    """A crossing's size, marked as an extrapolation when outside the measured [low, high]."""
    beyond = doublings_outside(n, low, high)
    return f"{_tokens(n)} tokens" + (f" (an extrapolation, {beyond:.1f} doublings {'beyond the largest' if n > high else 'below the smallest'} size measured)" if beyond else "")


def _fit_checks(points: dict[str, list[tuple[int, float]]], models: list[str]) -> list[str]:
    """Each model's fit made again without its largest size, its prediction there against the measurement."""
    lines = ["", "Each fit checked: made again without the model's largest size, it predicts that size; the 95% interval is "
             "that of a new measurement (the fitted curve's uncertainty there, by the delta method, plus the points' scatter "
             "about it). A fit whose interval misses the measurement is marked *not predictive*.", "",
             "| model | largest size | predicted (95% interval) | measured | error | |", "|---|---:|---:|---:|---:|---|"]
    for model in models:
        label = SCALING_MODELS[model].label
        try:
            check = check_fit([n for n, _ in points[model]], [ppl for _, ppl in points[model]])
        except (CtxlmError, RuntimeError) as err:  # fewer than 5 sizes, or no convergence
            lines.append(f"| {label} | | no check: {err} | | | |")
            continue
        verdict = "predictive" if check.predictive else "*not predictive*"
        lines.append(f"| {label} | {check.size:,.0f} | {check.predicted:,.1f} [{check.interval[0]:,.1f}, {check.interval[1]:,.1f}] | "
                     f"{check.measured:,.1f} | {check.error:+.1%} | {verdict} |")
    return lines


def _fitted(value: float, interval: tuple[float, float] | None, spec: str) -> str:
    """A fitted parameter with its 95% interval, or the note that the fit held it at its bound."""
    if interval is None:
        return f"{value:{spec}} (at its bound: no interval)"
    return f"{value:{spec}} [{interval[0]:{spec}}, {interval[1]:{spec}}]"


PROBED = {"ctxlm": "ctxlm's C*", "untrained": "untrained ContextBlock's C*", "lstm": "LSTM hidden state", "bag": "mean of the last 17 embeddings"}
PROBE_TABLE_KS = (0, 1, 2, 4, 8, 16)


def probe_section(probe: dict, plot: Path) -> list[str]:
    """`ctxlm probe`'s figures: accuracy and bits at some k for each representation beside the
    unigram guess, where each falls to within 2x of it, and accuracy against k plotted to `plot`."""
    names = [name for name in PROBED if name in probe["within_2x_of_unigram"]]
    rows = {row["k"]: row for row in probe["by_k"]}
    lines = ["## What C* remembers", "",
             f"`ctxlm probe` (`{PROBE_RESULTS.as_posix()}`): for each k, a linear probe (multinomial logistic regression, "
             f"early-stopped on a held-out tenth, starting from the unigram guess) is trained on {probe['train_positions']:,} "
             f"training positions to name t_(i-k) from the representation at position i, among the {probe['classes']:,} most "
             f"frequent training tokens, and scored on {probe['val_positions']:,} validation positions (positions whose t_(i-k) "
             "is another token, or before the document, are left out: `coverage`). " + probe_workspace(probe.get("workspace")) + "Accuracy, then bits, by k:", "",
             "| k | coverage | unigram guess | " + " | ".join(PROBED[n] for n in names) + " |",
             "|---:|---:|---:|" + "---:|" * len(names)]
    for k in (k for k in PROBE_TABLE_KS if k in rows):
        row = rows[k]
        lines.append(f"| {k} | {row['coverage']:.1%} | {row['unigram_accuracy']:.3f} | "
                     + " | ".join(f"{row[n]['accuracy']:.3f} ({row[n]['bits']:.2f} bits)" for n in names) + " |")
    lines += ["", "Accuracy falls to within 2x of the unigram guess from k = " + "; ".join(
        f"{PROBED[n]}: {k}" if k is not None else f"{PROBED[n]}: not by k = {max(rows)}" for n, k in probe["within_2x_of_unigram"].items()
        if n in names) + ".", "", f"![probe accuracy against k]({plot.parent.name}/{plot.name})", ""]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    ks = sorted(rows)
    for name in names:
        ax.plot(ks, [rows[k][name]["accuracy"] for k in ks], "o-", label=PROBED[name], markersize=3)
    ax.plot(ks, [rows[k]["unigram_accuracy"] for k in ks], "k--", label="unigram guess", linewidth=1)
    _save_single(fig, ax, plot, "k: the token k positions back", "probe accuracy (validation)")
    return lines


def probe_workspace(workspace: dict | None) -> str:
    """The sentence saying which workspace a probe ran on (empty for a record that does not say)."""
    if not workspace:
        return ""
    changed = workspace["params_changed"]
    params = ("params.yaml never committed" if changed is None else "its params.yaml as committed" if not changed else
              "params.yaml as committed but " + ", ".join(f"{key}={value}" for key, value in sorted(changed.items())))
    figures = [f"{WORKSPACE_FIGURES[name].label} {value:{WORKSPACE_FIGURES[name].format}}"
               for name, value in workspace["figures"].items() if value is not None]
    where = f"of commit `{workspace['commit'][:10]}`" if workspace["commit"] else "without a commit"
    return (f"It ran on the DVC workspace {where}, {params}"
            + (f" ({'; '.join(figures)})" if figures else "") + ". ")


def _plot_scaling(points: dict[str, list[tuple[int, float]]], fits: dict, path: Path) -> None:
    """Log-log: each model's measured points and its fitted curve, drawn on to 10x the largest size (dashed beyond the data)."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    for (model, pts), colour in zip(points.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        n = np.array([p[0] for p in pts], dtype=float)
        ax.plot(n, [p[1] for p in pts], "o", color=colour, label=SCALING_MODELS[model].label)
        fit = fits[model]
        if isinstance(fit, PowerLawFit):
            inside, beyond = np.geomspace(n.min(), n.max(), 50), np.geomspace(n.max(), 10 * n.max(), 20)
            ax.plot(inside, fit(inside), "-", color=colour, linewidth=1)
            ax.plot(beyond, fit(beyond), "--", color=colour, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("test PPL")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
