"""Training curves through DVCLive: what is logged is what comes back, and a resumed stage ends
with the curves of a run never interrupted."""

from pathlib import Path

import pandas as pd

from ctxlm.training.curves import CurveLogger, load_curve, metrics_dir

HISTORY = [{"epoch": 1, "train_ppl": 300.25, "val_ppl": 410.0625},
           {"epoch": 2, "train_ppl": 210.5, "val_ppl": 350.125},
           {"epoch": 3, "train_ppl": 180.75, "val_ppl": 351.0}]


def test_each_row_is_logged_once_with_its_epoch_as_the_step(tmp_path):
    log = CurveLogger(tmp_path / "curves", step_key="epoch")
    for epoch in range(1, 4):  # called with the whole history after every epoch, as train_epochs does
        log(HISTORY[:epoch])
    assert (metrics_dir(tmp_path / "curves") / "val_ppl.tsv").read_text().splitlines() == [
        "step\tval_ppl", "1\t410.0625", "2\t350.125", "3\t351.0"]
    pd.testing.assert_frame_equal(load_curve(tmp_path / "curves", "epoch"), pd.DataFrame(HISTORY), check_like=True)


def test_a_resumed_logger_rewrites_the_checkpointed_rows_first(tmp_path):
    uninterrupted = CurveLogger(tmp_path / "whole", step_key="epoch")
    for epoch in range(1, 4):
        uninterrupted(HISTORY[:epoch])
    killed = CurveLogger(tmp_path / "resumed", step_key="epoch")
    killed(HISTORY[:1])
    # the rerun: DVC has deleted the stage's outputs; the checkpoint brings back epochs 1 and 2
    resumed = CurveLogger(tmp_path / "resumed", step_key="epoch")
    resumed(HISTORY[:3])
    for metric in ("train_ppl", "val_ppl"):
        assert (metrics_dir(tmp_path / "resumed") / f"{metric}.tsv").read_text() == (metrics_dir(tmp_path / "whole") / f"{metric}.tsv").read_text()


def test_no_curve_before_the_stage_has_run(tmp_path):
    assert load_curve(tmp_path / "nothing", "epoch") is None


def test_logging_in_a_git_repository_without_commits_writes_only_the_curves(tmp_path, monkeypatch):
    """The first `dvc repro` of a new project runs before any commit; DVCLive's own repository
    look-up fails there and would make a git repository a DVC one: the stage's logger skips it."""
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    CurveLogger(Path("metrics/curves/train_token"), step_key="epoch")(HISTORY)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "metrics"]
    assert (metrics_dir(tmp_path / "metrics/curves/train_token") / "val_ppl.tsv").is_file()
