"""The ``lightning-per`` console script: a LightningCLI over any LightningModule and LightningDataModule.

Example::

    lightning-per fit --config lightning_per/examples/configs/mnist1d.yaml --trainer.max_epochs=2
"""

from __future__ import annotations

import re

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from typing_extensions import override

from lightning_per.distributed import release_process_group

__all__ = ["SaveConfigNextToLogs", "entry", "main"]


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
    return f"{where}{str(root).strip() or type(root).__name__} (set JSONARGPARSE_DEBUG=1 for the traceback)"


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build the CLI (and run the subcommand when ``run``); ``args`` defaults to ``sys.argv[1:]``.

    Model and data are given by ``class_path`` (any importable LightningModule / LightningDataModule),
    callbacks under ``trainer.callbacks``; every Trainer flag works on the command line. A bad value for a
    constructor argument stops with the parser's usage, one line naming the group, the class and the reason, and
    exit code 2. The config is saved as ``config.yaml`` next to the logs (not at all without a logger).
    """
    return _CLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_callback=SaveConfigNextToLogs,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def entry() -> None:
    """Console-script entry point of ``lightning-per``; ends a DDP run by releasing its process group."""
    main()
    release_process_group()


if __name__ == "__main__":  # pragma: no cover
    entry()
