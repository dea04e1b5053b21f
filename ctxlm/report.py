"""`ctxlm report`: docs/RESULTS.md and its plots, from DVC's record of real runs.

The seed's comparisons come from the experiments of ctxlm.experiments (`dvc exp show --json`, their
curves from the experiments' git commits); the baseline table from the workspace's metrics files.
Every number in the report is read from those; only the seed's own figures are quoted (DESIGN.md).
"""

from __future__ import annotations

import io
import json
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ctxlm.errors import CtxlmError  # noqa: E402
from ctxlm.experiments import COMPARISONS, EXPERIMENTS, PREFIX, Comparison, Metric  # noqa: E402

BASELINES = {"lstm": "LSTM", "transformer": "GPT-2-style Transformer", "kneser_ney": "Kneser-Ney trigram"}
COMMITS = 10  # how far back (in commits) the report looks for the seed experiments
SAME_WITHIN = 0.01  # a relative change smaller than this has no direction (run-to-run noise)
STAGE_METRICS = ("train_context", "generate_cstar", "train_token", "eval")  # ctxlm's training and scoring stages


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def experiment_metrics(metrics: dict[str, dict], curve: pd.DataFrame) -> dict[str, float]:
    """The figures the comparisons use, from an experiment's metrics files and its phase-2 curve."""
    evaluation = metrics["metrics/eval.json"]
    best_so_far = curve["val_ppl"].cummin()
    return {
        "val_ppl": evaluation["val_ppl"],
        "val_acc": evaluation["val_acc"],
        "effective_rank_ratio": evaluation["effective_rank_ratio"],
        "params_total": evaluation["params_total"],
        "phase1_seconds": metrics["metrics/train_context.json"]["phase1_seconds"],
        "epochs_improving": int((curve["val_ppl"] <= best_so_far).sum()),  # epochs that set a new best
        "val_train_ppl_gap": evaluation["val_ppl"] / evaluation["train_ppl"],
    }


