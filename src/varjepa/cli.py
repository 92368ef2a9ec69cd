"""``varjepa fit|validate|test|predict --config FILE`` (Lightning's CLI)."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from .data.base import JEPADataModule
from .module import VarJEPA
from .registry import ConfigError


class VarJEPACLI(LightningCLI):
    """LightningCLI for :class:`VarJEPA` with any :class:`JEPADataModule` (selected by class_path)."""

    def before_fit(self) -> None:
        self._check()

    def before_validate(self) -> None:
        self._check()

    def before_test(self) -> None:
        self._check()

    def _check(self) -> None:
        self.model.check_data(self.datamodule)


def run(args: list[str] | None = None) -> VarJEPACLI:
    """Build and run the CLI on ``args`` (default ``sys.argv``); returns it (model, trainer, ...)."""
    return VarJEPACLI(
        VarJEPA,
        JEPADataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """Console entry point. Configuration errors print one clear line and exit with status 2."""
    try:
        run(args)
    except ConfigError as e:
        print(f"varjepa: configuration error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
