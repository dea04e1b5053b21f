"""The meaning of ctxlm's core computations, each against an expectation computed independently of
the code under test: by hand on a tiny example, or by a plain loop written here.

If one of these fails, a number in metrics/ means something other than its documentation says."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_block, make_config
from ctxlm.config import Phase1Params
from ctxlm.data.files import TokenSplit, save_tokens, write_manifest
from ctxlm.data.shards import CstarReader
from ctxlm.evaluation.baselines import IGNORE, SequenceData
from ctxlm.evaluation.metrics import count, effective_rank, split_figures
from ctxlm.evaluation.ngram import trigrams
from ctxlm.generation.cstar import generate_split
from ctxlm.model import ContextBlock, TokenModel, input_features, token_windows
from ctxlm.training.phase1 import oacd_loss, train_context_block
from ctxlm.training.phase2 import SplitData, training_loss

CPU = torch.device("cpu")
# Three documents of 4, 1 and 3 tokens, ids chosen by hand so that every target is visible.
DOC_IDS = [[11, 12, 13, 14], [21], [31, 32, 33]]


def hand_split(folder, docs=DOC_IDS, split="val") -> TokenSplit:
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    save_tokens(folder, split, np.concatenate(docs), offsets)
    return TokenSplit(folder, split)


def next_token_examples(docs) -> list[tuple[int, int, int]]:
    """(flat position, current token, target) of every prediction, by a plain loop over documents:
    each token predicts the next token of its own document; a document's last token predicts nothing."""
    examples, flat = [], 0
    for doc in docs:
        for i in range(len(doc) - 1):
            examples.append((flat + i, doc[i], doc[i + 1]))
        flat += len(doc)
    return examples


EXPECTED = next_token_examples(DOC_IDS)  # [(0,11,12), (1,12,13), (2,13,14), (5,31,32), (6,32,33)]


# ---- examples: every split, ctxlm and every baseline score the same positions with the same targets

def test_the_hand_made_expectation_itself():
    assert EXPECTED == [(0, 11, 12), (1, 12, 13), (2, 13, 14), (5, 31, 32), (6, 32, 33)]


def test_ctxlm_examples_are_next_tokens_of_the_same_document(tmp_path):
    tokens = hand_split(tmp_path)
    cstar = np.arange(len(tokens), dtype=np.float32).reshape(-1, 1, 1)  # row i holds i: shows which C* is read
    (tmp_path / "c").mkdir()
    np.save(tmp_path / "c/shard-00000.npy", cstar)
    write_manifest(tmp_path / "c", {"shards": [{"file": "shard-00000.npy", "rows": len(tokens)}]})
    data = SplitData(CstarReader(tmp_path / "c"), tokens, k=2)
    contexts, windows, targets = data.batch(data.positions, CPU)
    assert data.positions.tolist() == [p for p, _, _ in EXPECTED]
    assert targets.tolist() == [t for _, _, t in EXPECTED]
    assert windows[:, -1].tolist() == [c for _, c, _ in EXPECTED]  # x_i is the current token
    assert contexts[:, 0, 0].tolist() == [float(p) for p, _, _ in EXPECTED]  # C*_i of the same position
    assert windows[:, 0].tolist() == [-1, 11, 12, -1, 31]  # k = 2: the token before, padding at a start


@pytest.mark.parametrize("seq_len, stride", [(2, 2), (3, 1), (8, 4)])
def test_neural_baselines_score_the_same_positions_and_targets(tmp_path, seq_len, stride):
    data = SequenceData(hand_split(tmp_path), seq_len, stride)
    scored = []
    for w in range(len(data)):
        inputs, targets = data.batch(np.array([w]), CPU)
        for column in np.flatnonzero(targets[0].numpy() != IGNORE):
            scored.append((int(data.starts[w]) + int(column), int(inputs[0, column]), int(targets[0, column])))
    assert sorted(scored) == EXPECTED and data.tokens == len(EXPECTED)


def test_kneser_ney_scores_the_same_positions_and_targets(tmp_path):
    tokens = hand_split(tmp_path)
    u, v, w, position = trigrams(np.asarray(tokens.ids), tokens.offsets, bos=99)
    assert list(zip(position.tolist(), v.tolist(), w.tolist())) == EXPECTED
    assert u.tolist() == [99, 11, 12, 99, 31]  # the token before, the start symbol at a document start


