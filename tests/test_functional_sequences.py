"""Sequences: per-token losses to one score per sequence, the estimators of `weighted_mean`, the closed-form bound of a
sequence's cross-entropy against autograd, and Rho-1's token choice (property tests of the pure functions)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import lightning_per as lp
from lightning_per.functional import sequences as PS

FAST = settings(max_examples=60, deadline=None, database=None)


def _batch(n, weight=None):
    return lp.PrioritizedBatch(None, torch.arange(n), torch.ones(n) if weight is None else weight)


def _tokens(seed, n=5, t=7, classes=6):
    """Random logits and targets with padding (-100) of a different length per sequence, one sequence all padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, t, classes, generator=g) * 2
    targets = torch.randint(classes, (n, t), generator=g)
    lengths = torch.tensor([t, 1, 4, 0, 6])[:n]
    targets[torch.arange(t) >= lengths[:, None]] = -100
    return logits, targets


def test_sequence_losses_average_the_real_tokens_and_an_empty_sequence_has_no_mean():
    losses = torch.tensor([[1.0, 3.0, 50.0], [4.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert PS.sequence_losses(losses, mask)[:2].tolist() == [2.0, 4.0] and PS.sequence_losses(losses, mask)[2].isnan()
    assert PS.sequence_losses(losses, mask, "sum").tolist() == [4.0, 4.0, 0.0]
    assert PS.sequence_losses(losses).tolist() == pytest.approx([18.0, 4 / 3, 7.0])
    with pytest.raises(ValueError, match=r"`mask` has shape \(3,\) but the per-token losses have \(3, 3\)"):
        PS.sequence_losses(losses, torch.ones(3))


def test_weighted_mean_weights_sequences_not_tokens_and_token_weighting_on_request():
    losses = torch.tensor([[1.0, 3.0, 0.0, 0.0], [6.0, 6.0, 6.0, 6.0]])
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    batch = _batch(2, torch.tensor([1.0, 0.5]))
    assert lp.weighted_mean(losses, batch, mask=mask).item() == pytest.approx((1 * 2.0 + 0.5 * 6.0) / 2)
    token = (1 * 4.0 + 0.5 * 24.0) / (1 * 2 + 0.5 * 4)  # sum_i w_i sum_t l / sum_i w_i m_i
    assert lp.weighted_mean(losses, batch, mask=mask, per="token").item() == pytest.approx(token)
    # without a mask the sequence mean is the old per-element mean, for any trailing shape
    assert lp.weighted_mean(losses, batch).item() == pytest.approx((losses.mean(1) * batch.weight).mean().item())
    padded = losses.clone()
    padded[0, 2:] = math.nan  # a padded position's value never counts
    assert lp.weighted_mean(padded, batch, mask=mask).isfinite()
    with pytest.raises(ValueError, match="`per` must be 'sequence'"):
        lp.weighted_mean(losses, batch, mask=mask, per="word")


def test_the_sequence_estimator_is_unbiased_under_importance_sampling_and_the_token_one_is_not():
    # N sequences of different lengths, one drawn with probability p_i, weight 1 / (N p_i): the exact expectation
    losses = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]).bool()
    p = torch.tensor([0.2, 0.5, 0.3])
    n = len(p)

    def expectation(per):
        return sum(
            p[i] * lp.weighted_mean(losses[i : i + 1], _batch(1, 1 / (n * p[i : i + 1])), mask=mask[i : i + 1], per=per)
            for i in range(n)
        )

    per_sequence = PS.sequence_losses(losses, mask).mean()
    assert expectation("sequence").item() == pytest.approx(per_sequence.item())  # (1 + 5 + 3) / 3
    per_token = (losses * mask).sum() / mask.sum()
    assert expectation("token").item() != pytest.approx(per_token.item(), abs=0.1)  # a ratio estimate, biased


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("smoothing", "weighted"), [(0.0, False), (0.1, True)])
def test_the_sequence_bound_is_the_norm_of_the_autograd_gradient(reduction, smoothing, weighted):
    logits, targets = _tokens(0)
    weights = torch.rand(logits.shape[-1], generator=torch.Generator().manual_seed(1)) + 0.5 if weighted else None
    z = logits.clone().requires_grad_(True)
    per_token = F.cross_entropy(z.transpose(1, 2), targets, weight=weights, label_smoothing=smoothing, reduction="none")
    per_sequence = PS.sequence_losses(per_token, targets != -100, reduction).nan_to_num(0.0)
    (grad,) = torch.autograd.grad(per_sequence.sum(), z)  # sequences are independent: row i is dL_i / dz_i
    expected = grad.reshape(len(grad), -1).norm(dim=1)
    bound = PS.sequence_ce_grad_norm(logits, targets, reduction, smoothing, weights)
    torch.testing.assert_close(bound, expected, rtol=1e-5, atol=1e-6)
    assert bound[3] == 0  # a sequence without a real token has no gradient


