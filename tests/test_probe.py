"""Linear probes against representations whose content is known: a feature that encodes the token 3
positions back, the same features shuffled, and the earlier-token targets by hand."""

import math

import numpy as np
import pytest
import torch

from ctxlm.evaluation.metrics import earlier_tokens, linear_probe

VOCAB = 20


def test_earlier_tokens_by_hand():
    """Documents 0-2 and 3-6: a target before its position's document is -1."""
    ids = np.array([10, 11, 12, 13, 14, 15, 16])
    offsets = np.array([0, 3, 7])
    positions = np.array([0, 1, 2, 3, 4, 6])
    assert earlier_tokens(ids, offsets, positions, 0).tolist() == [10, 11, 12, 13, 14, 16]
    assert earlier_tokens(ids, offsets, positions, 1).tolist() == [-1, 10, 11, -1, 13, 15]
    assert earlier_tokens(ids, offsets, positions, 3).tolist() == [-1, -1, -1, -1, -1, 13]


def features_of_the_token_three_back(n: int, rng) -> tuple[np.ndarray, torch.Tensor]:
    """A random sequence of VOCAB symbols and, at each position i >= 3, the one-hot of t_{i-3} plus
    noise, beside 12 columns of pure noise."""
    ids = rng.integers(0, VOCAB, size=n)
    x = np.concatenate([np.eye(VOCAB)[np.roll(ids, 3)], np.zeros((n, 12))], axis=1) + 0.1 * rng.standard_normal((n, VOCAB + 12))
    return ids, torch.from_numpy(x).float()


def probe_at(ids, x, k, train, test, seed=0):
    offsets = np.array([0, len(ids)])
    y = torch.from_numpy(earlier_tokens(ids, offsets, np.arange(len(ids)), k))
    return linear_probe(x[train], y[train], x[test], y[test], VOCAB, seed)


def test_a_probe_reads_the_token_its_features_encode_and_nothing_further_back():
    rng = np.random.default_rng(0)
    ids, x = features_of_the_token_three_back(6000, rng)
    train, test = np.arange(10, 4500), np.arange(4500, 6000)
    unigram = np.bincount(ids[test], minlength=VOCAB).max() / len(test)  # the most frequent symbol's share, ~1/20
    three = probe_at(ids, x, 3, train, test)
    assert three.accuracy > 0.99 and three.bits < 0.5  # chance: log2(20) = 4.32 bits
    eight = probe_at(ids, x, 8, train, test)
    assert eight.accuracy < 2 * unigram
    assert abs(eight.bits - math.log2(VOCAB)) < 0.2  # chance: about log2(20) = 4.32 bits


def test_a_probe_of_features_shuffled_against_their_positions_is_at_chance():
    rng = np.random.default_rng(1)
    ids, x = features_of_the_token_three_back(6000, rng)
    shuffled = x[torch.from_numpy(rng.permutation(len(x)))]
    train, test = np.arange(10, 4500), np.arange(4500, 6000)
    unigram = np.bincount(ids[test], minlength=VOCAB).max() / len(test)
    assert probe_at(ids, shuffled, 3, train, test).accuracy < 2 * unigram


def test_the_probed_representations_are_the_ones_named():
    """Two documents (20 and 7 tokens), every predicted position (not a document's last token):
    "ctxlm" the stored rows given; "untrained" the control's C* by the per-token loop; "bag" the
    mean of up to 17 embeddings back within the document, by hand; "lstm" the LSTM's hidden state
    over the document from its start (both shorter than its 32-token windows)."""
    from conftest import make_block, make_config
    from ctxlm.data.tokens import TokenizedSplit
    from ctxlm.evaluation.baselines import build_baseline
    from ctxlm.generation.cstar import naive_cstar
    from ctxlm.generation.inference import probe_features
    from ctxlm.model import ContextBlocks, input_features

    rng = np.random.default_rng(2)
    offsets = np.array([0, 20, 27])
    ids = rng.integers(0, 50, size=27).astype(np.int32)
    docs = TokenizedSplit(ids, offsets, 0, 0)
    torch.manual_seed(0)
    embedding = torch.randn(50, 8)
    control = ContextBlocks(make_config(), [make_block()])
    lstm = build_baseline("lstm", make_config(), embedding, True, True, 32, 1).eval()
    trained = rng.standard_normal((27, 2, 12)).astype(np.float32)
    features = probe_features(docs, trained, control, embedding, lstm)
    positions = [*range(19), *range(20, 26)]
    assert torch.equal(features["ctxlm"], torch.from_numpy(trained[positions].reshape(25, 24)))
    naive = torch.cat([naive_cstar(control, input_features(embedding, torch.from_numpy(ids[a:b]).long()[:, None])) for a, b in ((0, 20), (20, 27))])
    torch.testing.assert_close(features["untrained"], naive[positions].reshape(25, 24), rtol=1e-5, atol=1e-5)
    bag = torch.stack([embedding[ids[max(0 if i < 20 else 20, i - 16) : i + 1]].mean(0) for i in positions])
    torch.testing.assert_close(features["bag"], bag)
    with torch.no_grad():
        hidden = torch.cat([lstm.hidden(torch.from_numpy(ids[a:b]).long()[None])[0] for a, b in ((0, 20), (20, 27))])
    torch.testing.assert_close(features["lstm"], hidden[positions])