# ---- phase 1: one and two iterations against a plain reference loop

def reference_phase1(block: ContextBlock, x, doc_starts, params: Phase1Params, generator, iterations: int) -> list[float]:
    """The phase-1 algorithm of the design, written plainly: per-token loops for the shift and the
    noise, one OACD loss per mini-batch weighted by its size, clip, one Adam step per iteration."""
    n, d_c = x.shape[0], block.cfg.context_dim
    contexts = torch.randn(n, d_c, generator=generator) * params.init_std
    optimizer = torch.optim.Adam(block.parameters(), lr=params.lr)
    size = math.ceil(n / math.ceil(n / params.batch_tokens))
    losses = []
    for _ in range(iterations):
        prev = torch.zeros(n, d_c)
        for i in range(n):
            if not doc_starts[i]:
                prev[i] = contexts[i - 1]
        noise = torch.randn(n, d_c, generator=generator) * params.context_noise
        for i in range(n):
            if not doc_starts[i]:
                prev[i] += noise[i]
        optimizer.zero_grad()
        total = 0.0
        new = torch.empty(n, d_c)
        for a in range(0, n, size):
            out = block(prev[a : a + size], x[a : a + size])[:, -1]
            loss = oacd_loss(out, params.centroid_weight) * (out.shape[0] / n)
            loss.backward()
            total += loss.item()
            new[a : a + size] = out.detach()
        torch.nn.utils.clip_grad_norm_(block.parameters(), params.gradient_clip)
        optimizer.step()
        contexts = new
        losses.append(total)
    return losses


def test_phase1_iterations_equal_a_plain_reference():
    torch.manual_seed(0)
    n = 40
    x = torch.randn(n, 8)
    doc_starts = torch.zeros(n, dtype=torch.bool)
    doc_starts[[0, 7, 19, 20, 33]] = True
    params = Phase1Params(max_iterations=2, batch_tokens=10, context_noise=0.5, early_stop_convergence=1.0, lr=0.01)
    block = make_block(num_layers=2).train()
    reference_block = make_block(num_layers=2).train()
    reference_block.load_state_dict(block.state_dict())
    result = train_context_block(block, x, doc_starts, params, torch.Generator().manual_seed(3))
    expected = reference_phase1(reference_block, x, doc_starts, params, torch.Generator().manual_seed(3), 2)
    assert [h["loss"] for h in result.history] == pytest.approx(expected, rel=1e-6)
    for (name, p), q in zip(block.named_parameters(), reference_block.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_phase1_noise_never_touches_a_document_start():
    """Where every token starts a document, the noise (whatever its size) must change nothing."""
    x = torch.randn(12, 8)
    all_starts = torch.ones(12, dtype=torch.bool)
    losses = []
    for noise in (0.0, 5.0):
        torch.manual_seed(0)
        block = make_block(num_layers=1)
        params = Phase1Params(max_iterations=1, batch_tokens=12, context_noise=noise, early_stop_convergence=1.0)
        losses.append(train_context_block(block, x, all_starts, params, torch.Generator().manual_seed(1)).history[0]["loss"])
    assert losses[0] == losses[1]


def test_oacd_loss_of_a_hand_made_batch_with_a_centroid_weight():
    contexts = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [0.0, 0.0]])
    # centroid (1, 1), every deviation has squared norm 2: Frobenius norm sqrt(8), over B = 4
    assert oacd_loss(contexts, 0.5).item() == pytest.approx(-math.sqrt(8) / 4 + 0.5 * 2)


def test_a_small_adam_step_on_the_oacd_loss_increases_dispersion():
    torch.manual_seed(0)
    block = make_block(num_layers=1)
    prev, x = torch.randn(64, block.cfg.context_dim) * 0.1, torch.randn(64, block.cfg.input_dim)

    def dispersion() -> float:
        out = block(prev, x)[:, -1]
        return torch.linalg.vector_norm(out - out.mean(0)).item() / out.shape[0]

    before = dispersion()
    optimizer = torch.optim.Adam(block.parameters(), lr=1e-3)
    oacd_loss(block(prev, x)[:, -1], 0.0).backward()
    optimizer.step()
    assert dispersion() > before


