"""The chunked head (ctxlm/head.py) against hand-computed figures and torch's plain cross-entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from ctxlm.head import head_loss, head_scores, product_operand
from ctxlm.training.phase2 import score_batches

CPU = torch.device("cpu")


def test_head_scores_by_hand():
    """With the identity as head the logits are the hidden states: each loss and hit by hand,
    chunks of 2 rows cutting the batch unevenly; a tie counts as a hit only for the first maximum."""
    hidden = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, math.log(3.0)], [1.0, 1.0]])
    losses, correct = head_scores(hidden, torch.eye(2), None, torch.tensor([0, 1, 1, 1]), chunk=3)
    # p(0) = 1/2; p(1) = 1 / (1 + e^2); p(1) = 3/4; a tie: p(1) = 1/2, argmax is 0
    expected = [math.log(2), math.log(1 + math.e**2), math.log(4 / 3), math.log(2)]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)
    assert correct.tolist() == [True, False, True, False]


def test_head_scores_equal_torch_cross_entropy_and_argmax():
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(37, 16), torch.randn(300, 16), torch.randn(300)
    targets = torch.randint(0, 300, (37,))
    logits = F.linear(hidden, weight, bias)
    losses, correct = head_scores(hidden, weight, bias, targets, chunk=8)
    torch.testing.assert_close(losses, F.cross_entropy(logits, targets, reduction="none"), rtol=1e-6, atol=1e-6)
    assert torch.equal(correct, logits.argmax(dim=1) == targets)


def test_score_batches_averages_every_position_whatever_the_batch_sizes():
    """The loss/accuracy loop that ctxlm's evaluate and the baselines share."""
    first = head_scores(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.eye(2), None, torch.tensor([0, 1]))
    second = head_scores(torch.tensor([[0.0, math.log(3.0)]]), torch.eye(2), None, torch.tensor([1]))
    loss, acc = score_batches(iter([first, second]), positions=3, desc="test", device=CPU)
    assert loss == pytest.approx((math.log(2) + math.log(1 + math.e**2) + math.log(4 / 3)) / 3)
    assert acc == pytest.approx(2 / 3)


def test_a_frozen_head_is_cast_once_and_again_after_it_changes():
    """A frozen E's bf16 copy is kept across steps, but never outlives a change to E."""
    frozen = torch.randn(50, 8)
    first = product_operand(frozen, torch.bfloat16)
    assert product_operand(frozen, torch.bfloat16) is first
    assert torch.equal(first, frozen.bfloat16())
    frozen.add_(1.0)  # e.g. load_state_dict copying other weights in
    assert torch.equal(product_operand(frozen, torch.bfloat16), frozen.bfloat16())
    other = frozen.clone()
    other.sub_(1.0)
    assert torch.equal(product_operand(other, torch.bfloat16), other.bfloat16())
    assert product_operand(frozen, torch.float32).data_ptr() == frozen.data_ptr()  # fp32: no copy


def test_a_trained_head_is_cast_every_step():
    weight = torch.nn.Parameter(torch.randn(50, 8))
    hidden, targets = torch.randn(4, 8), torch.randint(0, 50, (4,))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    for _ in range(2):  # the second loss is that of the updated weight, not of a kept copy
        loss = head_loss(hidden, weight, None, targets, "bf16")
        expected = F.cross_entropy((hidden.bfloat16() @ weight.detach().bfloat16().T).float(), targets)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_a_scaled_loss_scales_every_gradient_as_torch_cross_entropy_does():
    """Several processes scale the loss before backward; here by 0.37 and then by -2 (a sum of two
    uses of the same loss): the gradients of hidden, weight and bias against F.cross_entropy's."""
    g = torch.Generator().manual_seed(5)
    hidden, weight, bias = (torch.randn(*shape, generator=g, dtype=torch.float64).float().requires_grad_()
                            for shape in ((7, 6), (11, 6), (11,)))
    targets = torch.randint(0, 11, (7,), generator=g)
    grads = []
    for loss_of in (lambda: head_loss(hidden, weight, bias, targets, "fp32", chunk=3),
                    lambda: F.cross_entropy(F.linear(hidden, weight, bias), targets)):
        loss = loss_of()
        (0.37 * loss - 2.0 * loss.detach() * loss).backward()
        grads.append([t.grad.clone() for t in (hidden, weight, bias)])
        for t in (hidden, weight, bias):
            t.grad = None
    for ours, reference in zip(*grads):
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-7)
