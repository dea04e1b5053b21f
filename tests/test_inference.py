"""Generation and scoring against the batch path: the stepper's logits at every step are those of
C* from the generator (cstar_into) and the TokenModel on the whole text, and the baselines' those of
their whole-sequence forward pass."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_block
from ctxlm.data.tokens import TokenizedSplit
from ctxlm.errors import CtxlmError
from ctxlm.evaluation.baselines import build_baseline
from ctxlm.generation.cstar import cstar_into, naive_cstar
from ctxlm.generation.inference import PAD, CtxlmStepper, LSTMStepper, Sampling, TransformerStepper, generate_ids, next_token, score_tokens, stream_text
from ctxlm.model import TokenModel, input_features, token_windows

V = 50


def make_models(k: int = 2, layers: int = 2):
    block = make_block(num_input_tokens=k, num_layers=layers, vocab_size=V)
    model = TokenModel(block.cfg, torch.randn(V, block.cfg.embed_dim), weight_tying=False, freeze_embedding=True).eval()
    with torch.no_grad():
        model.head.bias.uniform_(-1, 1)
    return block, model


def batch_logits(block, model, ids: list[int]) -> torch.Tensor:
    """(T, V) logits of one document by the batch path: C* from the generator's cstar_into, then the TokenModel."""
    ids_t = torch.tensor(ids)
    starts = torch.zeros(len(ids), dtype=torch.bool)
    starts[0] = True
    windows = token_windows(ids_t, starts, block.cfg.num_input_tokens)
    cstar = np.zeros((len(ids), block.cfg.num_layers, block.cfg.context_dim), dtype=np.float32)
    cstar_into(block, model.embedding.detach(), windows, np.array([0, len(ids)]), cstar)
    with torch.no_grad():
        return model(torch.from_numpy(cstar), windows)


def test_greedy_generation_is_the_argmax_of_the_batch_path_at_every_step():
    block, model = make_models()
    prompt = [3, 17, 8, 8, 41]
    generated = list(generate_ids(CtxlmStepper(block, model), prompt, 20, Sampling(greedy=True), seed=0))
    logits = batch_logits(block, model, prompt + generated)  # position i predicts token i + 1
    assert generated == logits[len(prompt) - 1 : -1].argmax(dim=1).tolist()
    assert len(set(generated)) > 1  # not a degenerate case where any off-by-one would agree