# ---- effective rank on matrices with known spectra

def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.outer(torch.arange(1.0, 6.0), torch.tensor([1.0, -2.0, 0.5]))) == pytest.approx(1.0)
    # singular values (2, 1): p = (2/3, 1/3), exp(entropy) by hand
    by_hand = math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert effective_rank(torch.diag(torch.tensor([2.0, 1.0]))) == pytest.approx(by_hand)  # 1.8899
    rotated = torch.linalg.qr(torch.randn(5, 5))[0][:, :2] @ torch.diag(torch.tensor([2.0, 1.0]))  # same spectrum
    assert effective_rank(rotated) == pytest.approx(by_hand)


# ---- input features

def test_input_features_by_hand():
    embedding = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 8.0]])
    std = math.sqrt(1.25 + 1e-5)  # LayerNorm's biased variance of (1, 2, 3, 4), plus its eps
    row0 = [(v - 2.5) / std for v in (1, 2, 3, 4)]
    std1 = math.sqrt(12 + 1e-5)  # (0, 0, 0, 8): mean 2, variance 12
    row1 = [(v - 2) / std1 for v in (0, 0, 0, 8)]
    windows = token_windows(torch.tensor([0, 1, 1]), torch.tensor([True, False, True]), k=2)  # oldest first
    assert windows.tolist() == [[-1, 0], [0, 1], [-1, 1]]
    x = input_features(embedding, windows)
    torch.testing.assert_close(x, torch.tensor([[0.0] * 4 + row0, row0 + row1, [0.0] * 4 + row1]))


# ---- parameter counts by arithmetic

@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("tying", [True, False])
@pytest.mark.parametrize("freeze", [True, False])
def test_parameter_counts_by_arithmetic(layers, tying, freeze):
    V, d_e, d_c = 50, 8, 12
    cfg = make_config(vocab_size=V, embed_dim=d_e, context_dim=d_c, num_layers=layers)
    context_layer = (d_c + d_e) * d_c + d_c + 2 * d_c  # W_l [c; x] + b_l, LayerNorm weight and bias
    token_layer = (d_c + d_e) * d_e + d_e + 2 * d_e  # U_l [c; h] + a_l, LayerNorm
    head = 0 if tying else V * d_e + V
    model = TokenModel(cfg, torch.randn(V, d_e), weight_tying=tying, freeze_embedding=freeze)
    assert count(ContextBlock(cfg)) == layers * context_layer
    assert count(model) == layers * token_layer + V * d_e + head
    assert count(model, trainable_only=True) == layers * token_layer + (0 if freeze else V * d_e) + head


# ---- the chunked bf16 training loss against F.cross_entropy in fp32

BF16_LOSS_TOLERANCE = 2e-3  # relative; bf16 keeps 8 significant bits of each product's inputs


def test_chunked_bf16_loss_is_fp32_cross_entropy_within_tolerance(tmp_path):
    torch.manual_seed(0)
    block = make_block(embed_dim=32, vocab_size=300)
    embedding = torch.randn(300, 32)
    tokens = hand_split(tmp_path, [list(np.random.default_rng(0).integers(0, 300, 200))], split="train")
    (tmp_path / "c").mkdir()
    write_manifest(tmp_path / "c", {"shards": generate_split(block, embedding, tokens, tmp_path / "c", 64, "C*")})
    data = SplitData(CstarReader(tmp_path / "c"), tokens, 1)
    contexts, windows, targets = data.batch(data.positions, CPU)
    model = TokenModel(block.cfg, embedding, weight_tying=True, freeze_embedding=True)
    exact = F.cross_entropy(model(contexts, windows).double(), targets).item()
    chunked = training_loss(model, contexts, windows, targets, "bf16", CPU, chunk=16).item()
    assert chunked == pytest.approx(exact, rel=BF16_LOSS_TOLERANCE)
    assert training_loss(model, contexts, windows, targets, "fp32", CPU, chunk=16).item() == pytest.approx(exact, rel=1e-5)


# ---- a split's figures

