"""Training curves, logged through DVCLive (the DVC project's logger) as each iteration or epoch ends.

A stage's curves live in a folder of its own (a DVC output): one `plots/metrics/<metric>.tsv` per
metric with a row per step (the iteration or epoch number), which `dvc plots show` draws, and
`metrics.json`, the latest values."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from dvclive import Live

CURVES = Path("metrics/curves")  # ctxlm's stages: metrics/curves/<stage>/
BASELINE_CURVES = Path("metrics/baselines/curves")  # the neural baselines: metrics/baselines/curves/<kind>/


class StageLive(Live):
    """DVCLive as a DVC stage uses it: it writes the files, and DVC (which runs the stage) tracks them.

    DVCLive's own look-up of the repository serves saving experiments and writing dvc.yaml, neither
    of which a stage asks of it; it is skipped, because it also fails with a traceback in a git
    repository that has no commit yet (DVCLive 3.49: "Empty git repo"), and turns a git repository
    without DVC into a DVC one."""

    def _init_dvc(self) -> None:
        pass


class CurveLogger:
    """Logs the rows of a training history (a dict per iteration or epoch, `step_key` its number)
    as DVCLive steps, each row once.

    It is called with the whole history after every new row. A resumed stage gets its history back
    from its checkpoint, while DVC has deleted the stage's outputs (the curves with them) before
    rerunning it; so the folder starts empty and the rows already in the checkpoint are logged again
    first, in order: a resumed run ends with exactly the curves of a run never interrupted."""

    def __init__(self, folder: Path, step_key: str):
        self.live = StageLive(str(folder), resume=False, dvcyaml=None, save_dvc_exp=False)
        self.step_key, self.logged = step_key, 0

    def __call__(self, history: list[dict]) -> None:
        for row in history[self.logged :]:
            self.live.step = int(row[self.step_key])
            for key, value in row.items():
                if key != self.step_key:
                    self.live.log_metric(key, value)
            self.live.make_summary()
        self.logged = len(history)


def metrics_dir(folder: Path) -> Path:
    """Where DVCLive keeps a curve folder's .tsv files, one per metric."""
    return Path(folder) / "plots" / "metrics"


def read_curve(texts: dict[str, str], step_key: str) -> pd.DataFrame:
    """{metric: the text of its .tsv} -> one table, a row per step, the step column named `step_key`."""
    frames = [pd.read_csv(io.StringIO(text), sep="\t").set_index("step") for _, text in sorted(texts.items())]
    return pd.concat(frames, axis=1).rename_axis(step_key).reset_index()


def load_curve(folder: Path, step_key: str) -> pd.DataFrame | None:
    """A curve folder in the workspace as one table (None when the stage has not run)."""
    files = sorted(metrics_dir(folder).glob("*.tsv"))
    return read_curve({f.stem: f.read_text() for f in files}, step_key) if files else None