def test_top_k_1_sampling_is_greedy_and_a_seed_gives_the_same_text():
    block, model = make_models()
    stepper = CtxlmStepper(block, model)
    greedy = list(generate_ids(stepper, [5, 6], 15, Sampling(greedy=True), seed=0))
    assert list(generate_ids(stepper, [5, 6], 15, Sampling(temperature=0.7, top_k=1), seed=123)) == greedy
    sampled = [list(generate_ids(stepper, [5, 6], 15, Sampling(temperature=1.5), seed=s)) for s in (7, 7, 8)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_a_prompt_longer_than_any_training_document_gives_the_batch_path_s_logits():
    block, model = make_models(k=1, layers=1)
    prompt = torch.randint(0, V, (3000,)).tolist()
    stepper = CtxlmStepper(block, model)
    state = stepper.initial()
    for token in prompt:
        state, logits = stepper.read(state, token)
    assert torch.allclose(logits, batch_logits(block, model, prompt)[-1], atol=1e-4)


def test_an_empty_prompt_starts_from_the_zero_context():
    """The first token's distribution: the model after one zero input (PAD) from c = 0; the first
    token itself is then read from c = 0, as a document's first token is."""
    block, model = make_models()
    stepper = CtxlmStepper(block, model)
    first, second = generate_ids(stepper, [], 2, Sampling(greedy=True), seed=0)
    pad = torch.full((1, 2), PAD)
    with torch.no_grad():
        first_logits = model(block(torch.zeros(1, block.cfg.context_dim), torch.zeros(1, block.cfg.input_dim)), pad)[0]
    assert first == int(first_logits.argmax())
    assert second == int(batch_logits(block, model, [first])[0].argmax())


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_a_baseline_s_steps_give_its_whole_sequence_logits(kind):
    cfg = make_block(vocab_size=V).cfg
    model = build_baseline(kind, cfg, torch.randn(V, cfg.embed_dim), weight_tying=True, freeze_embedding=True, seq_len=16,
                           transformer_layers=1).eval()
    stepper = LSTMStepper(model) if kind == "lstm" else TransformerStepper(model)
    ids = torch.randint(0, V, (12,)).tolist()
    state, stepped = stepper.initial(), []
    for token in ids:
        state, logits = stepper.read(state, token)
        stepped.append(logits)
    with torch.no_grad():
        whole = model.hidden(torch.tensor([ids]))[0] @ model.embedding.T  # tied head
    assert torch.allclose(torch.stack(stepped), whole, atol=1e-5)
    generated = list(generate_ids(stepper, ids, 4, Sampling(greedy=True), seed=0))  # 16 tokens: seq_len
    with torch.no_grad():
        again = model.hidden(torch.tensor([ids + generated]))[0] @ model.embedding.T
    assert generated == again[len(ids) - 1 : -1].argmax(dim=1).tolist()


def test_top_k_and_top_p_keep_the_tokens_worked_out_by_hand():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))
    generator = torch.Generator().manual_seed(0)

    def draws(sampling):
        return [next_token(logits, sampling, generator) for _ in range(4000)]

    # top-p 0.8: sorted 0.5, 0.3 (mass 0.8 reached), so tokens 1 and 3 only, in ratio 5:3
    kept = draws(Sampling(top_p=0.8))
    assert set(kept) == {1, 3} and kept.count(1) / len(kept) == pytest.approx(0.5 / 0.8, abs=0.03)
    assert set(draws(Sampling(top_k=3))) == {1, 2, 3}
    assert set(draws(Sampling(top_p=0.5))) == {1}  # the first token alone reaches 0.5
    assert set(draws(Sampling(top_p=0.81, top_k=2))) == {1, 3}
    low = draws(Sampling(temperature=0.25))  # p^4 normalised: token 1 has 0.5^4 / sum = 0.88
    assert low.count(1) / len(low) == pytest.approx(0.5**4 / (0.05**4 + 0.5**4 + 0.15**4 + 0.3**4), abs=0.02)


@pytest.mark.parametrize("args, message", [
    ({"temperature": -1.0}, "--temperature must be a positive number, got -1.0 (use --greedy for the argmax)"),
    ({"temperature": 0.0}, "--temperature must be a positive number, got 0.0 (use --greedy for the argmax)"),
    ({"top_p": 0.0}, "--top-p must be in (0, 1], got 0.0"),
    ({"top_p": 1.5}, "--top-p must be in (0, 1], got 1.5"),
    ({"top_k": -3}, "--top-k must be 0 (no limit) or positive, got -3"),
])
def test_bad_sampling_arguments_are_refused(args, message):
    with pytest.raises(CtxlmError) as err:
        Sampling(**args)
    assert str(err.value) == message


def test_scores_are_a_plain_per_token_loop_s():
    """Each document from c = 0, token by token through the oracle naive_cstar; a document's first
    token is not predicted; loss, accuracy and bits per byte from those log-probabilities."""
    block, model = make_models()
    docs = [[4, 9, 9, 1, 30, 2], [7], [12, 5, 5, 48]]
    offsets = np.cumsum([0] + [len(d) for d in docs])
    tokens = TokenizedSplit(np.concatenate(docs).astype(np.int32), offsets, predicted_bytes=40, predicted_chars=38)
    scores = score_tokens(block, model, tokens)
    expected, correct = [], 0
    with torch.no_grad():
        for doc in docs:
            windows = token_windows(torch.tensor(doc), torch.tensor([True] + [False] * (len(doc) - 1)), 2)
            cstar = naive_cstar(block, input_features(model.embedding, windows))
            logits = model(cstar, windows)
            for i in range(len(doc) - 1):
                expected.append(torch.log_softmax(logits[i], 0)[doc[i + 1]].item())
                correct += int(logits[i].argmax()) == doc[i + 1]
    assert scores.logprob == pytest.approx(expected, abs=1e-5)
    assert scores.document.tolist() == [0] * 5 + [2] * 3 and scores.position.tolist() == [1, 2, 3, 4, 5, 1, 2, 3]
    assert scores.token_id.tolist() == [9, 9, 1, 30, 2, 5, 5, 48]
    assert scores.loss == pytest.approx(-sum(expected) / 8, abs=1e-6) and scores.accuracy == correct / 8
    assert scores.bits_per_byte == pytest.approx(-sum(expected) / math.log(2) / 40, abs=1e-6)


