"""End to end: the real DVC pipeline on tiny params in a temporary git repository."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import corpus_forms
from conftest import ENV, TINY, ran_stages, sh, write_params
from corpus_forms import FORMS
from ctxlm.data.shards import CstarReader
from ctxlm.model import ContextBlock
from ctxlm.runtime import seed_everything
from ctxlm.training.phase1 import block_seed
from ctxlm.weights import load_context_blocks

CTXLM = {"prepare", "tokenize", "train_context", "generate_cstar", "train_token", "evaluate"}
BASELINES = {f"baselines/dvc.yaml:{name}" for name in ("baseline_ngram", "baseline_neural@lstm", "baseline_neural@transformer")}
QUALITY = ["test_ppl", "test_acc", "test_bits_per_byte", "val_ppl", "val_acc", "train_ppl", "best_epoch", "effective_rank",
           "params_total", "params_trainable"]


def numpy_effective_rank(repo: Path, layer: int, rows: int) -> float:
    """exp(entropy(s / sum s)) of the validation C* rows that evaluate samples, computed with numpy
    straight from the shard files (not through ctxlm's reader or metrics)."""
    manifest = json.loads((repo / "data/cstar/val/manifest.json").read_text())
    cstar = np.concatenate([np.load(repo / "data/cstar/val" / shard["file"]) for shard in manifest["meta"]["shards"]])
    seed = yaml.safe_load((repo / "params.yaml").read_text())["seed"]
    chosen = np.sort(np.random.default_rng(seed).choice(len(cstar), size=min(rows, len(cstar)), replace=False))
    s = np.linalg.svd(cstar[chosen, layer].astype(np.float64), compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.slow
def test_repro_then_experiment_reruns_only_what_changed(repo: Path):
    first = sh(repo, "dvc", "repro")
    assert ran_stages(first.stdout) == CTXLM  # the main job is ctxlm alone
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    for key in QUALITY:
        assert math.isfinite(metrics[key]), key
    assert 0 < metrics["effective_rank_ratio"] <= 1 and 0 <= metrics["val_acc"] <= 1
    # early stopping validated in fp32 like evaluate, with the same weights: the same figure exactly
    assert metrics["val_ppl"] == json.loads((repo / "metrics/train_token.json").read_text())["val_ppl_at_best_epoch"]
    tokens = json.loads((repo / "metrics/tokenize.json").read_text())
    assert metrics["test_bits_per_byte"] == pytest.approx(metrics["test_loss"] * metrics["test_positions"] / math.log(2) / tokens["test_predicted_bytes"])
    curve = (repo / "metrics/curves/train_token/plots/metrics/val_ppl.tsv").read_text().splitlines()  # DVCLive's
    assert curve == ["step\tval_ppl"] + [f"{epoch}\t{float(line.split()[1])!r}" for epoch, line in enumerate(curve[1:], 1)]
    assert len(curve) == 1 + metrics["epochs_run"] and float(curve[metrics["best_epoch"]].split()[1]) == metrics["val_ppl"]
    phase1 = json.loads((repo / "metrics/train_context.json").read_text())
    convergence = (repo / "metrics/curves/train_context/plots/metrics/convergence_rate.tsv").read_text().splitlines()
    assert len(convergence) == 1 + phase1["iterations"] and float(convergence[-1].split()[1]) == phase1["convergence_rate"]
    # the baselines' own pipeline reuses ctxlm's tokens: only the baselines run
    assert ran_stages(sh(repo, "dvc", "repro", "baselines/dvc.yaml").stdout) == BASELINES
    for name in ("kneser_ney", "lstm", "transformer"):
        baseline = json.loads((repo / f"metrics/baselines/{name}.json").read_text())
        assert math.isfinite(baseline["test_ppl"]) and 0 <= baseline["val_acc"] <= 1, name  # smoke: the figures exist
    lstm = json.loads((repo / "metrics/baselines/lstm.json").read_text())
    assert lstm["params_trainable_body"] == pytest.approx(metrics["params_blocks"], rel=0.01)
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)
    assert {"phase2_perplexity", "phase1_convergence", "baseline_curves"} <= set(plots["data"]) and not plots.get("errors")
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    listed = {path for result in shown.values() for path in result["data"]}
    assert {"metrics/eval.json", "metrics/baselines/lstm.json", "metrics/baselines/kneser_ney.json"} <= listed
    use_the_trained_models(repo, metrics)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "baseline")

    assert ran_stages(sh(repo, "dvc", "repro").stdout) == set()

    exp = sh(repo, "dvc", "exp", "run", "-S", "model.freeze_embedding=false")
    assert ran_stages(exp.stdout) == {"train_token", "evaluate"}  # not the baselines
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json").stdout)
    changed = diff["metrics/eval.json"]
    assert "val_ppl" in changed and changed["params_trainable"]["diff"] == 30522 * 384

    # fp32 here and in the 2-process run below (the workspace keeps it): where `auto` picks bf16 (an AMX CPU),
    # 2 processes differed from 1 by 1.9e-4, past the 1e-4 that float rounding of fp32 stays within
    layers = sh(repo, "dvc", "exp", "run", "-S", "model.num_layers=2", "-S", "phase2.precision=fp32")
    assert ran_stages(layers.stdout) == {"train_context", "generate_cstar", "train_token", "evaluate"}
    two_layers = json.loads((repo / "metrics/eval.json").read_text())
    assert two_layers["effective_rank"] == two_layers["effective_rank_by_layer"]["layer_2"]  # the final layer's
    assert two_layers["effective_rank"] == pytest.approx(numpy_effective_rank(repo, layer=1, rows=TINY["evaluate"]["rank_rows"]))
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "val_ppl" in shown

    # the same experiment in two processes (torchrun, gloo): the same figures to float rounding
    two = sh(repo, "dvc", "exp", "run", "-S", "runtime.processes=2")
    assert ran_stages(two.stdout) == {"train_context", "generate_cstar", "train_token", "evaluate"}
    in_two = json.loads((repo / "metrics/eval.json").read_text())
    assert {k: in_two[k] for k in QUALITY} == pytest.approx({k: two_layers[k] for k in QUALITY}, rel=1e-4)

    # two previous contexts: phase 2 alone reruns, from the same C*; each of the 2 TokenBlock layers
    # reads 2 x d_c more numbers for each of its d_e outputs
    previous = sh(repo, "dvc", "exp", "run", "-S", "model.prev_contexts=2")
    assert ran_stages(previous.stdout) == {"train_token", "evaluate"}
    with_previous = json.loads((repo / "metrics/eval.json").read_text())
    assert with_previous["params_trainable_phase2"] - in_two["params_trainable_phase2"] == 2 * 2 * TINY["model"]["context_dim"] * 384
    text = sh(repo, sys.executable, "-m", "ctxlm", "generate", "to be", "--max-tokens", "4", "--greedy").stdout
    assert text.startswith("to be") and len(text) > len("to be\n")

    # two ContextBlocks, each of d_c and trained on its own half of the documents (still 2 processes,
    # 2 layers, 2 previous contexts): from phase 1 on; C* and the previous contexts twice as wide. The
    # tiny split's halves are uneven (whole scenes, one of them long): smaller mini-batches give each
    # process a share of both blocks' streams
    blocks = sh(repo, "dvc", "exp", "run", "-S", "model.context_blocks=2", "-S", "phase1.batch_tokens=100")
    assert ran_stages(blocks.stdout) == {"train_context", "generate_cstar", "train_token", "evaluate"}
    phase1 = json.loads((repo / "metrics/train_context.json").read_text())
    halves = [phase1[f"block_{j}"]["phase1_tokens"] for j in (0, 1)]
    assert sum(halves) == phase1["phase1_tokens"] == len(np.load(repo / "data/tokens/train_ids.npy")) and min(halves) > 0
    assert CstarReader(repo / "data/cstar/train").gather(np.arange(3)).shape == (3, 2, 2 * TINY["model"]["context_dim"])
    with_blocks = json.loads((repo / "metrics/eval.json").read_text())
    assert with_blocks["params_trainable_phase1"] == 2 * with_previous["params_trainable_phase1"]
    d_c = TINY["model"]["context_dim"]  # each TokenBlock layer reads d_c more of C* and 2 x d_c more previous contexts
    assert with_blocks["params_trainable_phase2"] - with_previous["params_trainable_phase2"] == 2 * 3 * d_c * 384

    # the untrained control: the ContextBlock as seeded and initialised, never stepped
    control = sh(repo, "dvc", "exp", "run", "-S", "phase1.max_iterations=0")
    assert ran_stages(control.stdout) == {"train_context", "generate_cstar", "train_token", "evaluate"}
    phase1 = json.loads((repo / "metrics/train_context.json").read_text())
    assert (phase1["iterations"], phase1["convergence_rate"]) == (0, None)
    blocks, cfg = load_context_blocks(repo / "data/context")
    for j, block in enumerate(blocks):  # each from its own seed
        seed_everything(block_seed(0, j))
        initial = ContextBlock(cfg)
        assert all(torch.equal(block.state_dict()[k], v) for k, v in initial.state_dict().items())

    # back to the previous experiment's params: DVC's run cache restores every stage, figures included
    back = sh(repo, "dvc", "exp", "run", "-S", f"phase1.max_iterations={TINY['phase1']['max_iterations']}")
    assert ran_stages(back.stdout) == set() and back.stdout.count("is cached - skipping run") == 4
    assert json.loads((repo / "metrics/eval.json").read_text()) == with_blocks


