"""``varjepa fit|validate|test|predict --config FILE`` (Lightning's CLI)."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .checkpointing import check_compatible, config_diff, load_checkpoint
from .data.base import JEPADataModule, UnreadableSampleError
from .module import VarJEPA
from .objectives.elbo import NonFiniteLossError
from .registry import ConfigError

# ckpt_path values that Lightning resolves itself (not file paths)
_SPECIAL_CKPT = {"last", "best", "hpc", "registry"}


class VarJEPACLI(LightningCLI):
    """LightningCLI for :class:`VarJEPA` with any :class:`JEPADataModule` (selected by class_path)."""

    def add_arguments_to_parser(self, parser) -> None:
        # a world-model config carries the settings of `varjepa plan`; fit/validate/... ignore them
        from .worldmodel.plan import PlanSettings

        parser.add_argument(
            "--plan", type=PlanSettings | None, default=None, help="settings of `varjepa plan`"
        )

    def before_fit(self) -> None:
        self._check()

    def before_validate(self) -> None:
        self._check()

    def before_test(self) -> None:
        self._check()

    def before_predict(self) -> None:
        self._check_ckpt()

    def _check(self) -> None:
        check_data = getattr(self.model, "check_data", None)
        if callable(check_data):
            check_data(self.datamodule)
        verify = getattr(self.datamodule, "verify", None)
        if callable(verify):  # e.g. unreadable image files, before the logger creates its folder
            verify()
        self._check_ckpt()

    def _parse_ckpt_path(self) -> None:
        """Lightning's CLI would silently replace the model config by the checkpoint's
        hyperparameters. varjepa runs the config as given and checks the checkpoint against it
        before anything is written (:meth:`_check_ckpt`): incompatible weights are an error that
        names the differing options; compatible differences (e.g. ``lr``) are reported."""

    def _check_ckpt(self) -> None:
        """A ``--ckpt_path`` must load with ``weights_only=True`` and fit the configured model; checked
        before anything is written."""
        path = self._get(self.config, "ckpt_path")
        if not path or str(path) in _SPECIAL_CKPT or str(path).startswith("registry:"):
            return
        ckpt = load_checkpoint(path)
        check_compatible(self.model, ckpt, f"ckpt_path = '{path}'")
        hp = ckpt.get("hyper_parameters")
        diff = config_diff(hp, self.model.hparams) if isinstance(hp, dict) else []
        if diff:
            rank_zero_info(
                f"ckpt_path = '{path}': using this config, which differs from the checkpoint's in "
                + ", ".join(diff)
            )


def _selects_model_class(args: list[str]) -> bool:
    """Whether the config files or the command line choose the model by ``class_path`` (e.g.
    ``model: {class_path: varjepa.VarTJEPA}``); otherwise the model is :class:`VarJEPA`."""
    if any(a.startswith(("--model.class_path", "--model=")) or a == "--model" for a in args):
        return True
    for f in _config_files(args):
        try:
            cfg = yaml.safe_load(Path(f).expanduser().read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and "class_path" in cfg["model"]:
            return True
    return False


def run(args: list[str] | None = None) -> VarJEPACLI:
    """Build and run the CLI on ``args`` (default ``sys.argv``); returns it (model, trainer, ...).

    The model is :class:`VarJEPA` unless a config selects another LightningModule by class_path
    (``varjepa.VarTJEPA`` for tables)."""
    argv = sys.argv[1:] if args is None else list(args)
    by_class = _selects_model_class(argv)
    return VarJEPACLI(
        L.LightningModule if by_class else VarJEPA,
        JEPADataModule,
        subclass_mode_model=by_class,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )


def _config_files(args: list[str]) -> list[str]:
    """The values of ``--config``/``-c`` options in ``args``."""
    out = []
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            out.append(args[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def check_config_files(args: list[str]) -> None:
    """Raise a ConfigError naming the file, line and column of a missing or malformed YAML config."""
    for f in _config_files(args):
        p = Path(f).expanduser()
        if not p.is_file():
            raise ConfigError(f"--config '{f}': no such file")
        try:
            yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--config '{f}':{where}: malformed YAML ({problem})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--config '{f}': cannot read the file ({e})") from None


def _config_error_in(e: BaseException) -> ConfigError | None:
    """The ConfigError that caused ``e`` (jsonargparse wraps errors raised while instantiating)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, ConfigError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Console entry point. Configuration errors print one clear line and exit with status 2; a
    non-finite loss or an unreadable input file print one clear line and exit with status 1."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["ablate"]:  # a grid of `fit` runs, each in its own process
        from .ablate import main as ablate_main

        sys.exit(ablate_main(argv[1:]))
    if argv[:1] == ["plan"]:  # planning with a trained world model
        from .worldmodel.plan import main as plan_main

        sys.exit(plan_main(argv[1:]))
    try:
        check_config_files(argv)
        run(args)
    except (NonFiniteLossError, UnreadableSampleError) as e:
        print(f"varjepa: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        cfg = _config_error_in(e)
        if cfg is None:
            raise
        print(f"varjepa: configuration error: {cfg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