def test_a_text_of_single_token_documents_has_nothing_to_score():
    block, model = make_models()
    tokens = TokenizedSplit(np.array([3, 4], dtype=np.int32), np.array([0, 1, 2]), 0, 0)
    with pytest.raises(CtxlmError, match="no token to predict"):
        score_tokens(block, model, tokens)




def byte_level_tokenizer():
    """A real byte-level BPE (GPT-2's kind), trained here on ASCII text: an accented character is two
    byte tokens, shown as U+FFFD until the second comes."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["to be, or not to be"] * 10, vocab_size=270, min_frequency=1, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)


def minilm_tokenizer():
    from ctxlm.data.tokenizer import load_tokenizer, resolve_model_dir

    return load_tokenizer(resolve_model_dir("minilm"))


@pytest.mark.parametrize("make_tokenizer, continuation", [
    (minilm_tokenizer, " it ' s a playing test , isn ' t it ? i ' ll go ."),  # WordPiece: "##" joins, " ," cleaned up
    (byte_level_tokenizer, " or not, café crème to be"),  # é and è split over two tokens each
])
def test_the_streamed_pieces_join_to_the_decoded_continuation(make_tokenizer, continuation):
    tokenizer = make_tokenizer()
    prompt, ids = tokenizer.encode("to be", add_special_tokens=False), tokenizer.encode(continuation, add_special_tokens=False)
    pieces = list(stream_text(tokenizer, prompt, iter(ids)))
    whole = tokenizer.decode(prompt + ids)
    assert "".join(pieces) == whole[len(tokenizer.decode(prompt)) :]
    assert len(pieces) > len(ids) // 2 and all(pieces)  # it streams: a piece for most tokens, none empty


# ---- the workspace's model, exported and loaded back ------------------------------------------------

@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A workspace as the stages leave it (minilm's tokenizer, a random E of its vocabulary, a random
    ContextBlock and untied TokenModel saved as train_context and train_token save them), as cwd."""
    import shutil

    from conftest import REPO
    from ctxlm.data.files import save_tokens, write_manifest
    from ctxlm.data.shards import save_embedding
    from ctxlm.data.tokenizer import load_tokenizer, resolve_model_dir
    from ctxlm.model import ModelConfig
    from ctxlm.training.phase2 import trained_state
    from ctxlm.weights import CONTEXT_WEIGHTS, TOKEN_WEIGHTS, save_weights

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    vocab = len(load_tokenizer(resolve_model_dir("minilm")))
    cfg = ModelConfig(vocab_size=vocab, embed_dim=8, context_dim=12, num_layers=2, num_input_tokens=2)
    embedding = torch.randn(vocab, 8)
    tokens = tmp_path / "data/tokens"
    tokens.mkdir(parents=True)
    counts = {}
    for split in ("train", "val", "test"):
        save_tokens(tokens, split, np.arange(10), np.array([0, 10]))
        counts[split] = {"tokens": 10, "documents": 1, "predicted_bytes": 30, "predicted_chars": 30}
    save_embedding(tokens, embedding)
    write_manifest(tokens, {"embedding_model": "minilm", "vocab_size": vocab, "embed_dim": 8, **counts})
    block = make_block(vocab_size=vocab, num_input_tokens=2)
    model = TokenModel(cfg, embedding, weight_tying=False, freeze_embedding=True)
    metadata = {**cfg.to_metadata(), "weight_tying": "False", "freeze_embedding": "True"}
    for folder, name, state, meta in (("data/context", CONTEXT_WEIGHTS, block.state_dict(), cfg.to_metadata()),
                                      ("data/token_model", TOKEN_WEIGHTS, trained_state(model), metadata)):
        (tmp_path / folder).mkdir(parents=True)
        save_weights(tmp_path / folder, name, state, meta)
        write_manifest(tmp_path / folder, {"config": meta})
    (tmp_path / "metrics").mkdir()
    figures = {"test_ppl": 123.4, "test_acc": 0.2, "test_bits_per_byte": 2.0, "val_ppl": 150.0, "val_acc": 0.19,
               "val_bits_per_byte": 2.1, "params_total": 1000, "params_trainable": 500, "seconds": 9.0}
    (tmp_path / "metrics/eval.json").write_text(json.dumps(figures))
    return tmp_path