def use_the_trained_models(repo: Path, metrics: dict) -> None:
    """ctxlm score on the test split's text gives evaluate's figures exactly; ctxlm, the LSTM and the
    Transformer generate; an exported folder generates what the workspace does; ctxlm probe runs on
    the workspace with every representation."""
    documents = pd.read_parquet(repo / "data/corpus/documents.parquet")
    test = documents.loc[documents.split == "test"].sort_values("key", kind="stable")  # tokenize's order: by sampling key
    (repo / "test_split.txt").write_text("\n\n".join(test.text))  # scenes hold no blank line
    sh(repo, sys.executable, "-m", "ctxlm", "score", "test_split.txt", "--out", "scores.json")
    totals = json.loads((repo / "scores.json").read_text())["totals"]
    assert (totals["tokens"], totals["perplexity"], totals["accuracy"], totals["bits_per_byte"]) == (
        metrics["test_positions"], metrics["test_ppl"], metrics["test_acc"], metrics["test_bits_per_byte"])
    prompt = ["generate", "to be, or not", "--max-tokens", "8", "--greedy"]
    texts = {model: sh(repo, sys.executable, "-m", "ctxlm", *prompt, "--model", model).stdout for model in ("ctxlm", "lstm", "transformer")}
    assert all(text.startswith("to be, or not") and len(text) > len("to be, or not\n") for text in texts.values()), texts
    sh(repo, sys.executable, "-m", "ctxlm", "export", str(repo.parent / "exported"))
    assert sh(repo.parent, sys.executable, "-m", "ctxlm", *prompt, "--model", "exported").stdout == texts["ctxlm"]
    sh(repo, sys.executable, "-m", "ctxlm", "probe", "--train-positions", "3000", "--val-positions", "1200", "--classes", "30", "--out", "probe.json")
    probe = json.loads((repo / "probe.json").read_text())
    assert [row["k"] for row in probe["by_k"]] == list(range(17)) and set(probe["within_2x_of_unigram"]) == {"ctxlm", "untrained", "bag", "lstm"}
    assert probe["workspace"]["commit"] is None and probe["workspace"]["figures"] == {  # no commit yet; up to date: every figure quoted
        "phase1_convergence_rate": json.loads((repo / "metrics/train_context.json").read_text())["convergence_rate"],
        "ctxlm_test_ppl": metrics["test_ppl"], "lstm_test_ppl": json.loads((repo / "metrics/baselines/lstm.json").read_text())["test_ppl"]}
    now = probe["by_k"][0]  # C*_i and the LSTM's state are computed from t_i: they name it better than the most frequent token does
    assert now["ctxlm"]["accuracy"] > 1.3 * now["unigram_accuracy"] and now["lstm"]["accuracy"] > 0.9  # measured 0.28 vs 0.17; 1.0
    for scratch in ("test_split.txt", "scores.json", "probe.json"):
        (repo / scratch).unlink()