def _flatten(params: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in params.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _switches(commit_params: dict, experiment_params: dict) -> list[str]:
    """The `-S key=value` an experiment set on top of its commit's params.yaml."""
    before, after = _flatten(commit_params), _flatten(experiment_params)
    return [f"{key}={json.dumps(value)}" for key, value in after.items() if before.get(key) != value]


def load_experiments(commits: int = COMMITS) -> dict[str, dict]:
    """The seed experiments, by name (without PREFIX): metrics, curve, rank by layer, switches.

    They come from the newest of the last `commits` commits that has all of them finished, so the
    report can be remade after the commit that adds it."""
    shown = subprocess.run(["dvc", "exp", "show", "--json", "--num", str(commits)], check=True, capture_output=True, text=True).stdout
    for commit in json.loads(shown)[1:]:  # [0] is the workspace; then the commits, newest first
        found = {}
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                name = (rev.get("name") or "").removeprefix(PREFIX)
                if name not in EXPERIMENTS or rev.get("error") or not rev["data"].get("metrics"):
                    continue
                metrics = {path: entry["data"] for path, entry in rev["data"]["metrics"].items() if "data" in entry}
                curve = pd.read_csv(io.StringIO(_git("show", f"{rev['rev']}:metrics/train_token_curve.csv")))
                found[name] = {"rev": rev["rev"], "baseline": commit["rev"], "metrics": experiment_metrics(metrics, curve),
                               "curve": curve, "rank_by_layer": metrics["metrics/eval.json"].get("effective_rank_by_layer", {}),
                               "context_dim": rev["data"]["params"]["params.yaml"]["data"]["model"]["context_dim"],
                               "switches": _switches(commit["data"]["params"]["params.yaml"]["data"],
                                                     rev["data"]["params"]["params.yaml"]["data"])}
        if set(found) == set(EXPERIMENTS):
            return found
    names = ", ".join(PREFIX + name for name in EXPERIMENTS)
    raise CtxlmError(f"no commit among the last {commits} has finished experiments named {names}; run: ctxlm seed-experiments")


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
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _change(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else (b - a) / abs(a)


def _percent(change: float | None) -> str:
    return "–" if change is None else f"{100 * change:+.1f}%"


def comparison_table(comparison: Comparison, experiments: dict[str, dict]) -> tuple[list[str], str, int, int]:
    """Markdown rows of one comparison, a sentence saying where it agrees with the seed, and how many
    of its metrics (those with a seed figure) agree in direction."""
    a, b = comparison.a, comparison.b
    ours_a, ours_b = experiments[a.experiment]["metrics"], experiments[b.experiment]["metrics"]
    rows = [f"| metric | A: {a.label} | B: {b.label} | change A→B | seed A | seed B | seed change | direction |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    verdicts: dict[str, list[str]] = {"agrees": [], "disagrees": [], "no change": []}
    for metric, seed_a, seed_b in zip(comparison.metrics, a.seed, b.seed):
        ours, seed = _change(ours_a[metric.key], ours_b[metric.key]), _change(seed_a, seed_b)
        verdict = "no seed figure"
        if seed is not None and ours is not None:
            better = "B" if (seed > 0) == metric.higher_is_better else "A"
            kind = "no change" if abs(ours) < SAME_WITHIN else "agrees" if (ours > 0) == (seed > 0) else "disagrees"
            verdicts[kind].append(f"{metric.label} (ours {_percent(ours)}, seed {_percent(seed)})")
            verdict = f"{kind} (seed: {better} better)"
        rows.append(f"| {metric.label} | {_format(ours_a[metric.key], metric)} | {_format(ours_b[metric.key], metric)} | "
                    f"{_percent(ours)} | {_format(seed_a, metric)} | {_format(seed_b, metric)} | {_percent(seed)} | {verdict} |")
    compared = sum(len(v) for v in verdicts.values())
    lead = {"agrees": "agrees on", "disagrees": "disagrees on", "no change": f"no change (under {SAME_WITHIN:.0%}) in"}
    parts = [f"{lead[kind]} {', '.join(items)}" for kind, items in verdicts.items() if items]
    sentence = f"**{comparison.title}** ({a.label} → {b.label}): " + "; ".join(parts) + "."
    return rows, sentence, len(verdicts["agrees"]), compared


def baseline_rows() -> list[str]:
    """ctxlm and the baselines of the workspace's (full-size) run, side by side."""
    ctxlm = json.loads(Path("metrics/eval.json").read_text())
    seconds = sum(json.loads(Path(f"metrics/{stage}.json").read_text())["seconds"] for stage in STAGE_METRICS)
    rows = [("ctxlm (ContextBlock + TokenBlock)", ctxlm, ctxlm["params_blocks"], seconds)]
    for name, label in BASELINES.items():
        path = Path(f"metrics/baselines/{name}.json")
        if path.is_file():
            m = json.loads(path.read_text())
            rows.append((label, m, m.get("params_trainable_body", 0), m["seconds"]))
    table = ["| model | val PPL | vs ctxlm | val acc | trainable params (blocks only) | best epoch | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, m, blocks, secs in rows:
        table.append(f"| {label} | {m['val_ppl']:,.1f} | {_percent(_change(ctxlm['val_ppl'], m['val_ppl']))} | "
                     f"{100 * m['val_acc']:.2f}% | {blocks:,} | {m.get('best_epoch', '–')} | {secs:,.0f} |")
    return table


def _save_single(fig, ax, path: Path, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_comparison_curves(experiments: dict[str, dict], path: Path) -> None:
    """Validation PPL per epoch, one panel per comparison, A and B as two lines."""
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(4 * len(COMPARISONS), 3.4), squeeze=False)
    for ax, comparison in zip(axes[0], COMPARISONS):
        for setting, style in ((comparison.a, "--"), (comparison.b, "-")):
            curve = experiments[setting.experiment]["curve"]
            ax.plot(curve["epoch"], curve["val_ppl"], style, marker="o", label=f"{setting.label}")
        ax.set_title(comparison.title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("validation PPL")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rank_by_layer(experiments: dict[str, dict], path: Path) -> None:
    """Effective rank of the validation C* per ContextBlock layer, as a fraction of d_c."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, experiment in experiments.items():
        ranks = list(experiment["rank_by_layer"].values())  # layer_1 .. layer_L, in order
        if ranks:
            ax.plot(range(1, len(ranks) + 1), [r / experiment["context_dim"] for r in ranks], marker="o", label=PREFIX + name)
    _save_single(fig, ax, path, "ContextBlock layer", "effective rank / d_c")


def plot_baseline_curves(path: Path) -> bool:
    """Validation PPL per epoch of ctxlm and the neural baselines (the workspace's run)."""
    curves = {"ctxlm": Path("metrics/train_token_curve.csv")}
    curves.update({BASELINES[name]: Path(f"metrics/baselines/{name}_curve.csv") for name in ("lstm", "transformer")})
    curves = {label: pd.read_csv(file) for label, file in curves.items() if file.is_file()}
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for label, curve in curves.items():
        ax.plot(curve["epoch"], curve["val_ppl"], marker="o", label=label)
    _save_single(fig, ax, path, "epoch", "validation PPL")
    return bool(curves)


def write_report(out: Path = Path("docs/RESULTS.md")) -> None:
    """Read the seed experiments and the baselines, write `out` and its PNG plots beside it."""
    for needed in ("metrics/eval.json", "dvc.lock"):
        if not Path(needed).is_file():
            raise CtxlmError(f"{needed} not found: run `dvc repro` first (from the repository root)")
    experiments = load_experiments()
    figures = out.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    baseline_commit = next(iter(experiments.values()))["baseline"]
    plot_comparison_curves(experiments, figures / "seed_val_curves.png")
    plot_rank_by_layer(experiments, figures / "effective_rank_by_layer.png")
    has_baseline_curves = plot_baseline_curves(figures / "baseline_val_curves.png")

    lines = ["# Results", "",
             f"Written by `ctxlm report` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the experiments of commit "
             f"`{baseline_commit[:10]}` and the workspace's metrics files. Every figure below is read from those runs; "
             "only the seed's own figures (DESIGN.md, \"The seed's findings\": GPT-2 embeddings, UltraChat) are quoted.", "",
             "## How these results were made", "", "```sh", "dvc repro                 # the full-size run: ctxlm and the baselines",
             "ctxlm seed-experiments    # queued and ran these experiments:"]
    lines += [f"  dvc exp run --queue -n {PREFIX}{name} " + " ".join(f"-S {s}" for s in experiments[name]["switches"]) + " evaluate"
              for name in EXPERIMENTS]
    lines += ["  dvc exp run --run-all --jobs 1", "ctxlm report", "```", "",
              "## The seed's comparisons", "",
              "Each experiment runs the pipeline up to `evaluate` at a reduced size, "
              + ", ".join(f"`{s}`" for s in experiments["base"]["switches"])
              + ", every other key as in `params.yaml`. *change A→B* is (B − A) / A; *direction* says whether "
              "our change has the sign of the seed's.", ""]
    tables, sentences, total_agree, total_compared = [], [], 0, 0
    for comparison in COMPARISONS:
        rows, sentence, agree, compared = comparison_table(comparison, experiments)
        sentences.append(f"- {sentence}")
        total_agree, total_compared = total_agree + agree, total_compared + compared
        tables += [f"### {comparison.title}", "",
                   f"A = `{PREFIX}{comparison.a.experiment}`, B = `{PREFIX}{comparison.b.experiment}`.", "", *rows, ""]
        if comparison.note:
            tables += [comparison.note, ""]
    lines += [f"**Where we agree with the seed: on {total_agree} of {total_compared} metrics the change has the seed's sign.** "
              "The seed ran GPT-2 embeddings on UltraChat; these runs use MiniLM embeddings on Shakespeare at the "
              "reduced size above.", "", *sentences, "", *tables,
              "![validation PPL per epoch](results/seed_val_curves.png)", "",
              "![effective rank per layer](results/effective_rank_by_layer.png)", "",
              "## Baselines on the very same tokens (full size)", "",
              "Same tokens, same validation positions, same frozen embedding and tied head (as `params.yaml` sets them), "
              "same optimiser, batch tokens, epochs and early stopping; the trained blocks have about ctxlm's parameter count. "
              "ctxlm's seconds are its four training and scoring stages.", "", *baseline_rows(), ""]
    if has_baseline_curves:
        lines += ["![validation PPL per epoch, ctxlm and the baselines](results/baseline_val_curves.png)", ""]
    out.write_text("\n".join(lines))
    print(f"ctxlm report: wrote {out} and {len(list(figures.glob('*.png')))} plots in {figures}")
