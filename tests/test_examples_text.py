"""The offline text task: the standard library's files split by a fixed rule, sequences, the noisy part, and the shipped
config `text_lm.yaml` trained from YAML by the console script at a tiny size."""

import zlib
from pathlib import Path

import pytest
import torch

import lightning_per as lp
from lightning_per.cli import main
from lightning_per.examples import CausalLM, StdlibTextDataModule
from lightning_per.examples.text import corpus_info, stdlib_files, stdlib_sequences
from tests.helpers import fit

CONFIG = Path(__file__).parents[1] / "lightning_per/examples/configs/text_lm.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_corpus_is_split_by_file_with_a_fixed_rule_and_named_by_its_digest(tmp_path):
    for name, text in {
        "a.py": "x = 1\n" * 30,
        "b.py": "def f():\n    return 2\n" * 9,
        "c.py": "",
        "d.txt": "no",
    }.items():
        (tmp_path / name).write_text(text)
    files = stdlib_files(str(tmp_path))
    buckets = {p.name: zlib.crc32(p.name.encode()) % 20 for split in files.values() for p in split}
    assert sorted(buckets) == ["a.py", "b.py", "c.py"]  # *.py only, the empty file too (no sequence)
    for split, paths in files.items():
        assert all((split == "test") == (buckets[p.name] == 0) for p in paths)
    info = corpus_info(str(tmp_path))
    assert len(info["sha256"]) == 64 and info["python"] and sum(info[s]["files"] for s in ("train", "val", "test")) == 3
    real = stdlib_files()
    assert not {p.name for p in real["train"]} & {p.name for p in real["val"] + real["test"]}  # disjoint by file
    with pytest.raises(FileNotFoundError, match=r"No \*.py file"):
        stdlib_files(str(tmp_path / "missing"))


def test_sequences_never_span_two_files_and_pad_the_last_piece_of_each():
    x, y = stdlib_sequences("test", context=64)
    data = b"".join(p.read_bytes() for p in stdlib_files()["test"])
    assert int((y != -100).sum()) == len(data) - len(stdlib_files()["test"])  # every byte but a file's first, once
    real = y[:, :-1] != -100
    assert bool((x[:, 1:] == y[:, :-1])[real].all()) and int(x.min()) >= 0 and int(x.max()) < 256
    padded = (y == -100).any(1)
    assert 0 < int(padded.sum()) <= len(stdlib_files()["test"])  # at most one padded sequence per file


def test_the_noisy_part_is_the_stated_share_of_training_sequences_and_evaluation_stays_clean():
    dm = StdlibTextDataModule(context=16, train_sequences=200, val_sequences=20, test_sequences=20, noise=0.25)
    dm.setup("fit")
    clean = StdlibTextDataModule(context=16, train_sequences=200, val_sequences=20, test_sequences=20)
    clean.setup("fit")
    assert int(dm.noisy.sum()) == 50 and len(dm.train_dataset) == 200
    x, y = dm.train_dataset.tensors
    cx, _ = clean.train_dataset.tensors
    assert torch.equal(x[~dm.noisy], cx[~dm.noisy]) and not torch.equal(x[dm.noisy], cx[dm.noisy])
    assert bool((y[dm.noisy] != -100).all()) and torch.equal(x[dm.noisy][:, 1:], y[dm.noisy][:, :-1])
    assert torch.equal(dm.val_dataset.tensors[0], clean.val_dataset.tensors[0])
    with pytest.raises(ValueError, match=r"`noise` must be a finite number in \[0, 1\), got 1.0"):
        StdlibTextDataModule(noise=1.0)


def test_the_shipped_text_config_trains_from_yaml_at_a_tiny_size(tmp_path):
    tiny = {"context": 16, "width": 16, "layers": 1}
    args = [
        "fit",
        f"--config={CONFIG}",
        *(f"--data.{k}={v}" for k, v in {"train_sequences": 40, "val_sequences": 8, "test_sequences": 0,
                                         "context": 16, "batch_size": 8}.items()),
        *(f"--model.{k}={v}" for k, v in tiny.items()),
        *(f"--trainer.callbacks.reference.init_args.{k}={v}" for k, v in tiny.items()),
        "--trainer.callbacks.max_epochs=1",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    cli = main(args)
    assert isinstance(cli.model, CausalLM) and isinstance(cli.datamodule, StdlibTextDataModule)
    selection = next(c for c in cli.trainer.callbacks if isinstance(c, lp.TokenSelection))
    assert selection.cost_units == 3 * 1 * 4 and selection.reference_tokens == 36 * 16  # trained on the holdout first
    metrics = cli.trainer.callback_metrics
    assert 0.6 <= float(metrics["per/kept_token_fraction"]) < 0.65 and 0 < float(metrics["val/bpb"]) < 9


def test_the_holdout_stays_clean_and_noisy_is_read_by_the_training_sets_index():
    kwargs = {"context": 16, "train_sequences": 200, "val_sequences": 0, "test_sequences": 0}
    dm = StdlibTextDataModule(noise=0.5, holdout_fraction=0.2, **kwargs)
    dm.setup("fit")
    clean = StdlibTextDataModule(holdout_fraction=0.2, **kwargs)
    clean.setup("fit")
    assert len(dm.holdout_dataset) == 40 and len(dm.noisy) == len(dm.train_dataset) == 160 and int(dm.noisy.sum()) == 80
    held = torch.stack([dm.holdout_dataset[i][0] for i in range(40)])
    assert torch.equal(held, torch.stack([clean.holdout_dataset[i][0] for i in range(40)]))  # no noise held out
    x = torch.stack([dm.train_dataset[i][0] for i in range(160)])
    cx = torch.stack([clean.train_dataset[i][0] for i in range(160)])
    assert torch.equal(x[~dm.noisy], cx[~dm.noisy]) and bool((x[dm.noisy] != cx[dm.noisy]).any(dim=1).all())


def test_litgpts_gpt_trains_per_sequence_and_per_token_with_the_two_line_change(tmp_path):
    pytest.importorskip("litgpt")  # optional: not installed by any extra (checked with litgpt 0.5.13)
    import torch.nn.functional as F
    from lightning.pytorch import LightningModule
    from litgpt.config import Config
    from litgpt.model import GPT

    class LitGPTModule(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            config = Config(block_size=16, vocab_size=256, padded_vocab_size=256, n_layer=1, n_head=2, n_embd=16)
            self.gpt = GPT(config)

        def forward(self, x):
            return self.gpt(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            losses = F.cross_entropy(self(x).transpose(1, 2), y, reduction="none")  # (n, T)
            return {"loss": lp.weighted_mean(losses, batch, mask=y != -100), "per_sample_loss": losses, "target": y}

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    sizes = {"context": 16, "train_sequences": 64, "val_sequences": 0, "test_sequences": 0, "batch_size": 8}
    pruned = StdlibTextDataModule(strategy=lp.SamplingStrategy("prune", final_uniform_epochs=0), **sizes)
    tracker = lp.LossTracker()
    fit(tmp_path, [tracker], model=LitGPTModule(), datamodule=pruned, max_epochs=2)
    assert pruned.scores.seen == 64 and tracker.last_stats["per/pruned_fraction"] > 0  # scored per sequence, pruned
    selection = lp.TokenSelection(LitGPTModule(), keep=0.5)  # an untrained reference: any module of the same kind
    trainer = fit(tmp_path, [selection], model=LitGPTModule(), datamodule=StdlibTextDataModule(**sizes)).trainer
    assert 0.5 <= float(trainer.callback_metrics["per/kept_token_fraction"]) < 0.55
