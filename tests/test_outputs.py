"""lightning_per.outputs: what training_step returns is read for a score, and what is missing or mis-shaped is named."""

import pytest
import torch

import lightning_per as lp
from lightning_per.outputs import rows
from tests.helpers import TinyClassifier, blobs, fit


def test_a_loss_with_the_wrong_number_of_rows_is_refused_by_name(tmp_path):
    # (n, T) per-token losses are sequences (tests/test_functional_sequences.py); a loss of another length is refused
    class Short(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            out["per_sample_loss"] = out["per_sample_loss"][:4, None].expand(-1, 3)
            return out

    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="proportional")
    with pytest.raises(ValueError, match=r"'per_sample_loss' with shape \(4, 3\).*one row per sample"):
        fit(tmp_path, [lp.LossTracker()], datamodule=dm, model=Short())


def test_missing_per_sample_losses_name_the_key_and_the_fix(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match=r'per_sample_loss(.|\n)*reduction="none"') as error:
        fit(tmp_path, [lp.LossTracker()], datamodule=dm, model=TinyClassifier(return_mode="tensor"))
    assert "\n" in str(error.value) and "\\n" not in str(error.value)  # the hint prints on its own lines


def test_every_missing_key_is_named_at_once(tmp_path):
    class LossOnly(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            return {"loss": out["loss"], "per_sample_loss": out["per_sample_loss"]}

    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match=r"under 'logits' and 'target'.*the keys \['loss', 'per_sample_loss'\]"):
        fit(tmp_path, [lp.LossTracker(score="margin")], datamodule=dm, model=LossOnly())


def test_losses_of_the_wrong_length_are_refused(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match=r"'per_sample_loss' with shape \(7,\), but the batch has 8"):
        fit(tmp_path, [lp.LossTracker()], datamodule=dm, model=TinyClassifier(return_mode="short"))


class NoLogits(TinyClassifier):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        return {"loss": out["loss"], "per_sample_loss": out["per_sample_loss"]}


class ShortLogits(TinyClassifier):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["logits"] = out["logits"][:-1]
        return out


def test_outputs_without_logits_say_what_was_found_and_how_to_pass_a_score_function(tmp_path):
    found = r"under 'logits' and 'target'.*the keys \['loss', 'per_sample_loss'\](.|\n)*fn\(outputs, batch\)"
    with pytest.raises(ValueError, match=found):
        fit(tmp_path, [lp.ImportanceSamplingCallback()], model=NoLogits())


def test_logits_of_the_wrong_length_say_the_shapes_and_how_to_pass_a_score_function(tmp_path):
    with pytest.raises(ValueError, match=r"'logits' with shape \(7, 3\), but the batch has 8 samples"):
        fit(tmp_path, [lp.ImportanceSamplingCallback()], model=ShortLogits())


def test_rows_refuses_a_missing_key_naming_what_was_returned():
    with pytest.raises(ValueError, match=r"^Mine: `training_step` returned the keys \['loss'\], without 'losses'"):
        rows({"loss": torch.zeros(())}, "losses", 4, "Mine")
    with pytest.raises(ValueError, match=r"returned a Tensor, without 'losses': return one value per sample"):
        rows(torch.zeros(4), "losses", 4, "Mine", scalar=True)
    assert rows({"losses": torch.ones(4, 2)}, "losses", 4, "Mine").shape == (4, 2)