def test_split_figures_by_hand():
    figures = split_figures("test", loss=math.log(8), accuracy=0.25, positions=100, text={"predicted_bytes": 150, "predicted_chars": 120})
    assert figures["test_ppl"] == pytest.approx(8.0)
    assert figures["test_bits_per_byte"] == pytest.approx(3 * 100 / 150)  # 3 bits a token, 100 tokens, 150 bytes
    assert figures["test_bits_per_char"] == pytest.approx(3 * 100 / 120)
    assert figures["test_acc"] == 0.25 and figures["test_positions"] == 100


# ---- bits per byte: the text the predicted tokens cover, by hand

def test_predicted_text_runs_from_the_end_of_the_first_token_to_the_end_of_the_last():
    from ctxlm.data.tokenizer import load_tokenizer, resolve_model_dir
    from ctxlm.data.tokens import tokenize_documents

    tokenizer = load_tokenizer(resolve_model_dir("minilm"))
    texts = ["hello world foo", "ünïcode a", "one two three four"]
    tokens = tokenize_documents(tokenizer, texts, budget=7)  # 3 + 2 + the first 2 of the last document
    assert np.diff(tokens.offsets).tolist() == [3, 2, 2]
    predicted = [" world foo", " a", " two"]  # what the tokens after each document's first one cover
    assert tokens.predicted_chars == sum(len(p) for p in predicted) == 16
    assert tokens.predicted_bytes == sum(len(p.encode()) for p in predicted) == 16
    whole = tokenize_documents(tokenizer, ["héllo wörld"], budget=100)  # MiniLM strips accents: offsets still index the text
    assert whole.predicted_chars == len(" wörld") and whole.predicted_bytes == len(" wörld".encode())


# ---- the train loss of every epoch is measured on a fixed sample, in fp32

def test_the_train_loss_is_measured_after_the_epoch_on_a_seeded_sample(tmp_path):
    from ctxlm.config import Phase2Params
    from ctxlm.training.phase2 import evaluate_split, seeded_sample, train_token_model

    torch.manual_seed(0)
    block = make_block(embed_dim=16, vocab_size=60)
    embedding = torch.randn(60, 16)
    rng = np.random.default_rng(0)
    data = {}
    for split, lengths in (("train", [50, 70, 30]), ("val", [25, 20])):
        tokens = hand_split(tmp_path, [list(rng.integers(0, 60, n)) for n in lengths], split=split)
        (tmp_path / split / "c").mkdir(parents=True)
        write_manifest(tmp_path / split / "c", {"shards": generate_split(block, embedding, tokens, tmp_path / split / "c", 64, split)})
        data[split] = SplitData(CstarReader(tmp_path / split / "c"), tokens, 1)
    model = TokenModel(block.cfg, embedding, weight_tying=True, freeze_embedding=True)
    params = Phase2Params(epochs=1, patience=1, batch_size=16, precision="fp32")
    result = train_token_model(model, data["train"], data["val"], params, CPU, torch.Generator().manual_seed(0), sample_seed=4)
    sample = seeded_sample(len(data["train"]), len(data["val"]), 4)
    assert len(sample) == len(data["val"]) == 43 and len(set(sample)) == 43 and np.all(np.diff(sample) > 0)
    assert np.array_equal(sample, seeded_sample(len(data["train"]), 43, 4))
    loss, acc = evaluate_split(model, data["train"], CPU, sample=sample)  # the weights after the (only) epoch
    assert result.history[0]["train_loss"] == loss and result.history[0]["train_acc"] == acc
    assert result.history[0]["val_loss"] == evaluate_split(model, data["val"], CPU)[0]
    assert result.history[0]["running_train_ppl"] != result.history[0]["train_ppl"]  # the mean on the way differs


def test_a_non_finite_validation_loss_stops_with_a_clear_error():
    from ctxlm.config import Phase2Params
    from ctxlm.errors import CtxlmError
    from ctxlm.training.phase2 import TrainingTask, train_epochs

    model = torch.nn.Linear(2, 1)
    task = TrainingTask(examples=4, batch_examples=2, tokens=4, batches=lambda order, sizes: [torch.ones(2, 2)] * 2,
                        loss=lambda batch: (model(batch).pow(2).mean(), 2), validate=lambda: (math.nan, 0.0),
                        measure_train=lambda: (1.0, 0.0))
    with pytest.raises(CtxlmError, match=r"toy: the validation loss became nan after epoch 1; lower phase2.lr"):
        train_epochs(model, task, Phase2Params(epochs=2, patience=1), torch.Generator(), None, "toy")