def run_cli(*args: str):
    from typer.testing import CliRunner

    from ctxlm.commands import app

    return CliRunner().invoke(app, list(args))


def test_an_export_loads_without_the_workspace_and_gives_the_same_text(workspace, tmp_path_factory):
    from ctxlm.generation.export import load_export, load_model

    elsewhere = tmp_path_factory.mktemp("elsewhere")
    assert run_cli("export", str(elsewhere / "model")).exit_code == 0
    exported = elsewhere / "model"
    config = json.loads((exported / "config.json").read_text())
    assert config["metrics"]["test_ppl"] == 123.4 and config["model"]["context_dim"] == "12" and config["embedding_model"] == "minilm"
    assert config["params"]["data.source"] == "shakespeare" and config["params"]["phase2.batch_size"] == 512  # params.yaml: no dvc.lock here
    card = (exported / "README.md").read_text()
    assert "| test | 123.4 | 20.00% | 2.000 |" in card and "ctxlm export" in card
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "context_block.safetensors",
                                                          "embedding.safetensors", "token_model.safetensors", "tokenizer"]
    workspace_text = run_cli("generate", "to be or not", "--max-tokens", "12", "--seed", "3")
    for data in ("data/tokens", "data/context", "data/token_model"):  # no workspace left: the folder alone
        __import__("shutil").rmtree(workspace / data)
    exported_text = run_cli("generate", "to be or not", "--max-tokens", "12", "--seed", "3", "--model", str(exported))
    assert exported_text.exit_code == 0 and exported_text.stdout == workspace_text.stdout
    loaded = load_export(exported)
    prompt = loaded.tokenizer("to be or not", add_special_tokens=False)["input_ids"]
    ids = list(generate_ids(loaded.stepper, prompt, 12, Sampling(1.0, 0, 1.0, False), 3))
    continuation = loaded.tokenizer.decode(prompt + ids)[len(loaded.tokenizer.decode(prompt)) :]
    assert len(ids) == 12 and continuation.strip() and exported_text.stdout == "to be or not" + continuation + "\n"
    assert loaded.token_model.head is not None and loaded.block.cfg.num_input_tokens == 2  # untied, k = 2: as saved
    with pytest.raises(CtxlmError, match="no trained workspace here"):
        load_model("ctxlm")


