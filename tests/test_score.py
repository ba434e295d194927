"""lightning_per.score: the scoring vocabulary; every name means one thing, in every callback."""

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
    scorer = make(score=name)._scorer  # the callback's own scorer: no public handle feeds it fixed outputs
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
    doubled = lp.score.as_score(lambda outputs, b: outputs["per_sample_loss"] * 2, "LossTracker")
    assert torch.allclose(doubled(OUTPUTS, batch), 2 * LOSSES)
    short = lp.score.as_score(lambda outputs, b: outputs["per_sample_loss"][:3], "TopKSelection")
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
    a, b = lp.LossTracker(score=score), lp.LossTracker(score=score)
    batch = lp.PrioritizedBatch(None, INDEX, torch.ones(6))
    a._scorer(OUTPUTS, batch)  # what a's step does; no public handle feeds a callback's scorer fixed outputs
    assert a.state_dict()["score"]["novelty_mean"] is not None
    assert b.state_dict()["score"]["novelty_mean"] is None and score.state_dict()["novelty_mean"] is None


def test_closed_form_scores_of_several_steps_at_once_equal_those_step_by_step():
    score = lp.Score("grad_norm")
    parts = [(LOGITS[:4], TARGET[:4]), (LOGITS[4:], TARGET[4:])]
    assert torch.allclose(score.resolve_many(parts), PF.softmax_ce_grad_norm(LOGITS, TARGET))


def _batch(n: int) -> lp.PrioritizedBatch:
    return lp.PrioritizedBatch(None, torch.arange(n), torch.ones(n))


@pytest.mark.parametrize(
    ("kwargs", "loss_fn"),
    [
        (dict(), lambda z, y: F.cross_entropy(z, y, reduction="none")),
        (dict(label_smoothing=0.2), lambda z, y: F.cross_entropy(z, y, reduction="none", label_smoothing=0.2)),
        (
            dict(class_weights=[0.5, 2.0, 1.0, 3.0]),
            lambda z, y: F.cross_entropy(z, y, reduction="none", weight=torch.tensor([0.5, 2.0, 1.0, 3.0])),
        ),
        (
            dict(label_smoothing=0.1, class_weights=[0.5, 2.0, 1.0, 3.0]),
            lambda z, y: F.cross_entropy(
                z, y, reduction="none", weight=torch.tensor([0.5, 2.0, 1.0, 3.0]), label_smoothing=0.1
            ),
        ),
    ],
    ids=["plain", "label_smoothing", "class_weights", "both"],
)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_closed_form_ce_bound_equals_the_autograd_bound(kwargs, loss_fn, soft):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(10, 4, generator=g)
    y = torch.randint(4, (10,), generator=g)
    if soft:
        y = torch.rand(10, 4, generator=g).softmax(-1)
    outputs = {"logits": logits, "target": y}
    closed = lp.Score("grad_norm", **kwargs)(outputs, _batch(10))
    auto = lp.Score("grad_norm", bound="autograd", loss_fn=loss_fn)(outputs, _batch(10))
    assert closed.shape == (10,)
    assert torch.allclose(closed, auto, atol=1e-6)
    assert closed.std() > 0.05  # not a degenerate comparison


def test_closed_form_bce_and_mse_bounds_equal_the_autograd_bound():
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(9, 5, generator=g)
    y_bin = (torch.rand(9, 5, generator=g) > 0.5).float()
    y_reg = torch.randn(9, 5, generator=g)

    def bce(z, y):  # summed over the outputs of a sample
        return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)

    def mse(z, y):  # averaged over the outputs of a sample
        return (z - y).square().mean(-1)

    for kind, loss_fn, y in (("bce", bce, y_bin), ("mse", mse, y_reg)):
        outputs = {"logits": z, "target": y}
        closed = lp.Score("grad_norm", bound=kind)(outputs, _batch(9))
        auto = lp.Score("grad_norm", bound="autograd", loss_fn=loss_fn)(outputs, _batch(9))
        assert torch.allclose(closed, auto, atol=1e-6), kind
    # a reduced loss_fn (the mean) gives scores proportional to the per-sample ones: the same distribution
    mean_auto = lp.Score("grad_norm", bound="autograd", loss_fn=lambda z, y: F.cross_entropy(z, y))(
        {"logits": z, "target": y_bin.argmax(-1)}, _batch(9)
    )
    per_sample = PF.softmax_ce_grad_norm(z, y_bin.argmax(-1))
    assert torch.allclose(mean_auto * 9, per_sample, atol=1e-6)


