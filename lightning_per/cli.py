"""The ``lightning-per`` console script: a LightningCLI over any LightningModule and LightningDataModule.

Example::

    lightning-per fit --config examples/configs/mnist1d.yaml --trainer.max_epochs=2
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from lightning_per.distributed import release_process_group

__all__ = ["entry", "main"]


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build the CLI (and run the subcommand when ``run``); ``args`` defaults to ``sys.argv[1:]``.

    Model and data are given by ``class_path`` (any importable LightningModule / LightningDataModule),
    callbacks under ``trainer.callbacks``; every Trainer flag works on the command line.
    """
    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def entry() -> None:
    """Console-script entry point of ``lightning-per``; ends a DDP run by releasing its process group."""
    main()
    release_process_group()


if __name__ == "__main__":  # pragma: no cover
    entry()
