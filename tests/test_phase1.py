import math

import numpy as np
import pytest
import torch

from conftest import make_block
from ctxlm.config import Phase1Params
from ctxlm.errors import CtxlmError
from ctxlm.training.checkpoint import Checkpoint, code_digest
from ctxlm.training.phase1 import oacd_loss, previous_contexts, train_context_block


def test_oacd_loss_by_hand():
    contexts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])
    # centroid (2, 1); deviations (-1,-1), (1,-1), (0,2): squared norm 2 + 2 + 4 = 8
    expected = -math.sqrt(8) / 3 + 0.1 * (4 + 1)
    assert oacd_loss(contexts, 0.1).item() == pytest.approx(expected)


def test_previous_contexts_reset_at_document_starts_and_are_not_circular():
    contexts = torch.arange(1.0, 6.0).unsqueeze(1)
    starts = torch.tensor([True, False, False, True, False])
    assert previous_contexts(contexts, starts).squeeze(1).tolist() == [0.0, 1.0, 2.0, 0.0, 4.0]
    inside = torch.tensor([False, False, False, True, False])  # rows that start inside a document (another process's share before)
    assert previous_contexts(contexts, inside, before=torch.tensor([9.0])).squeeze(1).tolist() == [9.0, 1.0, 2.0, 0.0, 4.0]


def run_phase1(seed: int, x: torch.Tensor, checkpoint=None, **overrides):
    torch.manual_seed(seed)
    block = make_block(torch.float32, num_layers=2)
    starts = torch.zeros(x.shape[0], dtype=torch.bool)
    starts[::25] = True
    params = Phase1Params(**{"max_iterations": 4, "batch_tokens": 30, **overrides})
    result = train_context_block(block, x, starts, params, torch.Generator().manual_seed(seed), checkpoint)
    return block, result


def test_phase1_resumes_from_a_checkpoint_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    """A run stopped after iteration 2 (its last checkpoint) and resumed equals a run of 4."""
    monkeypatch.setenv("CTXLM_CHECKPOINT_SECONDS", "0")
    x = torch.randn(100, 8)
    block_ref, reference = run_phase1(1, x)
    run_phase1(1, x, Checkpoint("train_context", {"test": 1}, root=tmp_path), max_iterations=2)
    assert len(torch.load(tmp_path / "train_context/state.pt", weights_only=True)["history"]) == 2
    block, resumed = run_phase1(1, x, Checkpoint("train_context", {"test": 1}, root=tmp_path))
    assert "resuming from" in capsys.readouterr().out
    assert resumed.history == reference.history
    for key, value in block_ref.state_dict().items():
        assert torch.equal(block.state_dict()[key], value), key


def test_the_code_digest_changes_with_any_source_file_of_the_package_and_its_subpackages(tmp_path, monkeypatch):
    """A checkpoint from other code is not resumed: the digest covers every ctxlm source file, by its
    path inside the package (a module moved to another subpackage is other code too)."""
    import shutil
    from pathlib import Path

    import ctxlm

    copy = tmp_path / "ctxlm"
    shutil.copytree(Path(ctxlm.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(ctxlm, "__file__", str(copy / "__init__.py"))
    before = code_digest()
    assert code_digest() == before
    phase2 = copy / "training" / "phase2.py"
    original = phase2.read_text()
    phase2.write_text(original + "# a change\n")
    assert code_digest() != before
    phase2.write_text(original)
    assert code_digest() == before
    (copy / "data" / "files.py").rename(copy / "evaluation" / "files.py")
    assert code_digest() != before


def test_phase1_trains_and_is_reproducible():
    x = torch.randn(100, 8)
    before = make_block(torch.float32, num_layers=2).state_dict()
    block_a, result_a = run_phase1(1, x)
    block_b, result_b = run_phase1(1, x)
    assert result_a.iterations == 4 and 0.0 <= result_a.convergence_rate <= 1.0
    assert [h["loss"] for h in result_a.history] == [h["loss"] for h in result_b.history]
    for key, value in block_a.state_dict().items():
        assert torch.equal(value, block_b.state_dict()[key])
    assert any(not torch.equal(v, before[k]) for k, v in block_a.state_dict().items())


def test_phase1_stops_early_at_the_convergence_target():
    _, result = run_phase1(0, torch.randn(100, 8), early_stop_convergence=0.01, max_iterations=50, convergence_threshold=10.0)
    assert result.iterations == 1 and result.convergence_rate == 1.0


def test_phase1_stops_on_nan_naming_the_param():
    x = torch.randn(100, 8)
    x[42, 3] = float("nan")
    with pytest.raises(CtxlmError, match="phase1.lr"):
        run_phase1(0, x)


def test_two_identical_trainings_save_byte_identical_weights(tmp_path):
    """Same seed, same data -> the same file: safetensors alone writes its metadata in a random
    order, and DVC would then see a changed output and rerun everything downstream."""
    from ctxlm.data.files import write_manifest
    from ctxlm.weights import CONTEXT_WEIGHTS, load_context_blocks, save_weights

    x = torch.randn(100, 8)
    files = []
    for run in ("first", "second"):
        block, _ = run_phase1(1, x)
        folder = tmp_path / run
        folder.mkdir()
        save_weights(folder, CONTEXT_WEIGHTS, block.state_dict(), block.cfg.to_metadata())
        write_manifest(folder, {})
        files.append((folder / CONTEXT_WEIGHTS).read_bytes())
        loaded, cfg = load_context_blocks(folder)  # still a valid safetensors file with the same config
        assert cfg == block.cfg and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), block.state_dict().values()))
    assert files[0] == files[1]


def test_phase1_samples_whole_documents_up_to_its_token_budget():
    from ctxlm.training.phase1 import document_rows, sample_documents

    lengths = np.array([5, 3, 8, 2, 7, 4, 6, 1])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    assert sample_documents(offsets, 36, seed=0).tolist() == list(range(8))  # 36 tokens in all: every document
    for seed in range(20):
        chosen = sample_documents(offsets, 12, seed)
        assert lengths[chosen].sum() <= 12 and np.all(np.diff(chosen) > 0)
        left = 12 - lengths[chosen].sum()
        assert all(lengths[d] > left for d in set(range(8)) - set(chosen.tolist()))  # no document left out would still fit
    assert len({tuple(sample_documents(offsets, 12, seed)) for seed in range(20)}) > 1  # the seed chooses
    assert np.array_equal(sample_documents(offsets, 12, 3), sample_documents(offsets, 12, 3))
    assert document_rows(offsets, np.array([1, 3])).tolist() == [5, 6, 7, 16, 17]  # documents 1 (5..7) and 3 (16, 17)
    with pytest.raises(CtxlmError, match="phase1.max_tokens is 0, shorter than every training document"):
        sample_documents(offsets[[0, 1]], 0, 0)


def test_zero_iterations_leave_the_block_as_initialised():
    """phase1.max_iterations: 0, the untrained control: no step is taken, nothing is reported as converged."""
    torch.manual_seed(5)
    block = make_block(torch.float32, num_layers=2)
    initial = {k: v.clone() for k, v in block.state_dict().items()}
    starts = torch.zeros(60, dtype=torch.bool)
    starts[::20] = True
    result = train_context_block(block, torch.randn(60, 8), starts, Phase1Params(max_iterations=0, batch_tokens=30), torch.Generator().manual_seed(5))
    assert (result.iterations, result.convergence_rate, result.final_loss, result.history) == (0, None, None, [])
    assert all(torch.equal(block.state_dict()[k], v) for k, v in initial.items())