@pytest.mark.parametrize("damage, message", [
    ("missing", "no such model folder"),
    ("pickle", "holds pickle-based weights (context_block.bin); ctxlm loads only safetensors and JSON"),
    ("truncated", "context_block.safetensors: not a readable safetensors file"),
    ("format", "config.json: not a ctxlm export (format 'something-else', expected"),
    ("bad json", "config.json: not valid JSON"),
    ("no weights", "token_model.safetensors is missing; export the model again"),
    ("no embedding", "embedding.safetensors: holds no 'embedding' tensor"),
])
def test_a_bad_model_folder_gives_one_error_line(workspace, damage, message):
    from safetensors.torch import save_file

    assert run_cli("export", "exported").exit_code == 0
    folder = workspace / "exported"
    config = json.loads((folder / "config.json").read_text())
    if damage == "missing":
        folder = workspace / "no-such-folder"
    elif damage == "pickle":
        (folder / "context_block.safetensors").unlink()
        torch.save({"w": torch.zeros(2)}, folder / "context_block.bin")
    elif damage == "format":
        (folder / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    elif damage == "bad json":
        (folder / "config.json").write_text("{")
    elif damage == "no weights":
        (folder / "token_model.safetensors").unlink()
    elif damage == "no embedding":
        save_file({"weights": torch.zeros(2, 2)}, folder / "embedding.safetensors")
    else:
        data = (folder / "context_block.safetensors").read_bytes()
        (folder / "context_block.safetensors").write_bytes(data[: len(data) // 2])
    result = run_cli("generate", "hello", "--model", str(folder))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctxlm generate: error: ") and message in lines[0]



def test_an_export_records_the_params_dvc_lock_says_the_model_was_trained_with(workspace):
    """params.yaml may have changed since `dvc repro`: the lock's params are those of the weights."""
    import yaml

    lock = {"schema": "2.0", "stages": {
        "prepare": {"cmd": "x", "params": {"params.yaml": {"seed": 7, "data": {"source": "plays.txt"}}}},
        "train_context": {"cmd": "x", "params": {"params.yaml": {"seed": 7, "model": {"context_dim": 12}}}},
        "train_token": {"cmd": "x", "params": {"params.yaml": {"phase2": {"batch_size": 64}}}},
    }}
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert run_cli("export", "exported").exit_code == 0
    params = json.loads((workspace / "exported/config.json").read_text())["params"]
    assert params == {"data.source": "plays.txt", "model.context_dim": 12, "phase2.batch_size": 64, "seed": 7}  # not params.yaml's
    assert "- corpus: `plays.txt`, seed 7" in (workspace / "exported/README.md").read_text()


def test_score_writes_per_token_figures_and_totals(workspace):
    text = workspace / "text.txt"
    text.write_text("to be or not to be\n\nthat is the question")
    result = run_cli("score", str(text), "--out", "scores.json")
    assert result.exit_code == 0, result.stderr
    scores = json.loads((workspace / "scores.json").read_text())
    logprobs = [row["logprob"] for row in scores["tokens"]]
    assert scores["totals"]["tokens"] == len(logprobs) and {row["document"] for row in scores["tokens"]} == {0, 1}
    assert scores["totals"]["perplexity"] == pytest.approx(math.exp(-sum(logprobs) / len(logprobs)))
    assert all(row["surprisal_bits"] == pytest.approx(-row["logprob"] / math.log(2)) for row in scores["tokens"])
    assert f"{len(logprobs)} tokens scored in 2 document(s)" in result.stdout
    one = run_cli("score", str(text), "--one-document", "--out", "one.csv")
    assert one.exit_code == 0 and f"{len(logprobs) + 1} tokens scored in 1 document(s)" in one.stdout  # one more: no reset



def test_standard_input_is_scored_exactly_as_the_same_text_in_a_file(workspace):
    from typer.testing import CliRunner

    from ctxlm.commands import app

    # a trailing blank line, trailing spaces, a run of blank lines with spaces: a .txt file gives 2 documents
    text = "to be or not to be  \nthat is\n\n \n\nthe question\n\n"
    (workspace / "text.txt").write_text(text)
    for flags in ([], ["--one-document"]):
        from_file = run_cli("score", "text.txt", *flags, "--out", "file.json")
        from_stdin = CliRunner().invoke(app, ["score", "-", *flags, "--out", "stdin.json"], input=text)
        assert from_file.exit_code == from_stdin.exit_code == 0, from_stdin.stderr
        assert json.loads((workspace / "stdin.json").read_text()) == json.loads((workspace / "file.json").read_text())
        assert from_stdin.stdout.replace("stdin.json", "file.json") == from_file.stdout and ("2 document(s)" in from_file.stdout) == (not flags)

def test_a_bad_sampling_argument_on_the_command_line_is_one_error_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # refused before any model is looked for
    result = run_cli("generate", "hello", "--temperature", "-0.5")
    assert result.exit_code == 1 and result.stderr.strip().splitlines() == [
        "ctxlm generate: error: --temperature must be a positive number, got -0.5 (use --greedy for the argmax)"]


def test_export_replaces_an_earlier_export_and_refuses_any_other_folder(workspace):
    assert run_cli("export", "exported").exit_code == 0
    assert run_cli("export", "exported").exit_code == 0  # its own: replaced
    (workspace / "notes").mkdir()
    (workspace / "notes/keep.txt").write_text("mine")
    result = run_cli("export", "notes")
    assert result.exit_code == 1 and "notes: exists and is not an earlier ctxlm export" in result.stderr
    assert (workspace / "notes/keep.txt").read_text() == "mine"


def test_score_input_is_cut_into_documents_as_data_source_cuts_a_corpus(tmp_path):
    from ctxlm.generation.inference import text_to_documents

    (tmp_path / "a.txt").write_text("first block\nstill first\n\n  \nsecond block")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"messages": [{"content": "two"}, {"content": "three"}]}\n')
    assert text_to_documents(str(tmp_path / "a.txt")) == ["first block\nstill first", "second block"]
    assert text_to_documents(str(tmp_path / "a.txt"), one_document=True) == ["first block\nstill first\n\nsecond block"]
    assert text_to_documents(str(tmp_path / "b.jsonl")) == ["one", "two\nthree"]
    assert text_to_documents(str(tmp_path / "b.jsonl"), one_document=True) == ["one\n\ntwo\nthree"]  # the records' texts, not raw JSON
    pd.DataFrame({"text": ["row one", "row two"]}).to_parquet(tmp_path / "c.parquet")
    assert text_to_documents(str(tmp_path / "c.parquet")) == ["row one", "row two"]  # any form data.source takes
    with pytest.raises(CtxlmError, match="no such file or folder"):
        text_to_documents(str(tmp_path / "missing.txt"))


def test_with_previous_contexts_the_stepper_gives_the_batch_path_s_logits():
    """prev_contexts 2: the TokenBlock reads c_{i-1} and c_{i-2} of the final layer, zeros before the
    start; the batch path's inputs are built here by a plain loop over the positions."""
    from dataclasses import replace

    block = make_block(num_input_tokens=2, num_layers=2, vocab_size=V)
    model = TokenModel(replace(block.cfg, prev_contexts=2), torch.randn(V, block.cfg.embed_dim), weight_tying=True, freeze_embedding=True).eval()
    ids = torch.randint(0, V, (9,)).tolist()
    starts = torch.zeros(9, dtype=torch.bool)
    starts[0] = True
    windows = token_windows(torch.tensor(ids), starts, 2)
    cstar = np.zeros((9, 2, block.cfg.context_dim), dtype=np.float32)
    cstar_into(block, model.embedding.detach(), windows, np.array([0, 9]), cstar)
    zero = np.zeros(block.cfg.context_dim, dtype=np.float32)
    rows = [np.stack([cstar[i, 0], cstar[i, 1], cstar[i - 1, 1] if i >= 1 else zero, cstar[i - 2, 1] if i >= 2 else zero]) for i in range(9)]
    with torch.no_grad():
        expected = model(torch.from_numpy(np.stack(rows)), windows)
    stepper = CtxlmStepper(block, model)
    state, stepped = stepper.initial(), []
    for token in ids:
        state, logits = stepper.read(state, token)
        stepped.append(logits)
    assert torch.allclose(torch.stack(stepped), expected, atol=1e-5)
    text = TokenizedSplit(np.array(ids, dtype=np.int32), np.array([0, 9]), 9, 9)
    scores = score_tokens(block, model, text)
    assert np.allclose(scores.logprob, torch.log_softmax(expected[:-1], 1)[torch.arange(8), torch.tensor(ids[1:])].numpy(), atol=1e-5)
