"""A causal LM with per-token losses under every method (prioritized sampling, prune, top-k reducible, Selective
Backprop, importance sampling) and under Rho-1 token selection: the two-line `training_step`, costs, checks, state."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import lightning_per as lp
from lightning_per.examples import CausalLM
from lightning_per.functional.sequences import sequence_losses
from tests.helpers import fit

T = 8


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    """One thread (tiny transformers are slower on two threads of a busy machine: OpenMP waits) and seeded weights."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def tokens(n=32, seed=0):
    """Byte sequences with padding (-100 targets) of random length; half repeat one byte (learnable), half random."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(256, (n, T), generator=g)
    x[::2] = x[::2, :1]
    y = torch.cat([x[:, 1:], x[:, :1]], 1)
    y[torch.arange(T) >= torch.randint(1, T + 1, (n, 1), generator=g)] = -100
    return TensorDataset(x, y)


def lm(**kwargs):
    return CausalLM(**{"context": T, "width": 8, "layers": 1, "heads": 2, "lr": 0.01, "schedule": "none", **kwargs})


def token_data(strategy="uniform", holdout=0.0):
    return lp.PrioritizedDataModule(tokens(), batch_size=8, strategy=strategy, seed=0, holdout_fraction=holdout)


@pytest.mark.parametrize("method", ["rank", "prune", "topk_reducible", "selective_backprop", "importance"])
def test_every_method_trains_a_causal_lm_from_its_per_token_losses(tmp_path, method):
    if method in ("rank", "prune"):
        tracker = lp.LossTracker()
        dm = fit(tmp_path, [tracker], model=lm(), datamodule=token_data(method)).datamodule
        assert dm.scores.seen == 32 and torch.isfinite(dm.scores.scores).all()  # one length-normalised loss each
        assert tracker.last_plan is not None
    elif method == "topk_reducible":
        irreducible = lp.IrreducibleLoss(model=lm(), max_epochs=1)
        trainer = fit(
            tmp_path, [irreducible, lp.TopKSelection(presample=2)], model=lm(), datamodule=token_data(holdout=0.25)
        ).trainer
        assert irreducible.table.shape == (24,) and torch.isfinite(irreducible.table).all()  # one per sequence
        assert trainer.callback_metrics["per/is_active"] == 1.0
    elif method == "selective_backprop":
        trainer = fit(tmp_path, [lp.SelectiveBackprop(presample=2)], model=lm(), datamodule=token_data()).trainer
        assert 0 < trainer.callback_metrics["per/kept_fraction"] <= 1
    else:
        selection = lp.ImportanceSamplingCallback(presample=2, tau_th=0.01, tau_every_n_steps=1)
        trainer = fit(tmp_path, [selection], model=lm(), datamodule=token_data()).trainer
        assert trainer.callback_metrics["per/is_active"] > 0 and trainer.callback_metrics["per/tau"] > 0


def test_the_tracker_records_each_sequences_mean_over_its_real_tokens(tmp_path):
    seen = []

    class Recording(lp.LossTracker):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            y = batch[1]
            expected = sequence_losses(outputs["per_sample_loss"].detach(), y != -100)
            seen.append((batch.index.clone(), expected))
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    tracker = Recording()
    dm = fit(tmp_path, [tracker], model=lm(), datamodule=token_data("rank"), max_epochs=1).datamodule
    index, expected = (torch.cat(parts) for parts in zip(*seen, strict=True))
    torch.testing.assert_close(dm.scores.scores[index], expected)


def test_token_selection_keeps_the_share_of_real_tokens_and_counts_the_reference(tmp_path):
    selection = lp.TokenSelection(reference=lm(), keep=0.5)
    trainer = fit(tmp_path, [selection], model=lm(), datamodule=token_data()).trainer
    kept = float(trainer.callback_metrics["per/kept_token_fraction"])
    assert 0.5 <= kept < 0.6  # ceil(0.5 * real tokens) of each batch
    assert selection.reference_tokens == 2 * 32 * T == selection.trained_tokens and selection.reference_units == 64
    assert selection.last_step_units == 8 and selection.cost_units == 0


def test_a_reference_trained_first_is_charged_saved_and_not_trained_again(tmp_path):
    reference = lm()
    before = [p.detach().clone() for p in reference.parameters()]
    selection = lp.TokenSelection(reference=reference, keep=0.6, train=True, max_epochs=2)
    fit(tmp_path, [selection], model=lm(), datamodule=token_data(holdout=0.25), max_epochs=1)
    assert selection.cost_units == 3 * 2 * 8 and selection.seconds > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, reference.parameters(), strict=True))
    buffer = io.BytesIO()
    torch.save(selection.state_dict(), buffer)
    buffer.seek(0)
    restored = lp.TokenSelection(reference=lm(), train=True, max_epochs=2)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(reference.parameters(), restored.reference.parameters(), strict=True):
        assert torch.equal(a, b)
    seconds = restored.seconds
    fit(tmp_path, [restored], model=lm(), datamodule=token_data(holdout=0.25), max_epochs=1)
    assert restored.seconds == seconds and restored.reference_tokens > selection.reference_tokens


def test_token_selection_warns_when_the_loss_is_not_the_per_token_weighted_mean(tmp_path):
    class PerSequence(CausalLM):
        def training_step(self, batch, batch_idx):
            x, y = batch
            losses = F.cross_entropy(self(x).transpose(1, 2), y, reduction="none").mean(1)
            return {"loss": lp.weighted_mean(losses, batch)}

    model = PerSequence(context=T, width=8, layers=1, heads=2)
    with pytest.raises(
        ValueError, match=r"attached the reference model's per-token losses \(8, 8\).*got losses \(8,\)"
    ):
        fit(tmp_path, [lp.TokenSelection(reference=lm())], model=model, datamodule=token_data(), max_epochs=1)

    class Plain(CausalLM):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x).transpose(1, 2), y)

    with pytest.warns(UserWarning, match="did not pass the per-token losses to `weighted_mean"):
        plain = Plain(context=T, width=8, layers=1, heads=2)
        fit(tmp_path, [lp.TokenSelection(reference=lm())], model=plain, datamodule=token_data(), max_epochs=1)


def test_token_selection_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match=r"`keep` must be a finite number in \(0, 1\], got 0.0"):
        lp.TokenSelection(reference=lm(), keep=0)
    with pytest.raises(TypeError, match="`reference` must be a LightningModule, got Linear"):
        lp.TokenSelection(reference=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="needs `reference`"):
        fit(tmp_path, [lp.TokenSelection()], model=lm(), datamodule=token_data())
    with pytest.raises(ValueError, match="has no holdout set to train the reference on"):
        fit(tmp_path, [lp.TokenSelection(reference=lm(), train=True)], model=lm(), datamodule=token_data())
    with pytest.raises(ValueError, match=r"TokenSelection comes before SelectiveBackprop.*put TokenSelection after it"):
        fit(tmp_path, [lp.TokenSelection(reference=lm()), lp.SelectiveBackprop()], model=lm(), datamodule=token_data())

    class Scalar(CausalLM):
        def training_step(self, batch, batch_idx):
            return {"per_sample_loss": torch.zeros(batch.batch_size)}

    with pytest.raises(ValueError, match=r"must return per-token losses \(n, T\) under 'per_sample_loss'.*got \(8,\)"):
        reference = Scalar(context=T, width=8, layers=1, heads=2)
        fit(tmp_path, [lp.TokenSelection(reference=reference)], model=lm(), datamodule=token_data(), max_epochs=1)
