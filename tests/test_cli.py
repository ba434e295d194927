"""lightning_per.cli: every public class builds from LightningCLI YAML / flags, every shipped config trains, bad
input gets LightningCLI's own message; the examples' data and demo that the configs use."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import lightning_per as lp
from lightning_per import cli as cli_module
from lightning_per.cli import main
from lightning_per.examples import Classifier, ContinualClassifier, DigitsDataModule, MNIST1DDataModule, SplitDigits
from lightning_per.examples.data import resolve_data_dir
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer

CONFIGS = sorted(Path("lightning_per/examples/configs").glob("mnist1d*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_mnist1d_config_builds(config, tmp_path):
    cli = main(["--config", str(config), f"--data.data_dir={tmp_path}"], run=False)
    assert isinstance(cli.model, Classifier) and isinstance(cli.datamodule, MNIST1DDataModule)
    assert isinstance(cli.datamodule.strategy, lp.SamplingStrategy)


def test_main_config_trains_with_the_plugin(tmp_path):
    cli = main(["--config", "lightning_per/examples/configs/mnist1d.yaml", f"--data.data_dir={tmp_path}"], run=False)
    assert cli.datamodule.strategy.name == "proportional"
    assert any(isinstance(c, lp.LossTracker) for c in cli.trainer.callbacks)


def test_cli_fits_a_tiny_run_with_trainer_flags_and_every_tracker_option(tmp_path):
    args = [
        "fit",
        "--config=lightning_per/examples/configs/mnist1d_rank.yaml",
        f"--data.data_dir={tmp_path}",
        "--data.train_size=200",
        "--data.val_size=100",
        "--data.test_size=0",
        "--data.strategy.alpha=0.5",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks=lightning_per.LossTracker",
        "--trainer.callbacks.score=margin",
        "--trainer.callbacks.ema=0.5",
        "--trainer.callbacks.refresh_every_n_epochs=1",
    ]
    cli = main(args)
    tracker = [c for c in cli.trainer.callbacks if isinstance(c, lp.LossTracker)][-1]
    assert tracker.score == "margin" and tracker.ema == 0.5
    assert cli.datamodule.strategy.alpha == 0.5 and cli.datamodule.scores.seen == 200
    assert "per/ess" in cli.trainer.callback_metrics


def test_prioritized_datamodule_and_strategy_by_name_from_yaml(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        """
model:
  class_path: lightning_per.examples.Classifier
  init_args: {arch: mlp, in_features: 64}
data:
  class_path: lightning_per.examples.DigitsDataModule
  init_args:
    strategy: prune
"""
    )
    cli = main(["--config", str(cfg)], run=False)
    assert isinstance(cli.datamodule, DigitsDataModule) and cli.datamodule.strategy.name == "prune"
    cfg.write_text(
        """
model: {class_path: lightning_per.examples.Classifier}
data:
  class_path: lightning_per.PrioritizedDataModule
  init_args:
    batch_size: 7
    seed: 3
    strategy: {name: rank, alpha: 0.3, beta: 0.5, beta_final: 1.0, normalize_weights: true, initial_uniform_epochs: 3}
