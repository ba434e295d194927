"""The scoring vocabulary: every name means one thing, with the same values in every callback."""

import pytest
import torch
import torch.nn.functional as F

import lightning_per as lp
from lightning_per import functional as PF

G = torch.Generator().manual_seed(0)
LOGITS = 2 * torch.randn(6, 4, generator=G)
TARGET = torch.tensor([0, 3, 1, 1, 2, 0])
LOSSES = F.cross_entropy(LOGITS, TARGET, reduction="none")
EMBEDDING = torch.randn(6, 3, generator=G)
IRREDUCIBLE = torch.linspace(0.0, 1.0, 10)  # by dataset index
INDEX = torch.tensor([9, 2, 4, 0, 7, 5])
OUTPUTS = {"per_sample_loss": LOSSES, "logits": LOGITS, "target": TARGET, "embedding": EMBEDDING}
PROBS = LOGITS.softmax(-1)
TRUE = PROBS.gather(1, TARGET[:, None]).squeeze(1)
OTHERS = PROBS.scatter(1, TARGET[:, None], -1.0).amax(1)

# one table of expected values, computed from the definitions
EXPECTED = {
    "loss": LOSSES,
    "reducible": LOSSES - IRREDUCIBLE[INDEX],
    "grad_norm": (PROBS - F.one_hot(TARGET, 4)).norm(dim=1),
    "deviation": 1 - TRUE,
    "margin": 1 - (TRUE - OTHERS),
    "novelty": (EMBEDDING - EMBEDDING.mean(0)).norm(dim=1),  # the first batch: distance from its own mean
}


def _callbacks():
    return [
        lp.LossTracker,
        lp.ImportanceSamplingCallback,
        lp.TopKSelection,
        lambda score: lp.SelectiveBackprop(score=score),
    ]


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("make", _callbacks(), ids=["tracker", "importance", "topk", "selective_backprop"])
def test_each_score_name_gives_the_same_values_in_every_callback(name, make):
    scorer = make(score=name)._scorer
    scorer.attach_irreducible(IRREDUCIBLE)
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    assert torch.allclose(scorer(OUTPUTS, batch), EXPECTED[name], atol=1e-6)


def test_the_names_are_written_once_and_are_the_literal_of_the_type():
    assert lp.score.SCORE_NAMES == ("loss", "reducible", "grad_norm", "deviation", "margin", "novelty")
    assert set(EXPECTED) == set(lp.score.SCORE_NAMES)


@pytest.mark.parametrize(
    ("bound", "loss_fn", "target"),
    [
        ("cross_entropy", lambda z, y: F.cross_entropy(z, y, reduction="none"), TARGET),
        ("bce", lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1), PROBS.round()),
        ("mse", lambda z, y: (z - y).square().mean(-1), PROBS),
    ],
)
def test_every_closed_form_bound_equals_its_autograd_bound(bound, loss_fn, target):
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    outputs = {"logits": LOGITS, "target": target}
    closed = lp.Score("grad_norm", bound=bound)(outputs, batch)
    auto = lp.Score("grad_norm", bound="autograd", loss_fn=loss_fn)(outputs, batch)
    assert torch.allclose(closed, auto, atol=1e-6)


def test_a_function_is_a_score_too_and_must_give_one_value_per_sample():
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    tracker = lp.LossTracker(score=lambda outputs, b: outputs["per_sample_loss"] * 2)
    assert torch.allclose(tracker._scorer(OUTPUTS, batch), 2 * LOSSES)
    short = lp.TopKSelection(score=lambda outputs, b: outputs["per_sample_loss"][:3])._scorer
    with pytest.raises(ValueError, match=r"returned \(3,\) for a batch of 6 samples"):
        short(OUTPUTS, batch)


def test_a_score_reads_its_own_keys_and_names_every_missing_one():
    score = lp.Score("margin", logits_key="z", target_key="y", owner="LossTracker")
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    assert torch.allclose(score({"z": LOGITS, "y": TARGET}, batch), EXPECTED["margin"])
    with pytest.raises(ValueError, match=r"LossTracker\(score='margin'\) needs .* under 'z' and 'y'"):
        score({"loss": LOSSES}, batch)


def test_reducible_without_an_irreducible_loss_callback_says_what_to_add():
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    with pytest.raises(ValueError, match=r"add `lightning_per.IrreducibleLoss\(model=...\)`"):
        lp.Score("reducible")(OUTPUTS, batch)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="bogus"), r"`name` must be one of 'loss', 'reducible', 'grad_norm'"),
        (dict(name="grad_norm", bound="hinge"), r"`bound` must be one of 'cross_entropy', 'bce', 'mse', 'autograd'"),
        (dict(label_smoothing=1.5), r"`label_smoothing` must be a finite number in \[0, 1\], got 1.5"),
        (dict(class_weights=[]), r"`class_weights` must be a non-empty list"),
        (dict(novelty_momentum=1.0), r"`novelty_momentum` must be a finite number in \[0, 1\), got 1.0"),
    ],
)
def test_bad_score_arguments_name_the_argument_and_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lp.Score(**kwargs)


def test_two_callbacks_given_one_score_keep_separate_running_state():
    score = lp.Score("novelty")
    a, b = lp.LossTracker(score=score)._scorer, lp.LossTracker(score=score)._scorer
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    a(OUTPUTS, batch)
    assert a._novelty_mean is not None and b._novelty_mean is None and score._novelty_mean is None


def test_closed_form_scores_of_several_steps_at_once_equal_those_step_by_step():
    score = lp.Score("grad_norm")
    parts = [(LOGITS[:4], TARGET[:4]), (LOGITS[4:], TARGET[4:])]
    assert torch.allclose(score.resolve_many(parts), PF.softmax_ce_grad_norm(LOGITS, TARGET))
