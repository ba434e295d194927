"""Every shell line of the README runs on a clean clone: cheap ones run here, the rest are listed."""

import re
import shlex
from pathlib import Path

import pytest

import lightning_per as lp

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"

# `make` targets the README names, and where each is exercised: CI runs `make test` itself (lint, types, this
# suite, the docs build); `make demo` trains two 60-epoch runs (about a minute each here), its parts are tested in
# tests/test_cli.py (the configs build, the demo finds them, a tiny fit through the console script).
MAKE_TARGETS = {"demo", "test", "docs", "bench", "gpu-check"}


def shell_lines(text: str) -> list[str]:
    """The commands of the README's ```bash blocks, comments and blank lines dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


LINES = shell_lines(README.read_text())


def test_the_readme_has_shell_lines_and_every_one_is_a_kind_this_test_checks():
    assert LINES, "no ```bash block found in README.md"
    kinds = ("make ", "lightning-per fit ", "python -m lightning_per.examples.demo --config-dir")
    unknown = [line for line in LINES if not line.startswith(kinds)]
    assert not unknown, f"README shell lines this test does not check: {unknown}; add them to tests/test_readme.py"


def test_every_make_target_the_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    for line in LINES:
        if line.startswith("make "):
            target = line.split()[1]
            assert target in MAKE_TARGETS, f"README names `make {target}`, which no test or CI step exercises"
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"Makefile has no target {target!r}"


# what each flag of a README console-script line must change in the run it builds
FLAG_EFFECTS = {
    "--data.strategy.alpha=0.5": lambda cli: cli.datamodule.strategy.alpha == 0.5,
    "--trainer.max_epochs=2": lambda cli: cli.trainer.max_epochs == 2,
    "--trainer.devices=2": lambda cli: cli.trainer.num_devices == 2,
    "--trainer.strategy=ddp": lambda cli: type(cli.trainer.strategy).__name__ == "DDPStrategy",
}


@pytest.mark.parametrize("line", [line for line in LINES if line.startswith("lightning-per fit ")])
def test_every_console_script_line_builds_the_main_job_the_readme_describes_with_its_flags(line, tmp_path):
    from lightning_per.cli import main
    from lightning_per.examples import Classifier, MNIST1DDataModule

    args = shlex.split(line)[2:]  # drop `lightning-per fit`: run=False builds without a subcommand
    cli = main([*args, f"--data.data_dir={tmp_path}"], run=False)
    # the README's main job: a 1D CNN on 4000 MNIST-1D signals, Adam, `proportional` sampling with LossTracker
    assert isinstance(cli.model, Classifier) and cli.model.hparams.arch == "cnn1d"
    assert cli.model.hparams.optimizer == "adam"
    assert isinstance(cli.datamodule, MNIST1DDataModule) and cli.datamodule.train_size == 4000
    assert cli.datamodule.strategy.name == "proportional"
    assert [type(c) for c in cli.trainer.callbacks if isinstance(c, lp.LossTracker)] == [lp.LossTracker]
    flags = [a for a in args if a.startswith("--") and "=" in a]
    unchecked = [flag for flag in flags if flag not in FLAG_EFFECTS]
    assert not unchecked, f"say in FLAG_EFFECTS what the README's {unchecked} must change"
    for flag in flags:
        assert FLAG_EFFECTS[flag](cli), flag
    if "--trainer.max_epochs=2" not in flags:
        assert cli.trainer.max_epochs == 60  # the shipped 60 epochs


def test_the_demo_line_prints_the_directory_that_holds_the_shipped_configs(capsys):
    from lightning_per.examples import demo

    lines = [line for line in LINES if line.startswith("python -m lightning_per.examples.demo --config-dir")]
    assert lines
    for line in lines:
        demo.main(shlex.split(line)[3:])
        printed = Path(capsys.readouterr().out.strip())
        assert (printed / "mnist1d.yaml").is_file() and printed == demo.CONFIG_DIR


# ------------------------------------------------------------------ the quick start, shared with the docs' index
QUICK_START = re.compile(r"--8<-- \[start:quickstart\].*?```python\n(.*?)```.*?--8<-- \[end:quickstart\]", re.S)


def quick_start() -> str:
    found = QUICK_START.search(README.read_text())
    assert found, "README.md has no python block between its `--8<-- [start:quickstart]` and `[end:quickstart]` marks"
    return found.group(1)


def test_the_docs_index_shows_the_readme_quick_start_itself():
    assert '--8<-- "README.md:quickstart"' in (ROOT / "docs" / "index.md").read_text()


def test_the_quick_start_is_the_two_line_change_of_the_tutorial_example():
    def lines(text: str) -> list[str]:  # the code of `training_step`, spacing before comments ignored
        body = text[text.index("def training_step") :].split("\n\n")[0]
        return [re.sub(r"\s+#", "  #", line.strip()) for line in body.splitlines()]

    example = (ROOT / "examples" / "prioritized_sampling.py").read_text()
    assert lines(quick_start()) == lines(example[example.index("class MyModel(MyLightningModule)") :])


def test_the_quick_start_runs_with_the_tutorial_module_and_data(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    import importlib

    import torch

    tutorial = importlib.import_module("examples.prioritized_sampling")
    train_ds, val_ds = tutorial.make_data(200)
    names = {"MyLightningModule": tutorial.MyLightningModule, "train_ds": train_ds, "val_ds": val_ds}
    monkeypatch.chdir(tmp_path)  # the quick start's Trainer logs and checkpoints to the working directory
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(quick_start(), "README.md quick start", "exec"), names)
    finally:
        torch.set_num_threads(threads)
    assert names["dm"].scores.seen > 0  # LossTracker recorded the module's per-sample losses


def test_the_demo_table_in_the_readme_is_the_committed_output_of_the_demo():
    import json

    from lightning_per.examples.demo import format_table

    committed = json.loads((ROOT / "bench_out" / "demo.json").read_text())
    assert committed["argv"] == ["--out", "bench_out/demo.json"], "the README table is the default demo's output"
    blocks = re.findall(r"```\n(config .*?)\n```", README.read_text(), flags=re.S)
    assert blocks == [format_table(committed["rows"])], "regenerate: python -m lightning_per.examples.demo --out ..."