"""
    )
    cli = main(["--config", str(cfg)], run=False)
    assert isinstance(cli.datamodule, lp.PrioritizedDataModule) and cli.datamodule.batch_size == 7
    assert cli.datamodule.strategy == lp.SamplingStrategy(
        "rank", alpha=0.3, beta=0.5, beta_final=1.0, normalize_weights=True, initial_uniform_epochs=3
    )


def test_unknown_key_and_bad_value_fail_with_the_cli_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--config", "lightning_per/examples/configs/mnist1d.yaml", "--data.no_such_key=1"], run=False)
    assert err.value.code != 0
    assert "no_such_key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", "lightning_per/examples/configs/mnist1d.yaml", "--data.strategy.name=bogus"], run=False)
    assert "bogus" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_data_dir_names_the_directory_and_the_option(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(PermissionError, match=r"ro.*data\.data_dir"):
        resolve_data_dir(str(ro / "sub"), "data.data_dir")


def test_data_dir_that_is_a_file_names_the_directory_and_the_option(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"file.*data\.data_dir"):
        resolve_data_dir(str(blocker / "sub"), "data.data_dir")


def test_mnist1d_is_generated_once_cached_and_leaves_numpy_state_alone(tmp_path):
    import numpy as np

    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    dm = MNIST1DDataModule(train_size=100, val_size=20, test_size=30, data_dir=str(tmp_path))
    dm.setup("fit")
    assert np.random.rand() == expected
    assert [len(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset)] == [100, 20, 30]
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = MNIST1DDataModule(train_size=100, val_size=20, test_size=30, data_dir=str(tmp_path))
    again.setup("fit")
    assert torch.equal(again.train_dataset.tensors[0], dm.train_dataset.tensors[0])


def test_bad_example_arguments():
    with pytest.raises(ValueError, match="`train_size` must be > 0, got 0"):
        MNIST1DDataModule(train_size=0)
    with pytest.raises(ValueError, match="`val_fraction` must be in"):
        DigitsDataModule(val_fraction=1.5)


def test_the_demo_train_loss_column_handles_data_modules_without_one_training_set():
    from types import SimpleNamespace

    from lightning_per.examples.demo import _full_train_loss
    from tests.helpers import TinyClassifier, blobs

    model = TinyClassifier()
    assert math.isnan(_full_train_loss(model, SimpleNamespace()))  # e.g. a continual sequence of tasks
    assert math.isfinite(_full_train_loss(model, SimpleNamespace(train_dataset=blobs(20))))


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("--data.strategy.alpha=-1", "data (lightning_per.examples.MNIST1DDataModule): `alpha` must be a finite"),
        ("--model.init_args.lr=-1", "model (lightning_per.examples.Classifier): `lr` must be > 0, got -1.0."),
        (
            "--data.batch_size=0",
            "data (lightning_per.examples.MNIST1DDataModule): `batch_size` must be an integer >= 1",
        ),
    ],
)
def test_a_bad_constructor_value_reads_like_a_parser_error_with_exit_code_2(tmp_path, capsys, flag, said):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", "lightning_per/examples/configs/mnist1d.yaml", f"--data.data_dir={tmp_path}", flag])
    assert err.value.code == 2
    printed = capsys.readouterr().err
    assert f"error: {said}" in printed and "Traceback" not in printed and len(printed.splitlines()) <= 4


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        (
            "--data.strategy.name=proprtional",
            "data.strategy.name: expected one of 'uniform', 'proportional', 'rank', 'prune'; got 'proprtional'",
        ),
        ("--data.strategy=proprtional", "data.strategy: expected one of 'uniform', 'proportional', 'rank', 'prune'"),
        ("--data.batch_size=abc", "data.batch_size: expected int; got 'abc'"),
        ("--data.nonexistent=3", "data: lightning_per.examples.MNIST1DDataModule takes no option 'nonexistent'"),
        (
            "--trainer.callbacks.score=lsos",
            "trainer.callbacks.score: expected one of 'loss', 'reducible', 'grad_norm', 'deviation', 'margin'",
        ),
    ],
)
def test_a_misspelled_option_value_is_one_line_with_exit_code_2(tmp_path, capsys, flag, said):
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", "lightning_per/examples/configs/mnist1d.yaml", f"--data.data_dir={tmp_path}", flag])
    assert err.value.code == 2
    printed = capsys.readouterr().err
    assert f"error: {said}" in printed and len(printed.strip().splitlines()) == 2  # the usage line and the error


def test_a_misspelling_inside_a_yaml_file_is_one_line_too(tmp_path, capsys):
    shipped = Path(__file__).parents[1] / "lightning_per/examples/configs/mnist1d.yaml"
    config = tmp_path / "mine.yaml"
    config.write_text(shipped.read_text().replace("name: proportional", "name: proprtional"))
    with pytest.raises(SystemExit) as err:
        main(["fit", "--config", str(config), f"--data.data_dir={tmp_path}"])
    assert err.value.code == 2
    printed = capsys.readouterr().err
    said = "data.strategy.name: expected one of 'uniform', 'proportional', 'rank', 'prune'; got 'proprtional'"
    assert f"error: {said}" in printed and len(printed.strip().splitlines()) == 2


def test_a_first_run_of_a_shipped_config_logs_the_per_metrics_with_its_config_beside_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).parents[1] / "lightning_per/examples/configs/mnist1d.yaml"
    args = ["fit", f"--config={config}", f"--data.data_dir={tmp_path}", "--data.train_size=200", "--data.val_size=50"]
    cli = main([*args, "--data.test_size=0", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"])
    run = Path(cli.trainer.log_dir)
    assert run.parent == tmp_path / "lightning_logs" and (run / "config.yaml").is_file()
    if not (run / "metrics.csv").exists():  # Lightning logs to TensorBoard where it is installed
        assert list(run.glob("events.out.tfevents.*")), "neither metrics.csv nor a TensorBoard event file"
        return
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"per/ess", "per/max_weight", "per/top10_mass", "val/acc", "train/loss"} <= set(header)


def test_lightning_notices_about_other_products_are_muted_and_warnings_about_the_run_kept(caplog):
    import logging
    import warnings

    from lightning.pytorch.utilities import rank_zero_info

    from lightning_per.cli import quiet_lightning_notices

    quiet_lightning_notices()
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False")
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_lightning_notices()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn(
            "The number of training batches (4) is smaller than the logging interval", UserWarning, stacklevel=1
        )
    assert [str(w.message)[:14] for w in caught] == ["The number of "]


def test_the_config_is_saved_next_to_the_logs_and_never_over_a_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("mine: true\n")  # a user's own file
    common = [
        "fit",
        f"--config={Path(__file__).parents[1] / 'lightning_per/examples/configs/mnist1d.yaml'}",
        f"--data.data_dir={tmp_path}",
        "--data.train_size=100",
        "--data.val_size=0",
        "--data.test_size=0",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
    ]
    main([*common, "--trainer.logger=false"])  # no logger: no config file anywhere
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"
    cli = main([*common, "--trainer.logger=true", f"--trainer.default_root_dir={tmp_path / 'runs'}"])
    assert (Path(cli.trainer.log_dir) / "config.yaml").is_file()
    assert (tmp_path / "config.yaml").read_text() == "mine: true\n"


def test_the_demo_finds_its_configs_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    from lightning_per.examples import demo

    monkeypatch.chdir(tmp_path)
    assert demo.resolve_config("mnist1d") == demo.CONFIG_DIR / "mnist1d.yaml"
    assert all(demo.resolve_config(name).is_file() for name in demo.DEFAULT_CONFIGS)
    demo.main(["--config-dir"])
    assert capsys.readouterr().out.strip() == str(demo.CONFIG_DIR)
    with pytest.raises(SystemExit):
        demo.main(["--configs", "no_such_config"])
    assert "one of the shipped configs: continual_er" in capsys.readouterr().err


def test_the_shipped_configs_are_package_data():
    import tomllib

    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "examples/configs/*.yaml" in data["tool"]["setuptools"]["package-data"]["lightning_per"]


def test_the_importance_config_trains_with_the_callback_and_logs_tau(tmp_path):
    from lightning_per.cli import main

    args = [
        "fit",
        "--config=lightning_per/examples/configs/mnist1d_importance.yaml",
        f"--data.data_dir={tmp_path}",
        "--data.train_size=300",
        "--data.val_size=100",
        "--data.test_size=0",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = main(args)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, lp.ImportanceSamplingCallback)]
    assert cb.presample == 3 and cb.score == "grad_norm" and cb.tau_th == 2.0
    assert cli.datamodule.strategy.name == "uniform"
    assert cli.trainer.global_step == 6 and cb.tau > 0
    assert float(cli.trainer.callback_metrics["per/tau"]) == pytest.approx(cb.tau)
    assert "per/is_active" in cli.trainer.callback_metrics


@pytest.mark.parametrize("config", ["mnist1d_rho", "mnist1d_selective_backprop"])
def test_the_selection_configs_train_through_the_console_script(tmp_path, config):
    from lightning_per.cli import main

    args = [
        "fit",
        f"--config=lightning_per/examples/configs/{config}.yaml",
        f"--data.data_dir={tmp_path}",
        "--data.train_size=400",
        "--data.val_size=100",
        "--data.test_size=0",
        "--data.batch_size=20",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = main(args)
    rule = [c for c in cli.trainer.callbacks if isinstance(c, (lp.TopKSelection, lp.SelectiveBackprop))][-1]
    assert cli.trainer.global_step == 3 and rule.state_dict()["run_selected"] == 3
    assert float(cli.trainer.callback_metrics["per/is_active"]) == 1.0
    if config == "mnist1d_rho":
        (irreducible,) = [c for c in cli.trainer.callbacks if isinstance(c, lp.IrreducibleLoss)]
        assert irreducible.table.shape == (300,) and len(cli.datamodule.holdout_dataset) == 100


REPO = Path(__file__).resolve().parents[1]


def test_the_continual_configs_train_through_the_console_script(tmp_path: Path) -> None:
    common = [
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    configs = sorted((REPO / "lightning_per" / "examples" / "configs").glob("continual_*.yaml"))
    assert [p.stem for p in configs] == ["continual_er", "continual_mer", "continual_per"]
    er = main(["fit", "--config", str(configs[0]), *common, f"--trainer.default_root_dir={tmp_path / 'er'}"], run=True)
    assert isinstance(er.model, ContinualClassifier) and isinstance(er.datamodule, SplitDigits)
    (replay,) = [c for c in er.trainer.callbacks if isinstance(c, ExperienceReplay)]  # type: ignore[attr-defined]
    assert replay.buffer.seen == 50
    mer = main(
        ["fit", "--config", str(configs[1]), *common, f"--trainer.default_root_dir={tmp_path / 'mer'}"], run=True
    )
    assert isinstance(mer.model, MER) and isinstance(mer.model.module, ContinualClassifier)
    assert mer.model.buffer.seen == 50
    per = main(["--config", str(configs[2])], run=False)
    replays = [c for c in per.trainer.callbacks if isinstance(c, ExperienceReplay)]  # type: ignore[attr-defined]
    assert len(replays) == 1 and isinstance(replays[0].buffer, PrioritizedReplayBuffer)


def test_the_console_script_releases_the_group_its_run_left_alive(one_process_group, monkeypatch):
    monkeypatch.setattr(cli_module, "main", lambda: None)  # stands for a `fit` that returns with the group alive
    cli_module.entry()
    assert not dist.is_initialized()
