"""The ``lightning-per`` console script: a LightningCLI over any LightningModule and LightningDataModule.

Example::

    lightning-per fit --config lightning_per/examples/configs/mnist1d.yaml --trainer.max_epochs=2
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from typing import NoReturn

from jsonargparse._common import debug_mode_active
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from typing_extensions import override

from lightning_per.plumbing.distributed import release_process_group

__all__ = ["SaveConfigNextToLogs", "condense", "entry", "main", "quiet_lightning_notices"]


class SaveConfigNextToLogs(SaveConfigCallback):
    """Saves the run's config as ``config.yaml`` in the logger's directory, and nowhere without a logger.

    Lightning's own callback writes to ``trainer.log_dir``, which is the working directory when there is no logger,
    so a run would overwrite a ``config.yaml`` of the user's there. Within a logger's (versioned) directory the file
    belongs to the run and is overwritten when the same version is written again.
    """

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.logger is None:  # the same on every process, so no process waits in a broadcast
            return
        super().setup(trainer, pl_module, stage)


class _Parser(LightningArgumentParser):
    """A parser whose errors are one line: the option's full key, what it accepts and what it got.

    jsonargparse explains a value that fits none of a union's types (``SamplingStrategy | StrategyName | None``) by
    nesting every type's failure, tens of lines around the one that matters; a misspelled name then reads like a
    crash. The usage printed before the message is the one-line summary, not every Trainer flag.
    """

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if debug_mode_active() or not self.exit_on_error:  # a nested parser: its caller reports the error
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"usage: {parser.prog.replace(' [options]', '')} [-h] [-c CONFIG] [options]\n")
        sys.stderr.write(f"error: {condense(message)} (JSONARGPARSE_DEBUG=true shows the details)\n")
        self.exit(2)


def condense(message: str) -> str:
    r"""The innermost failure of a jsonargparse error, as ``key.path: expected ...; got ...``.

    The key path is the option as the command line writes it (``data.strategy.name``); the failure is the one under
    the most deeply nested key, where the value was actually refused.

    Example:
        >>> error = 'Parser key "data":\n Parser key "name":\n  Expected a typing.Literal[\'a\', \'b\']. Got value: c'
        >>> condense(error)
        "data.name: expected one of 'a', 'b'; got 'c'"
    """
    lines = [line for line in message.splitlines() if line.strip()]
    indents = [len(line) - len(line.lstrip()) for line in lines]
    keyed = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _KEY.search(line))]
    if not keyed:
        return " ".join(line.strip() for line in lines)
    deepest = max(keyed, key=lambda item: indents[item[0]])[0]
    path, depth = [], indents[deepest] + 1
    for i in range(deepest, -1, -1):
        found = _KEY.search(lines[i])
        if found and indents[i] < depth:
            path.append(found.group(1))
            depth = indents[i]
    block = []
    for i in range(deepest + 1, len(lines)):
        if indents[i] <= indents[deepest]:
            break
        block.append(lines[i].strip().lstrip("- "))
    refused = next((m for line in block if (m := _REFUSED.search(line))), None)
    if refused is not None:  # an option the class does not take: name the class and its options
        owner = next((m.group(1) for line in block if (m := _CLASS.search(line))), None)
        return f"{'.'.join(reversed(path))}: {owner or 'the class'} takes no option {refused.group(1)!r}"
    expected = [_type_name(m.group(1)) for line in block if (m := _EXPECTED.match(line))]
    given = [m.group(1).strip() for line in block if (m := _GIVEN.search(line))]
    what = " or ".join(dict.fromkeys(e for e in expected if e)) or (block[0] if block else "invalid value")
    got = f"; got {given[0]!r}" if given else ""
    return f"{'.'.join(reversed(path))}: expected {what}{got}" if expected else f"{'.'.join(reversed(path))}: {what}"


_KEY = re.compile(r'Parser key "([^"]+)":')
_EXPECTED = re.compile(r"Expected a (typing\.Literal\[.*?\]|<class '[\w.]+'>|[\w.]+\[.*\]|[\w.]+)(?:\.|$| Got| but)")
_REFUSED = re.compile(r"Option '([^']+)' is not accepted")
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_GIVEN = re.compile(r"(?:Got value|Given value): (?!NestedArg)(.*)$")


def _type_name(expected: str) -> str:
    """``typing.Literal['a', 'b']`` as ``one of 'a', 'b'``, ``<class 'int'>`` as ``int``; paths and imports: none."""
    if expected.startswith("typing.Literal["):
        return f"one of {expected[len('typing.Literal[') : -1]}"
    if expected in ("path", "dot"):
        return ""
    return re.sub(r"<class '(?:[\w]+\.)*(\w+)'>", r"\1", expected).replace("NoneType", "None")


class _CLI(LightningCLI):
    """LightningCLI whose errors in building the model, data or Trainer read like its own parser errors."""

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as error:
            self.parser.error(_explain(error))  # prints the usage and the message, exits with code 2


_GROUPS = {"LightningDataModule": "data", "LightningModule": "model", "Callback": "trainer.callbacks"}


def _explain(error: BaseException) -> str:
    """The error's root cause, prefixed by the group (and class) whose constructor raised it when that is known."""
    root: BaseException = error
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    top = str(error)
    kind = re.search(r"Subtypes: \[<class '[\w.]*?\.(\w+)'>", top)  # jsonargparse names the expected base class
    group = _GROUPS.get(kind.group(1)) if kind else None
    class_path = re.search(r"class_path='([^']+)'", top)
    where = f"{group} ({class_path.group(1)}): " if group and class_path else f"{group}: " if group else ""
    return f"{where}{str(root).strip() or type(root).__name__}"


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build the CLI (and run the subcommand when ``run``); ``args`` defaults to ``sys.argv[1:]``.

    Model and data are given by ``class_path`` (any importable LightningModule / LightningDataModule),
    callbacks under ``trainer.callbacks``; every Trainer flag works on the command line. A bad value for a
    constructor argument stops with the parser's usage, one line naming the group, the class and the reason, and
    exit code 2. The config is saved as ``config.yaml`` next to the logs (not at all without a logger).
    """
    with warnings.catch_warnings():
        # given `args`, the call is a program's (a test, the demo), whose own flags are in sys.argv by design
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
        return _make_cli(args, run)


def _make_cli(args: list[str] | None, run: bool) -> LightningCLI:
    return _CLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        parser_class=_Parser,
        save_config_callback=SaveConfigNextToLogs,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def quiet_lightning_notices() -> None:
    """Mute Lightning's notices that are not about the user's run, for the rest of the process.

    They are: the tip to install ``litlogger``, the note that ``logger=True`` falls back to a CSV logger without
    TensorBoard, and a deprecation inside Lightning's own batch-size inference. A first run then prints what the user
    came for; warnings about the run itself are kept.
    """
    warnings.filterwarnings("ignore", message=r"Starting from v1\.9\.0, `tensorboardX` has been removed")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips (``💡 Tip: ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def entry() -> None:
    """Console-script entry point of ``lightning-per``; ends a DDP run by releasing its process group.

    The working directory comes first on the import path, as with ``python -m``, so that a config can name a module
    of the user's project (``class_path: my_project.models.MyModule``).
    """
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    quiet_lightning_notices()
    main()
    release_process_group()


if __name__ == "__main__":  # pragma: no cover
    entry()