def test_evaluate_reports_the_final_layer_s_effective_rank_and_each_layer_s_in_order(tmp_path, monkeypatch):
    """3 layers: metrics/eval.json's effective_rank is that of the validation C*'s layer 3 (the final
    layer, the one OACD acts on) and effective_rank_by_layer's layer_l that of layer l, each against
    numpy's SVD of the rows evaluate samples, read straight from the shard files. Runs the stage."""
    import json
    import shutil

    import yaml

    from conftest import REPO
    from ctxlm.data.shards import save_embedding
    from ctxlm.model import ContextBlocks
    from ctxlm.weights import CONTEXT_WEIGHTS, TOKEN_WEIGHTS, context_state, save_weights
    from stages import evaluate

    block = make_block(num_layers=3)
    cfg = block.cfg
    blocks = ContextBlocks(cfg, [block])
    embedding = torch.randn(cfg.vocab_size, cfg.embed_dim)
    tokens = tmp_path / "data/tokens"
    tokens.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, lengths in (("train", [20]), ("val", [30, 25, 18]), ("test", [20, 15])):
        save_tokens(tokens, split, rng.integers(0, cfg.vocab_size, sum(lengths)), np.cumsum([0, *lengths]))
    save_embedding(tokens, embedding)
    write_manifest(tokens, {split: {"predicted_bytes": 100, "predicted_chars": 100} for split in ("train", "val", "test")})
    (tmp_path / "data/context").mkdir()
    save_weights(tmp_path / "data/context", CONTEXT_WEIGHTS, context_state(blocks), cfg.to_metadata())
    write_manifest(tmp_path / "data/context", {})
    model = TokenModel(cfg, embedding, weight_tying=True, freeze_embedding=True)
    (tmp_path / "data/token_model").mkdir()
    save_weights(tmp_path / "data/token_model", TOKEN_WEIGHTS, model.state_dict(),
                 {**cfg.to_metadata(), "weight_tying": "True", "freeze_embedding": "True"})
    write_manifest(tmp_path / "data/token_model", {})
    for split in ("val", "test"):
        folder = tmp_path / "data/cstar" / split
        folder.mkdir(parents=True)
        write_manifest(folder, {"shards": generate_split(blocks, embedding, TokenSplit(tokens, split), folder, shard_tokens=20, desc=split)})
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/train_token.json").write_text(json.dumps({"train_ppl": 40.0, "best_epoch": 1, "epochs_run": 1}))
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    evaluate.main(params_file=tmp_path / "params.yaml", debug=True)
    metrics = json.loads((tmp_path / "metrics/eval.json").read_text())

    folder = tmp_path / "data/cstar/val"
    cstar = np.concatenate([np.load(folder / s["file"]) for s in json.loads((folder / "manifest.json").read_text())["meta"]["shards"]])
    assert cstar.shape == (73, 3, cfg.context_dim)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    chosen = np.sort(np.random.default_rng(params["seed"]).choice(len(cstar), size=min(params["evaluate"]["rank_rows"], len(cstar)), replace=False))

    def numpy_rank(layer: int) -> float:
        s = np.linalg.svd(cstar[chosen, layer].astype(np.float64), compute_uv=False)
        p = s / s.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    expected = {f"layer_{l + 1}": numpy_rank(l) for l in range(3)}
    assert min(abs(a - b) for a, b in [(expected["layer_1"], expected["layer_2"]), (expected["layer_2"], expected["layer_3"]),
                                       (expected["layer_1"], expected["layer_3"])]) > 1e-3  # the layers are told apart
    assert list(metrics["effective_rank_by_layer"]) == ["layer_1", "layer_2", "layer_3"]
    assert metrics["effective_rank_by_layer"] == pytest.approx(expected, rel=1e-9)
    assert metrics["effective_rank"] == pytest.approx(expected["layer_3"], rel=1e-9)
    assert metrics["effective_rank_ratio"] == pytest.approx(expected["layer_3"] / cfg.context_dim, rel=1e-9)