def _novelty(score, embedding):
    n = embedding.shape[0]
    return score({"embedding": embedding}, lp.PrioritizedBatch(None, torch.arange(n), torch.ones(n)))


def test_a_non_finite_embedding_scores_nan_but_never_poisons_the_novelty_mean():
    t = lp.Score("novelty", novelty_momentum=0.5)
    _novelty(t, torch.tensor([[1.0, 1.0], [3.0, 3.0]]))  # mean (2, 2)
    bad = torch.tensor([[float("nan"), 0.0], [2.0, 4.0], [float("inf"), 1.0]])
    scores = _novelty(t, bad)
    assert torch.isnan(scores[0]) and not torch.isfinite(scores[2]) and scores[1] == pytest.approx(2.0)
    mean = t.state_dict()["novelty_mean"]
    assert torch.allclose(mean, torch.tensor([2.0, 3.0]))  # blended with the one finite row only
    _novelty(t, torch.full((2, 2), float("nan")))  # a batch without a finite row leaves the mean as it was
    assert torch.allclose(t.state_dict()["novelty_mean"], torch.tensor([2.0, 3.0]))
    assert torch.isfinite(_novelty(t, torch.zeros(2, 2))).all()
    u = lp.Score("novelty", novelty_momentum=0.5)
    assert torch.isnan(_novelty(u, torch.full((2, 2), float("inf")))).all()  # a first batch without a finite row
    _novelty(u, torch.full((1, 2), 4.0))
    assert torch.equal(u.state_dict()["novelty_mean"], torch.full((2,), 4.0))  # the mean starts from finite rows


@pytest.mark.parametrize("score", ["grad_norm", "deviation", "margin"])
def test_targets_as_labels_column_or_one_hot_rows_score_like_plain_labels(score):
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 1, 0])
    batch = lp.PrioritizedBatch(None, torch.arange(5), torch.ones(5))
    t = lp.Score(score, owner="LossTracker")  # what LossTracker(score=score, class_balance=0.5) scores with
    expected = t({"logits": logits, "target": labels}, batch)
    forms = (
        labels[:, None],
        labels.float(),
        labels[:, None].float(),
        F.one_hot(labels, 3),
        F.one_hot(labels, 3).float(),
    )
    for target in forms:
        values, classes = t({"logits": logits, "target": target}, batch), t.labels({"target": target}, 5)
        assert values.shape == (5,) and torch.allclose(values, expected), target
        assert torch.equal(classes, labels)  # what class_balance counts
    with pytest.raises(ValueError, match=r"`targets` has shape \(5, 2\)"):
        PF.softmax_ce_grad_norm(logits, torch.zeros(5, 2, dtype=torch.long))


def test_margin_on_regression_targets_is_refused(tmp_path):
    score = lp.Score("margin")
    batch = lp.PrioritizedBatch(None, torch.arange(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"reads 'target' as class labels in \[0, 2\), but got 0.5"):
        score({"logits": torch.zeros(3, 2), "target": torch.tensor([0.5, 1.0, 0.0])}, batch)
    with pytest.raises(ValueError, match=r"needs class scores 'logits' of shape \(n, C\)"):
        score({"logits": torch.zeros(3, 2), "target": torch.zeros(3, 5)}, batch)
