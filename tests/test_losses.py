"""DPO-family losses against hand-derived values and TRL's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ttpa_ray.train.losses import LOSSES, decision_loss, divergence_weights, dpo_loss, sequence_logps


def _rand(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(n, generator=g, dtype=torch.float64) * 50 for _ in range(4)]


def test_policy_equal_reference_gives_ln2_and_zero_rewards():
    pc, pr, _, _ = _rand()
    losses, rc, rr = dpo_loss(pc, pr, pc, pr, beta=0.1)
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)))
    assert torch.all(rc == 0) and torch.all(rr == 0)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_sigmoid_and_cdpo_match_trl_formula(beta, eps):
    pc, pr, rc_, rr_ = _rand(seed=int(beta * 100 + eps * 10))
    losses, rc, rr = dpo_loss(pc, pr, rc_, rr_, beta=beta, label_smoothing=eps)
    # TRL (DPOTrainer, reverse-KL): delta = chosen_logratios - rejected_logratios;
    # sigmoid: -logsigmoid(beta*delta); label smoothing as in its cDPO-form losses.
    delta = (pc - rc_) - (pr - rr_)
    ref = -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
    assert torch.allclose(losses, ref, atol=1e-6, rtol=0)
    assert torch.allclose(rc, beta * (pc - rc_)) and torch.allclose(rr, beta * (pr - rr_))


def test_ipo_matches_trl_formula():
    pc, pr, rc_, rr_ = _rand(seed=3)
    beta = 0.1
    losses, _, _ = dpo_loss(pc, pr, rc_, rr_, beta=beta, loss_type="ipo")
    delta = (pc - rc_) - (pr - rr_)
    assert torch.allclose(losses, (delta - 1 / (2 * beta)) ** 2, atol=1e-6, rtol=0)


def test_weights_and_bad_arguments():
    pc, pr, rc_, rr_ = _rand(seed=4)
    w = torch.linspace(0, 2, 16, dtype=torch.float64)
    plain, _, _ = dpo_loss(pc, pr, rc_, rr_, beta=0.1)
    weighted, _, _ = dpo_loss(pc, pr, rc_, rr_, beta=0.1, weights=w)
    assert torch.allclose(weighted, plain * w)
    with pytest.raises(ValueError, match="not one of"):
        dpo_loss(pc, pr, rc_, rr_, beta=0.1, loss_type="hinge2")
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, rc_, rr_, beta=0.1, label_smoothing=0.7)
    assert set(LOSSES) == {"sigmoid", "ipo"}


def test_gradient_direction_raises_chosen_lowers_rejected():
    pc = torch.tensor([-5.0], requires_grad=True)
    pr = torch.tensor([-5.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.25) and pr.grad.item() == pytest.approx(0.25)  # -β·σ(0), +β·σ(0)


def test_sequence_logps_sum_mean_and_divergence_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    lp = logits.log_softmax(-1).gather(2, labels.unsqueeze(-1)).squeeze(-1)
    want = (lp * mask).sum(-1)
    assert torch.allclose(sequence_logps(logits, labels, mask), want)
    assert torch.allclose(sequence_logps(logits, labels, mask, average=True), want / mask.sum(-1))
    w = divergence_weights(mask, torch.tensor([1, 0]))
    assert w.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    assert torch.allclose(sequence_logps(logits, labels, mask, token_weights=w), (lp * w).sum(-1))


def test_decision_loss_counts_each_turn_once():
    """Mean over turns of -log p(first chosen token), whatever the number of pairs per turn:
    turn 0 (3 pairs, p = 0.5) and turn 1 (1 pair, p = 0.1) give (ln 2 + ln 10) / 2."""
    lp = torch.log(torch.tensor([0.5, 0.1, 0.5, 0.5], dtype=torch.float64))
    got = decision_loss(lp, torch.tensor([0, 1, 0, 0]))
    assert got.item() == pytest.approx((math.log(2) + math.log(10)) / 2, abs=1e-12)
    assert decision_loss(lp[:1], torch.tensor([0])).item() == pytest.approx(math.log(2), abs=1e-12)
    # A turn weight multiplies its turn's term; the mean is still over turns, not weights.
    weighted = decision_loss(lp, torch.tensor([0, 1, 0, 0]), torch.tensor([0.5, 3.0, 0.5, 0.5]))
    assert weighted.item() == pytest.approx((0.5 * math.log(2) + 3.0 * math.log(10)) / 2, abs=1e-12)