def test_the_report_tabulates_the_probe_and_says_where_each_falls_to_the_unigram_guess(tmp_path):
    from ctxlm.results.report import probe_section

    def row(k, ctxlm, bag):
        return {"k": k, "coverage": 0.5, "unigram_accuracy": 0.1,
                "ctxlm": {"accuracy": ctxlm, "bits": 1.0, "epochs": 3}, "bag": {"accuracy": bag, "bits": 2.0, "epochs": 1}}

    probe = {"classes": 1000, "train_positions": 20000, "val_positions": 10000,
             "by_k": [row(k, max(0.1, 0.9 - 0.3 * k), 0.3) for k in range(17)], "within_2x_of_unigram": {"ctxlm": 3, "bag": None}}
    lines = probe_section(probe, tmp_path / "probe.png")
    assert "| 1 | 50.0% | 0.100 | 0.600 (1.00 bits) | 0.300 (2.00 bits) |" in lines
    assert "Accuracy falls to within 2x of the unigram guess from k = ctxlm's C*: 3; mean of the last 17 embeddings: not by k = 16." in lines
    assert (tmp_path / "probe.png").stat().st_size > 0
    probe["workspace"] = {"commit": "0123456789abcdef", "params_changed": {"model.num_layers": 2},
                          "figures": {"phase1_convergence_rate": 0.5676, "lstm_test_ppl": 160.92}}
    said = " ".join(probe_section(probe, tmp_path / "probe.png"))
    assert ("It ran on the DVC workspace of commit `0123456789`, params.yaml as committed but model.num_layers=2 "
            "(phase 1's convergence rate 0.568; the LSTM's test PPL 160.9). Accuracy, then bits, by k:") in said
    probe["workspace"] = {"commit": None, "params_changed": None, "figures": {}}
    said = " ".join(probe_section(probe, tmp_path / "probe.png"))
    assert "It ran on the DVC workspace without a commit, params.yaml never committed. Accuracy, then bits, by k:" in said


def test_a_workspace_record_names_its_commit_and_the_params_changed_and_quotes_no_figure_dvc_does_not_vouch_for(tmp_path, monkeypatch):
    """A metrics file is quoted only when `dvc status` finds its stage up to date: here there is no DVC
    project at all, so the committed-looking eval.json is left out (the pipeline test checks that an
    up-to-date workspace's figures are quoted)."""
    import shutil
    import subprocess

    import yaml

    from conftest import REPO
    from ctxlm.config import load_params
    from ctxlm.results.experiments import workspace_record

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "params"]):
        subprocess.run(["git", *command], check=True, capture_output=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["model"]["num_layers"] = params["model"]["num_layers"] + 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text('{"test_ppl": 248.4, "val_ppl": 260.0}')
    record = workspace_record(load_params(tmp_path / "params.yaml").model_dump())
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert record == {"commit": head, "params_changed": {"model.num_layers": params["model"]["num_layers"]}, "figures": {}}


def test_probe_memory_finds_the_first_k_a_representation_forgets():
    """Features holding t_i and t_(i-1) (one-hots plus noise): near-perfect at k = 0 and 1, at
    chance from k = 2, which is where it falls to within 2x of the unigram guess."""
    from ctxlm.data.tokens import TokenizedSplit
    from ctxlm.generation.inference import PROBE_DEPTH, probe_memory

    def split(n, seed):
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, VOCAB, size=n).astype(np.int32)
        docs = TokenizedSplit(ids, np.array([0, n // 2, n]), 0, 0)
        positions = np.flatnonzero(np.arange(n) != n // 2 - 1)[:-1]  # every token with a next one in its document
        onehot = np.eye(VOCAB)
        x = np.concatenate([onehot[ids], onehot[np.roll(ids, 1)]], axis=1)[positions] + 0.1 * rng.standard_normal((len(positions), 2 * VOCAB))
        return docs, {"ctxlm": torch.from_numpy(x).float()}

    result = probe_memory(*split(4000, 0), *split(2000, 1), classes=VOCAB, seed=0)
    by_k = {row["k"]: row for row in result["by_k"]}
    assert len(by_k) == PROBE_DEPTH + 1 and result["classes"] == VOCAB
    assert by_k[0]["ctxlm"]["accuracy"] > 0.95 and by_k[1]["ctxlm"]["accuracy"] > 0.95
    assert by_k[1]["coverage"] == pytest.approx(1 - 2 / 1998)  # the first position of each validation document has no t_(i-1)
    assert result["within_2x_of_unigram"] == {"ctxlm": 2}