def test_scores_read_per_token_losses_with_a_mask_or_the_ignored_targets():
    logits, targets = _tokens(2)
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    batch = _batch(5)
    mean = PS.sequence_losses(losses, targets != -100)
    by_target = lp.Score("loss")({"per_sample_loss": losses, "target": targets}, batch)
    torch.testing.assert_close(by_target, mean, equal_nan=True)
    by_mask = lp.Score("loss", token_reduction="sum")({"per_sample_loss": losses, "mask": targets != -100}, batch)
    torch.testing.assert_close(by_mask, PS.sequence_losses(losses, targets != -100, "sum"))
    outputs = {"per_sample_loss": losses, "logits": logits, "target": targets}
    torch.testing.assert_close(lp.Score("grad_norm")(outputs, batch), PS.sequence_ce_grad_norm(logits, targets))
    masked = dict(outputs, target=targets.clamp(min=0), mask=targets != -100)  # an attention mask instead of -100
    torch.testing.assert_close(lp.Score("grad_norm")(masked, batch), PS.sequence_ce_grad_norm(logits, targets))
    with pytest.raises(ValueError, match=r"returned the mask 'mask' with shape \(5,\).*one entry per token"):
        lp.Score("loss")({"per_sample_loss": losses, "mask": torch.ones(5)}, batch)
    with pytest.raises(ValueError, match=r"`token_reduction` must be one of"):
        lp.Score("loss", token_reduction="max")


@st.composite
def token_batches(draw):
    n, t = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    values = st.floats(-5, 5, allow_nan=False, width=32)
    losses = torch.tensor(draw(st.lists(values, min_size=n * t, max_size=n * t))).reshape(n, t)
    reference = torch.tensor(draw(st.lists(values, min_size=n * t, max_size=n * t))).reshape(n, t)
    mask = torch.tensor(draw(st.lists(st.booleans(), min_size=n * t, max_size=n * t))).reshape(n, t)
    return losses, reference, mask, draw(st.floats(0.01, 1.0))


@FAST
@given(data=token_batches())
def test_excess_loss_keep_takes_the_top_share_of_the_real_tokens(data):
    losses, reference, mask, fraction = data
    keep = PS.excess_loss_keep(losses, reference, fraction, mask)
    assert not (keep & ~mask).any()  # only real tokens
    real = int(mask.sum())
    assert int(keep.sum()) in {math.ceil(real * fraction - 1e-5), math.ceil(real * fraction)}  # float32 rounding
    excess = losses - reference
    if keep.any() and (mask & ~keep).any():  # every kept token's excess is at least every dropped real token's
        assert excess[keep].min() >= excess[mask & ~keep].max()


@FAST
@given(data=token_batches(), weights=st.lists(st.floats(0.1, 4.0), min_size=5, max_size=5))
def test_token_selection_in_weighted_mean_is_rho1s_mean_over_the_kept_tokens(data, weights):
    losses, reference, mask, fraction = data
    n = losses.shape[0]
    batch = _batch(n)
    batch.tokens = lp.batch.TokenChoice(reference, fraction)
    got = lp.weighted_mean(losses, batch, mask=mask, per="token")
    keep = PS.excess_loss_keep(losses, reference, fraction, mask)
    expected = losses[keep].mean() if keep.any() else torch.tensor(0.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if mask.any():
        assert batch.tokens.kept.item() == pytest.approx(keep.sum().item() / mask.sum().item())
    # per sequence: each kept token counts 1/k, divided by its sequence's real tokens, then the weighted mean
    w = torch.tensor(weights[:n])
    weighted = _batch(n, w)
    weighted.tokens = lp.batch.TokenChoice(reference, fraction)
    k = keep.sum() / mask.sum().clamp(min=1)
    rows = (losses * keep).sum(1) / k.clamp(min=1e-12) / mask.sum(1).clamp(min=1)
    expected = (w * rows).mean() if keep.any() else torch.tensor(0.0)
    torch.testing.assert_close(lp.weighted_mean(losses, weighted, mask=mask), expected, rtol=1e-4, atol=1e-5)


def test_only_the_kept_tokens_get_a_gradient():
    losses = torch.tensor([[3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    batch = _batch(1)
    batch.tokens = lp.batch.TokenChoice(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 0.5)
    lp.weighted_mean(losses, batch).backward()
    assert losses.grad.tolist() == [[0.0, 0.5, 0.0, 0.5]]  # the two largest excesses, each 1 / (k * 4) = 0.5
    with pytest.raises(ValueError, match=r"got losses \(1,\): pass the per-token losses"):
        lp.weighted_mean(torch.ones(1), batch)
