"""Every script in examples/ runs at its tiny size (``--fast``) and prints the table its docstring promises.

The docs' tutorial pages include these files with ``--8<--`` (tests/test_docs.py checks that), so running them here
runs the tutorials' code too.
"""

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, ddp_env, free_port

pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")

EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(autouse=True)
def one_thread_in_a_scratch_directory(tmp_path, monkeypatch):
    """Small models train fastest on one thread; anything an example writes lands in ``tmp_path``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    yield
    torch.set_num_threads(threads)


def run(name: str, *args: str):
    return importlib.import_module(f"examples.{name}").main(["--fast", *args])


def test_every_example_has_a_docstring_with_its_run_lines_and_a_fast_mode():
    assert set(SCRIPTS) == {
        "continual",
        "ddp",
        "language_model",
        "long_tail",
        "noisy_labels",
        "own_model",
        "prioritized_sampling",
        "streaming",
    }
    for name in SCRIPTS:
        text = (EXAMPLES / f"{name}.py").read_text()
        doc = importlib.import_module(f"examples.{name}").__doc__
        assert doc and "--fast" in doc, name
        assert f"examples/{name}.py" in doc or f"examples.{name}" in doc, name
        assert '"--fast"' in text, name


def test_the_library_never_imports_the_examples():
    package = ROOT / "lightning_per"
    offenders = [p for p in package.rglob("*.py") if re.search(r"^\s*(from|import) examples\b", p.read_text(), re.M)]
    assert not offenders


def test_prioritized_sampling_trains_uniform_and_prune_and_prune_takes_fewer_steps(capsys):
    results = run("prioritized_sampling")
    out = capsys.readouterr().out
    assert re.search(r"strategy\s+val acc\s+steps\s+CPU s", out)
    assert re.search(r"^uniform\s+\d+\.\d%", out, re.M) and re.search(r"^prune\s+\d+\.\d%", out, re.M)
    assert results["prune"]["steps"] < results["uniform"]["steps"]  # pruned epochs are shorter
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in results.values())


def test_noisy_labels_runs_uniform_and_rho_loss_and_charges_the_selection(capsys):
    results = run("noisy_labels")
    out = capsys.readouterr().out
    assert "30% of training labels flipped" in out
    assert re.search(r"^uniform\s+\d+\.\d%", out, re.M) and re.search(r"^rho-loss\s+\d+\.\d%", out, re.M)
    uniform, rho = results["uniform"], results["rho-loss"]
    assert 0.15 < uniform["mislabelled"] < 0.45  # uniform batches carry about the flipped share
    # a RHO-LOSS step scores 10x its batch without gradients, and the holdout model is charged: more than 4x
    assert rho["compute"] > 4 * uniform["compute"]


def test_long_tail_switches_the_deferred_and_annealed_schedules_to_balanced_draws(capsys):
    results = run("long_tail")
    out = capsys.readouterr().out
    assert re.search(r"schedule\s+balanced\s+worst class\s+tail class\s+tail draws", out)
    uniform = results["uniform"]["tail_draws"]
    for name in ("balanced", "deferred", "annealed"):  # the last epoch draws the tail class about 1 / 10 of the time
        assert results[name]["tail_draws"] > 2 * uniform, name
    assert all(0.0 <= r["worst"] <= r["balanced"] <= 1.0 for r in results.values())


def test_continual_replay_keeps_what_fine_tuning_forgets(capsys):
    results = run("continual")
    out = capsys.readouterr().out
    assert re.search(r"method\s+ACC\s+BWT\s+SGD steps", out)
    for name in ("fine-tune", "ER", "ER x20", "MER"):
        assert re.search(rf"^{re.escape(name)}\s+\d\.\d{{3}}", out, re.M), name
    assert results["ER"]["acc"] > results["fine-tune"]["acc"] + 0.1
    assert results["MER"]["steps"] > 10 * results["ER"]["steps"]  # several inner SGD steps per incoming batch
    assert results["MER"]["acc"] > results["fine-tune"]["acc"] + 0.1  # the guide's first run learns (--fast: 0.57)


def test_language_model_trains_uniform_prune_and_rho1_and_charges_the_reference(capsys):
    results = run("language_model")
    out = capsys.readouterr().out
    assert re.search(r"method\s+val bits/byte\s+compute \(x uniform\)\s+noise in trained tokens", out)
    for name in ("uniform", "prune", "rho-1"):
        assert re.search(rf"^{re.escape(name)}\s+\d+\.\d{{3}}\s+\d+\.\d\d\s+\d+%", out, re.M), name
        assert 0 < results[name]["bpb"] < 9 and 0 <= results[name]["noise"] <= 1
    assert 0.3 < results["uniform"]["noise"] < 0.7  # half of the training sequences are random bytes
    assert results["rho-1"]["compute"] > 1.3 * results["uniform"]["compute"]  # its reference's forwards and training


def test_own_model_trains_through_the_cli_and_leaves_metrics_with_per_columns_and_the_config(tmp_path, capsys):
    metrics = run("own_model", "--save-dir", str(tmp_path / "logs"))
    run_dir = tmp_path / "logs" / "own_model" / "version_0"
    assert (run_dir / "metrics.csv").exists() and (run_dir / "config.yaml").exists()
    assert "examples.own_model.MyClassifier" in (run_dir / "config.yaml").read_text()
    assert {"per/ess", "per/top10_mass", "per/max_weight", "val_acc"} <= set(metrics[1])
    assert re.search(r"epoch\s+val_acc\s+per/ess", capsys.readouterr().out)


@pytest.mark.slow
def test_the_console_script_finds_the_yaml_s_own_classes_from_the_repository_root_with_pythonpath():
    """What the docs tell a user to run; the training itself is tested in-process above."""
    script = shutil.which("lightning-per", path=str(Path(sys.executable).parent)) or shutil.which("lightning-per")
    if script is None:
        pytest.skip("the lightning-per console script is not installed")
    env = {**ddp_env(), "PYTHONPATH": "."}  # as documented: `PYTHONPATH=. lightning-per fit --config ...`
    done = subprocess.run(
        [script, "fit", "--config", "examples/own_model.yaml", "--print_config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "class_path: examples.own_model.MyClassifier" in done.stdout


@pytest.mark.slow
def test_ddp_example_runs_two_processes_as_a_script_and_saves_one_checkpoint(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ddp.py"), "--fast", "--out", str(tmp_path)],
        cwd=ROOT,
        env=ddp_env(MASTER_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stdout
    assert re.findall(r"^[01]\s+(\d+)$", done.stdout, re.M) == ["240", "240"]  # each process half of the epoch
    assert "score tables identical on every process: True" in done.stdout
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "LossTracker" in state["callbacks"] and "PrioritizedDataModule" in state