@pytest.mark.slow
def test_same_seed_same_metrics(repo: Path):
    sh(repo, "dvc", "repro")
    first = json.loads((repo / "metrics/eval.json").read_text())
    sh(repo, "dvc", "repro", "--force", "--no-run-cache")
    second = json.loads((repo / "metrics/eval.json").read_text())
    assert {k: first[k] for k in QUALITY} == {k: second[k] for k in QUALITY}


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": {"num_layers": 0}}, "model.num_layers: Input should be greater than or equal to 1"),
        ({"model": {"context_dim": "abc"}}, "model.context_dim: Input should be a valid integer"),
        ({"data": {"source": "no/such/corpus.txt"}}, "data.source: path 'no/such/corpus.txt' does not exist"),
        ({"embedding": {"model": "./no-such-model"}}, "embedding.model: folder './no-such-model' does not exist"),
    ],
)
def test_bad_input_stops_with_one_line_and_no_output(repo: Path, overrides, message):
    write_params(repo, overrides)
    result = sh(repo, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (repo / "dvc.lock").exists() or "tokenize" not in (repo / "dvc.lock").read_text()
    assert not (repo / "data/tokens").exists()


@pytest.mark.slow
def test_a_killed_repro_resumes_and_matches_an_uninterrupted_run(repo: Path):
    """SIGKILL `dvc repro` (dvc and the stage) during train_token; the next `dvc repro` resumes the
    stage from its checkpoint and ends with the metrics of a run never interrupted."""
    write_params(repo, {"phase2": {"epochs": 4, "patience": 4}})
    every_step = {"CTXLM_CHECKPOINT_SECONDS": "0"}
    checkpoint = repo / "data/checkpoints/train_token/state.pt"
    process = subprocess.Popen(["dvc", "repro"], cwd=repo, env={**ENV, **every_step}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert process.poll() is None, "dvc repro ended before train_token saved a checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(1.0)  # well into training
    assert process.poll() is None, "train_token finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (repo / "data/token_model").exists()

    resumed = sh(repo, "dvc", "repro", **every_step)
    assert ran_stages(resumed.stdout) == {"train_token", "evaluate"}  # the stages done before the kill stay done
    assert "train_token: resuming from data/checkpoints/train_token at epoch" in resumed.stdout
    assert not checkpoint.parent.exists()  # a finished stage removes its checkpoint
    after_kill = json.loads((repo / "metrics/eval.json").read_text())
    curves = repo / "metrics/curves/train_token/plots/metrics"
    curves_after_kill = {f.name: f.read_text() for f in curves.iterdir()}

    sh(repo, "dvc", "repro", "--force", "--no-run-cache", "--downstream", "train_token")
    uninterrupted = json.loads((repo / "metrics/eval.json").read_text())
    assert {k: after_kill[k] for k in QUALITY} == {k: uninterrupted[k] for k in QUALITY}
    assert curves_after_kill == {f.name: f.read_text() for f in curves.iterdir()}  # every epoch's row, once


def scene_documents(count: int, lines: int) -> list[list[str]]:
    """The first `count` Shakespeare scenes, each cut to its first `lines` lines (no blank lines)."""
    from ctxlm.data.sources import shakespeare_documents

    texts = [scene["text"] for scene in shakespeare_documents([], [])[:count]]
    return [text.splitlines()[:lines] for text in texts]


@pytest.mark.slow
def test_every_corpus_form_runs_the_tiny_pipeline(repo: Path, tmp_path: Path):
    """The same documents written in every form `data.source` accepts (tests/corpus_forms.py): the
    first form runs every stage; each other form reruns prepare (and tokenize) only, and gives the
    same tokens (the documents and their splits do not depend on the form, and tokenize orders them
    by their sampling keys, whatever order the form was read in), so DVC
    reuses the trained models and the metrics stay the same."""
    documents = scene_documents(80, 10)
    tokens_of_first = metrics_of_first = None
    for form, write in FORMS.items():
        folder = tmp_path / "forms" / form.replace(" ", "_").replace(":", "")
        folder.mkdir(parents=True)
        source, params = write(folder, documents)
        write_params(repo, {"data": {"source": source, "text_field": params.get("text_field", "text")}})
        ran = ran_stages(sh(repo, "dvc", "repro", HF_HUB_CACHE=str(corpus_forms.hub_cache(folder))).stdout)
        tokens = {f.relative_to(repo).as_posix(): f.read_bytes() for f in sorted((repo / "data/tokens").rglob("*")) if f.is_file()}
        metrics = json.loads((repo / "metrics/eval.json").read_text())
        counts = json.loads((repo / "metrics/tokenize.json").read_text())
        print(f"{form}: {counts['train_tokens']} train, {counts['val_tokens']} val, {counts['test_tokens']} test tokens "
              f"({counts['train_documents']}, {counts['val_documents']}, {counts['test_documents']} documents)")
        if tokens_of_first is None:
            assert ran == CTXLM, form
            tokens_of_first, metrics_of_first = tokens, metrics
        else:
            assert "prepare" in ran and ran <= {"prepare", "tokenize"}, form  # (tokenize too when the titles differ)
            assert tokens == tokens_of_first, form
            assert metrics == metrics_of_first, form
