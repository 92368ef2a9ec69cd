"""``varjepa ablate``: a grid of ordinary ``varjepa fit`` runs and one table of their results.

    varjepa ablate --config configs/ablations/digits.yaml             # a grid file (names its base config)
    varjepa ablate --config configs/quickstart.yaml --family dirac,flow --beta constant,cyclical \\
        --seed 0,1,2 --set model.lr=1e-3,2e-3 --set trainer.max_steps=300
    varjepa ablate --config configs/ablations/digits.yaml --dry-run   # one `varjepa fit` line per run

Axes: ``family`` (a named bundle of config overrides: a posterior family or a baseline),
``beta`` (a named β schedule, or a number), ``seed`` (``seed_everything``) and any dotted config
key. Each run is its own ``varjepa fit`` process with its own log dir
``<out>/runs/<run_id>/``. A run that finishes writes ``result.json`` there (atomically), so a
re-invocation skips it; a run that fails is recorded with the end of its stderr and the grid goes
on. Results are read back from each run's TensorBoard event files and written to
``<out>/ablation.csv`` (mean and std over seeds), ``runs.csv`` (one row per run),
``ablation.md``, ``ablation.png`` and TensorBoard HParams entries under ``<out>/hparams/``.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import fnmatch
import hashlib
import io
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .registry import ConfigError

# ----------------------------------------------------------------------------- named values

#: built-in ablation families: name -> dotted config overrides. A family that sets ``model.beta``
#: itself has no KL term to weight and runs once per seed, whatever the β axis holds.
FAMILIES: dict[str, dict[str, Any]] = {
    # Dirac posterior, β = 0, fixed-σ Gaussian likelihood: I-JEPA's L2 regression as a predictive ELBO
    "dirac": {"model.posterior": "dirac", "model.objective": "predictive", "model.beta": 0.0},
    "diag_gaussian": {"model.posterior": "diag_gaussian"},
    "lowrank_gaussian": {"model.posterior": {"name": "lowrank_gaussian", "rank": 4}},
    "mixture": {"model.posterior": {"name": "mixture", "components": 4}},
    "flow": {
        "model.posterior": {
            "name": "flow",
            "transform": "affine_autoregressive",
            "depth": 2,
            "context_dim": 16,
        }
    },
    # baselines on the same encoder: deterministic I-JEPA and regularised JEPAs (objective presets)
    "jepa": {
        "model.posterior": "dirac",
        "model.objective": {"name": "jepa", "loss": "mse"},
        "model.beta": 0.0,
    },
    "jepa_smooth_l1": {
        "model.posterior": "dirac",
        "model.objective": {"name": "jepa", "loss": "smooth_l1"},
        "model.beta": 0.0,
    },
    "vicreg_jepa": {"model.posterior": "dirac", "model.objective": "vicreg_jepa", "model.beta": 0.0},
    "sigreg_jepa": {"model.posterior": "dirac", "model.objective": "sigreg_jepa", "model.beta": 0.0},
}

#: built-in β schedules: label -> ``model.beta`` value. A number on the β axis is a constant β.
BETAS: dict[str, Any] = {
    "constant": {"name": "constant", "value": 1.0},
    "linear_warmup": {"name": "linear_warmup", "value": 1.0, "warmup": 0.2},
    "cyclical": {"name": "cyclical", "value": 1.0, "cycles": 4, "ratio": 0.5},
    "cosine": {"name": "cosine", "start": 0.0, "end": 1.0},
}

#: columns of ablation.md, in order (those no run logged are left out); fnmatch patterns allowed
DEFAULT_COLUMNS = [
    "val/loss",
    "val/nll",
    "val/kl",
    "probe/acc",
    "probe/acc_10pc",
    "online/linear_acc",
    "uncertainty/nll",
    "uncertainty/coverage90",
    "uncertainty/spearman_std_err",
    "corruption/auroc",
    "collapse/rankme",
    "time/step_ms",
    "wall_s",
    "cpu_s",
]
#: metrics drawn in ablation.png (the first six that some run logged)
PLOT_METRICS = [
    "probe/acc",
    "probe/acc_10pc",
    "val/nll",
    "uncertainty/coverage90",
    "uncertainty/spearman_std_err",
    "corruption/auroc",
    "collapse/rankme",
    "time/step_ms",
]
#: scalars not reported (bookkeeping, not results)
IGNORED_TAGS = ("epoch", "hp_metric")
GRID_FILE_KEYS = ("config", "out", "grid", "set", "families", "betas", "columns")
SPECIAL_AXES = ("family", "beta", "seed")
NO_BETA = "none"
STDERR_TAIL = 20
#: how a run is started: ``varjepa fit`` with this interpreter (no console script needed on PATH)
FIT_PREFIX = [sys.executable, "-m", "varjepa.cli", "fit"]


class AblationError(ConfigError):
    """A bad grid specification; the message names what is wrong and what is allowed."""


# ----------------------------------------------------------------------------- grid spec


@dataclass
class Axis:
    """One grid axis: ``key`` is ``family``, ``beta``, ``seed`` or a dotted config key; ``values``
    are ``(label, value)`` pairs in grid order."""

    key: str
    values: list[tuple[str, Any]]


@dataclass
class GridSpec:
    """Everything ``varjepa ablate`` needs: base configs, axes, fixed overrides, named values."""

    configs: list[Path]
    out: Path
    axes: list[Axis]
    fixed: dict[str, Any] = field(default_factory=dict)
    families: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(FAMILIES))
    betas: dict[str, Any] = field(default_factory=lambda: dict(BETAS))
    columns: list[str] = field(default_factory=lambda: list(DEFAULT_COLUMNS))

    def axis(self, key: str) -> Axis | None:
        """The axis named ``key``, if the grid has one."""
        return next((a for a in self.axes if a.key == key), None)


@dataclass
class Run:
    """One cell of the grid: its id, its axis labels and the config overrides that make it."""

    run_id: str
    labels: dict[str, str]
    overrides: dict[str, Any]

    def group(self) -> tuple[tuple[str, str], ...]:
        """The run's labels without the seed: the runs of one table row share it."""
        return tuple((k, v) for k, v in self.labels.items() if k != "seed")


def label_of(value: Any) -> str:
    """A short text label for a grid value (numbers as written, structures as compact JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_").lstrip(".") or "_"


def _as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if value is None:
        raise AblationError(f"{where}: no values")
    return [value]


def _parse_values(text: str) -> list[Any]:
    """Values of a command-line axis: a YAML list ``[a, b]``, one YAML mapping ``{...}``, or
    comma-separated YAML scalars ``a,b,c``."""
    text = text.strip()
    try:
        if text.startswith("["):
            value = yaml.safe_load(text)
            return list(value) if isinstance(value, list) else [value]
        if text.startswith("{"):
            return [yaml.safe_load(text)]
        return [yaml.safe_load(t.strip()) if t.strip() else "" for t in text.split(",")]
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AblationError(f"cannot read the values '{text}': {problem}") from None


def _load_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise AblationError(f"{what} '{path}': no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AblationError(f"{what} '{path}':{where}: malformed YAML ({problem})") from None


def is_grid_file(data: Any) -> bool:
    """A YAML mapping with a top-level ``grid`` key is a grid file, not a ``varjepa fit`` config."""
    return isinstance(data, dict) and "grid" in data


def _display_path(p: Path) -> str:
    """``p`` relative to the current directory when it lies below it, else absolute."""
    p = p.resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def build_spec(args: argparse.Namespace) -> GridSpec:
    """Combine grid files, base configs and command-line axes into a :class:`GridSpec`.

    ``--config`` files are taken in order: a grid file contributes its ``config:`` entries (paths
    relative to the grid file), any other file is a base config. Command-line axes replace the
    grid files' axes of the same name."""
    configs: list[Path] = []
    grid: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    families, betas = dict(FAMILIES), dict(BETAS)
    columns: list[str] | None = None
    out: str | None = None
    grid_files: list[Path] = []
    for f in args.config:
        path = Path(f).expanduser()
        data = _load_yaml(path, "--config")
        if not is_grid_file(data):
            configs.append(path)
            continue
        grid_files.append(path)
        unknown = sorted(set(data) - set(GRID_FILE_KEYS))
        if unknown:
            raise AblationError(
                f"grid file '{f}': unknown key(s) {', '.join(unknown)}; allowed: {', '.join(GRID_FILE_KEYS)}"
            )
        for c in _as_list(data.get("config") or [], f"grid file '{f}': config"):
            configs.append((path.parent / str(c)).expanduser())
        g = data.get("grid")
        if not isinstance(g, dict):
            raise AblationError(f"grid file '{f}': 'grid' must map axes to lists of values, got {g!r}")
        grid.update(g)
        for key, what in (("set", fixed), ("families", families), ("betas", betas)):
            section = data.get(key) or {}
            if not isinstance(section, dict):
                raise AblationError(f"grid file '{f}': '{key}' must be a mapping, got {section!r}")
            what.update(section)
        if data.get("columns") is not None:
            columns = [str(c) for c in _as_list(data["columns"], f"grid file '{f}': columns")]
        if data.get("out") is not None:
            out = str(data["out"])
    for key, opt in (("family", args.family), ("beta", args.beta), ("seed", args.seed)):
        if opt:
            grid[key] = [v for text in opt for v in _parse_values(text)]
    for item in args.set or []:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise AblationError(f"--set '{item}': expected KEY=VALUE[,VALUE...]")
        values = _parse_values(text)
        if len(values) == 1:
            fixed[key.strip()] = values[0]
            grid.pop(key.strip(), None)
        else:
            grid[key.strip()] = values
    if not configs:
        raise AblationError(
            "no base config: give --config BASE.yaml (a varjepa fit config) or a grid file whose "
            "'config:' names one"
        )
    for name, fam in families.items():
        if not isinstance(fam, dict) or not all(isinstance(k, str) for k in fam):
            raise AblationError(
                f"family '{name}': must map dotted config keys to values, e.g. "
                "{model.posterior: {name: mixture, components: 8}}"
            )
    if args.out:
        out = args.out
    if out is None:
        stem = (grid_files or configs)[0].stem
        out = str(Path("runs") / "ablations" / stem)
    for special, key in (("beta", "model.beta"), ("seed", "seed_everything")):
        if special in grid and key in grid:
            raise AblationError(f"grid: '{key}' and '{special}' are the same axis; give one of them")
    axes = [_axis(key, values, families, betas) for key, values in _ordered(grid)]
    if not axes:
        raise AblationError(
            "empty grid: give at least one axis (--family, --beta, --seed, --set KEY=V1,V2 or a "
            "grid file's 'grid:')"
        )
    return GridSpec(configs, Path(out), axes, fixed, families, betas, columns or list(DEFAULT_COLUMNS))


def _ordered(grid: dict[str, Any]) -> list[tuple[str, Any]]:
    """Axes in table order: family, beta, the dotted keys as given, seed last."""
    first = [(k, grid[k]) for k in ("family", "beta") if k in grid]
    rest = [(k, v) for k, v in grid.items() if k not in SPECIAL_AXES]
    last = [("seed", grid["seed"])] if "seed" in grid else []
    return first + rest + last


def _axis(key: str, values: Any, families: dict, betas: dict) -> Axis:
    if not isinstance(key, str) or not key:
        raise AblationError(f"grid key {key!r}: must be family, beta, seed or a dotted config key")
    vals = _as_list(values, f"grid axis '{key}'")
    if not vals:
        raise AblationError(f"empty grid: axis '{key}' has no values")
    out: list[tuple[str, Any]] = []
    for v in vals:
        if key == "family":
            if not isinstance(v, str) or v not in families:
                raise AblationError(
                    f"unknown family {v!r}; allowed: {', '.join(sorted(families))} "
                    "(or define it under 'families:' in a grid file)"
                )
            out.append((v, families[v]))
        elif key == "beta":
            if isinstance(v, str) and v in betas:
                out.append((v, betas[v]))
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out.append((label_of(v), float(v)))
            else:
                raise AblationError(
                    f"unknown beta schedule {v!r}; allowed: {', '.join(sorted(betas))}, a number "
                    "(constant β), or a schedule defined under 'betas:' in a grid file"
                )
        elif key == "seed":
            if isinstance(v, bool) or not isinstance(v, int):
                raise AblationError(f"seed {v!r}: seeds must be integers")
            out.append((str(v), v))
        else:
            out.append((label_of(v), v))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        dup = sorted({lab for lab in labels if labels.count(lab) > 1})
        raise AblationError(f"grid axis '{key}': repeated value(s) {', '.join(dup)}")
    return Axis(key, out)


def expand(spec: GridSpec) -> list[Run]:
    """The runs of the grid, in order (the last axis varies fastest). Families that set
    ``model.beta`` themselves ignore the β axis: they run once per combination of the other axes,
    with β label ``none``."""
    runs: list[Run] = []
    seen: set[tuple] = set()
    for combo in itertools.product(*(a.values for a in spec.axes)):
        labels: dict[str, str] = {}
        overrides: dict[str, Any] = dict(spec.fixed)
        family = next(
            (v for axis, (_, v) in zip(spec.axes, combo, strict=True) if axis.key == "family"), None
        )
        for axis, (label, value) in zip(spec.axes, combo, strict=True):
            if axis.key == "family":
                overrides.update(value)
            elif axis.key == "beta":
                if family is not None and "model.beta" in family:
                    label = NO_BETA
                else:
                    overrides["model.beta"] = value
            elif axis.key == "seed":
                overrides["seed_everything"] = value
            else:
                overrides[axis.key] = value
            labels[axis.key] = label
        key = tuple(labels.items())
        if key in seen:  # a β-free family across the β axis
            continue
        seen.add(key)
        runs.append(Run(_run_id(labels), labels, overrides))
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):  # labels that differ only in characters the slug drops
        for r in runs:
            digest = hashlib.sha1(json.dumps(r.labels, sort_keys=True).encode()).hexdigest()[:6]
            r.run_id = f"{r.run_id}__{digest}"
    return runs


def _run_id(labels: dict[str, str]) -> str:
    parts = []
    for k, v in labels.items():
        if k in ("family", "beta"):
            if v != NO_BETA:
                parts.append(_slug(v))
        elif k == "seed":
            parts.append(f"seed{_slug(v)}")
        else:
            parts.append(f"{_slug(k)}={_slug(v)}")
    return "__".join(parts) or "run"


# ----------------------------------------------------------------------------- commands


def _arg(key: str, value: Any) -> str:
    """``--key=value`` as the LightningCLI reads it (structures and non-strings as JSON)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f"--{key}={text}"


def run_dir(spec: GridSpec, run: Run) -> Path:
    """The run's log dir (TensorBoard events, config.yaml, checkpoints, result.json, logs)."""
    return spec.out / "runs" / run.run_id


def fit_args(spec: GridSpec, run: Run, extra_callbacks: Sequence[str] = ()) -> list[str]:
    """The ``varjepa fit`` arguments of one run: base configs, its overrides, its log dir."""
    args = [a for c in spec.configs for a in ("--config", _display_path(c))]
    args += [_arg(k, v) for k, v in run.overrides.items()]
    args += [f"--trainer.callbacks+={c}" for c in extra_callbacks]
    args += [
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger",
        f"--trainer.logger.init_args.save_dir={_display_path(spec.out / 'runs')}",
        f"--trainer.logger.init_args.name={run.run_id}",
        "--trainer.logger.init_args.version=",
    ]
    return args


def command_line(args: Sequence[str]) -> str:
    """A shell-quoted ``varjepa fit ...`` line."""
    return shlex.join(["varjepa", "fit", *args])


# ----------------------------------------------------------------------------- validation


def _parse_only(args: list[str]):
    """Parse a ``varjepa fit`` argument list with the real CLI parser, building nothing."""
    from . import JEPADataModule, VarJEPA
    from .cli import VarJEPACLI

    class _ParseOnly(VarJEPACLI):
        def instantiate_classes(self) -> None:
            pass

        def _set_seed(self) -> None:
            pass

    with warnings.catch_warnings():  # "args and sys.argv both given": intended here
        warnings.simplefilter("ignore")
        cli = _ParseOnly(
            VarJEPA,
            JEPADataModule,
            subclass_mode_data=True,
            run=False,
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
        )
    return cli.config


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(spec: GridSpec, runs: list[Run]) -> list[str]:
    """Check the grid against the base config before anything runs: every key set by an axis, a
    family or ``set`` must be a config key, and every value must parse. Returns the callbacks to
    add to each run (``varjepa.StepTimer`` when the base config has none). AblationError otherwise."""
    from .cli import check_config_files

    for c in spec.configs:
        try:
            check_config_files(["--config", str(c)])
        except ConfigError as e:
            raise AblationError(str(e)) from None
    base_args = [a for c in spec.configs for a in ("--config", str(c))]
    try:
        base = _parse_only(base_args)
    except (Exception, SystemExit) as e:  # jsonargparse may exit on some errors
        raise AblationError(f"base config: {_one_line(e)}") from None
    known = [k for k in base.keys() if k != "config"]  # noqa: SIM118 (dotted leaf keys)

    def check_key(key: str, where: str) -> None:
        if key == "config" or key not in base:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.85)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise AblationError(
                f"{where}: unknown config key '{key}'{hint}; allowed: family, beta, seed or a key "
                "of `varjepa fit --print_config` (e.g. model.lr, trainer.max_steps)"
            )

    for key in spec.fixed:
        check_key(key, "set")
    for axis in spec.axes:
        if axis.key not in SPECIAL_AXES:
            check_key(axis.key, "grid")
    fam_axis = spec.axis("family")
    for name, _ in fam_axis.values if fam_axis else []:
        for key in spec.families[name]:
            check_key(key, f"family '{name}'")
    set_by_axes = {a.key for a in spec.axes if a.key not in SPECIAL_AXES}
    if spec.axis("beta"):
        set_by_axes.add("model.beta")
    if spec.axis("seed"):
        set_by_axes.add("seed_everything")
    for key in spec.fixed:
        if key in set_by_axes:
            raise AblationError(f"set: '{key}' is also a grid axis; give it one place")
    for name, _ in fam_axis.values if fam_axis else []:
        both = sorted((set(spec.families[name]) & set_by_axes) - {"model.beta"})
        if both:
            raise AblationError(f"family '{name}' sets {', '.join(both)}, which is also a grid axis")
    # every distinct value parses (types, class paths); one parse per value, not per run
    checked: set[tuple[str, str]] = set()
    for run in runs:
        for key, value in run.overrides.items():
            tag = (key, json.dumps(value, sort_keys=True, default=str))
            if tag in checked:
                continue
            checked.add(tag)
            try:
                _parse_only([*base_args, _arg(key, value)])
            except (Exception, SystemExit) as e:
                raise AblationError(f"run {run.run_id}: {key} = {label_of(value)}: {_one_line(e)}") from None
    callbacks = base.get("trainer.callbacks") or []
    for cb in callbacks:
        dirpath = getattr(getattr(cb, "init_args", None), "dirpath", None)
        if dirpath:
            raise AblationError(
                f"base config: {cb.class_path} writes to dirpath '{dirpath}', which every run would "
                "share; remove dirpath (each run then writes under its own log dir)"
            )
    have = {str(getattr(cb, "class_path", "")) for cb in callbacks}
    return (
        []
        if have & {"varjepa.StepTimer", "varjepa.callbacks.StepTimer", "varjepa.callbacks.timing.StepTimer"}
        else ["varjepa.StepTimer"]
    )


# ----------------------------------------------------------------------------- results


def find_event_dir(log_dir: Path) -> Path | None:
    """The directory below ``log_dir`` (itself first) holding the run's training events."""
    for d in [log_dir, *sorted(p for p in log_dir.rglob("*") if p.is_dir())]:
        if d.name == "hparams" or "checkpoints" in d.parts:
            continue
        if any(d.glob("events.out.tfevents.*")):
            return d
    return None


def read_metrics(log_dir: Path) -> dict[str, float]:
    """Final value of every scalar the run logged to TensorBoard (the event with the highest step,
    the last written on ties). ``<tag>_final`` values (end-of-fit probes, timers, corruption
    protocol) replace ``<tag>``. Bookkeeping tags (``epoch``, ``hp_metric``) are left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = find_event_dir(log_dir)
    if d is None:
        return {}
    ea = EventAccumulator(str(d), size_guidance={"scalars": 0})
    ea.Reload()
    last: dict[str, float] = {}
    for tag in ea.Tags()["scalars"]:
        if tag in IGNORED_TAGS:
            continue
        events = ea.Scalars(tag)
        if events:
            best = max(enumerate(events), key=lambda ie: (ie[1].step, ie[0]))[1]
            last[tag] = float(best.value)
    out = {k: v for k, v in last.items() if not k.endswith("_final")}
    out.update({k[: -len("_final")]: v for k, v in last.items() if k.endswith("_final")})
    return dict(sorted(out.items()))


def _fingerprint(spec: GridSpec, run: Run) -> str:
    """Hash of what determines a run's result: base config contents and its overrides."""
    h = hashlib.sha256()
    for c in spec.configs:
        h.update(c.read_bytes())
    h.update(json.dumps(run.overrides, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_result(path: Path) -> dict | None:
    """A run's result.json, or None if missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln.rstrip() for ln in lines if ln.strip()][-n:]


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (one run at a time, so the
    difference around a run is that run's CPU time: a load-independent measure of its cost)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Interrupted(Exception):
    """The grid was stopped (Ctrl-C or SIGTERM); finished runs keep their results."""


def execute(spec: GridSpec, run: Run, args: list[str]) -> dict | None:
    """Run one ``varjepa fit`` in its own process; return its result (also written atomically to
    ``result.json``), or None if the run was interrupted by a signal (nothing is recorded)."""
    d = run_dir(spec, run)
    if d.exists():  # an unfinished or stale attempt: start over in a clean dir
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cmd = [*FIT_PREFIX, *args]
    (d / "command.txt").write_text(command_line(args) + "\n")
    t0 = time.perf_counter()
    cpu0 = _children_cpu()
    with open(d / "stdout.log", "wb") as so, open(d / "stderr.log", "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        try:
            rc = proc.wait()
        except BaseException:
            # Ctrl-C reaches the child too (same process group); SIGTERM is forwarded: the child
            # saves a checkpoint after its current step and exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    tail = _tail(d / "stderr.log", STDERR_TAIL)
    if rc == 0 and any("SIGTERM received" in ln for ln in tail):
        return None  # stopped early by a signal to the child: not a finished run
    result: dict[str, Any] = {
        "run_id": run.run_id,
        "labels": run.labels,
        "overrides": run.overrides,
        "command": command_line(args),
        "fingerprint": _fingerprint(spec, run),
        "returncode": rc,
        "wall_s": wall,
        "cpu_s": cpu,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if rc == 0:
        result["status"] = "ok"
        result["metrics"] = read_metrics(d)
    else:
        result["status"] = "failed"
        why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        result["error"] = f"{why}: {tail[-1]}" if tail else why
        result["stderr_tail"] = tail
        result["metrics"] = {}
    _write_atomic(d / "result.json", json.dumps(result, indent=2) + "\n")
    if rc == 0:
        write_hparams(spec, run, result)
    return result


def write_hparams(spec: GridSpec, run: Run, result: dict) -> None:
    """A TensorBoard HParams session ``<out>/hparams/<run_id>``: the run's axis labels as
    hyper-parameters (discrete domains: the grid's values) and its final metrics as ``hp/<tag>``."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    hp: dict[str, Any] = {k: (int(v) if k == "seed" else v) for k, v in run.labels.items()}
    domains = {
        a.key: [lab for lab, _ in a.values] + ([NO_BETA] if a.key == "beta" else [])
        for a in spec.axes
        if a.key != "seed"
    }
    metrics = {f"hp/{k}": v for k, v in result["metrics"].items() if math.isfinite(v)}
    metrics["hp/wall_s"] = result["wall_s"]
    d = spec.out / "hparams" / run.run_id
    if d.exists():
        shutil.rmtree(d)
    exp, ssi, sei = hparams(hp, metrics, hparam_domain_discrete=domains)
    with SummaryWriter(log_dir=str(d)) as w:
        for s in (exp, ssi, sei):
            w.file_writer.add_summary(s)
        for k, v in metrics.items():
            w.add_scalar(k, v)


def _metrics_of(result: dict) -> dict[str, float]:
    m = dict(result.get("metrics") or {})
    m["wall_s"] = float(result["wall_s"])
    if "cpu_s" in result:
        m["cpu_s"] = float(result["cpu_s"])
    return m


def aggregate(spec: GridSpec, runs: list[Run], results: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per grid cell without the seed: axis labels, ``n`` (finished runs), ``failed``, and
    ``mean``/``std`` (sample std, ddof = 1; None for fewer than two values) of every metric."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group(), []).append(r)
    rows = []
    for key, members in groups.items():
        ok = [results[r.run_id] for r in members if results.get(r.run_id, {}).get("status") == "ok"]
        failed = [results[r.run_id] for r in members if results.get(r.run_id, {}).get("status") == "failed"]
        values: dict[str, list[float]] = {}
        for res in ok:
            for k, v in _metrics_of(res).items():
                if math.isfinite(v):
                    values.setdefault(k, []).append(v)
        stats = {
            k: (statistics.fmean(vs), statistics.stdev(vs) if len(vs) > 1 else None)
            for k, vs in values.items()
        }
        rows.append(
            {
                "labels": dict(key),
                "runs": len(members),
                "n": len(ok),
                "failed": len(failed),
                "stats": dict(sorted(stats.items())),
            }
        )
    return rows


def _columns(spec: GridSpec, rows: list[dict]) -> list[str]:
    present: list[str] = []
    for row in rows:
        for k in row["stats"]:
            if k not in present:
                present.append(k)
    out: list[str] = []
    for pat in spec.columns:
        for k in present if any(ch in pat for ch in "*?[") else [pat]:
            if fnmatch.fnmatchcase(k, pat) and k in present and k not in out:
                out.append(k)
    return out


def _fmt(x: float) -> str:
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}" if abs(x) < 1000 else f"{x:.0f}"
    return f"{x:.3g}"


def _cell(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return _fmt(mean) if std is None else f"{_fmt(mean)} ± {std:.2g}"


def write_csv(path: Path, spec: GridSpec, rows: list[dict]) -> None:
    """``ablation.csv``: axis labels, run counts, then ``<metric>_mean`` and ``<metric>_std`` for
    every metric any run logged (empty where there is no value)."""
    axes = [a.key for a in spec.axes if a.key != "seed"]
    metrics = sorted({k for r in rows for k in r["stats"]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*axes, "runs", "n", "failed", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])
    for r in rows:
        cells: list[Any] = [r["labels"].get(a, "") for a in axes] + [r["runs"], r["n"], r["failed"]]
        for m in metrics:
            mean, std = r["stats"].get(m, (None, None))
            cells += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        w.writerow(cells)
    _write_atomic(path, buf.getvalue())


def write_runs_csv(path: Path, spec: GridSpec, runs: list[Run], results: dict[str, dict]) -> None:
    """``runs.csv``: one row per run: id, axis labels, status, wall time, error, every metric."""
    axes = [a.key for a in spec.axes]
    metrics = sorted({k for res in results.values() for k in (res.get("metrics") or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["run_id", *axes, "status", "wall_s", "cpu_s", "error", *metrics])
    for r in runs:
        res = results.get(r.run_id)
        status = res["status"] if res else "pending"
        m = (res or {}).get("metrics") or {}
        w.writerow(
            [
                r.run_id,
                *(r.labels.get(a, "") for a in axes),
                status,
                "" if not res else repr(float(res["wall_s"])),
                "" if not res or "cpu_s" not in res else repr(float(res["cpu_s"])),
                (res or {}).get("error", ""),
                *("" if k not in m else repr(m[k]) for k in metrics),
            ]
        )
    _write_atomic(path, buf.getvalue())


def markdown(spec: GridSpec, rows: list[dict], runs: list[Run], results: dict[str, dict]) -> str:
    """``ablation.md``: the key metrics as mean ± std over seeds, failures with their errors."""
    axes = [a.key for a in spec.axes if a.key != "seed"]
    cols = _columns(spec, rows)
    seeds = spec.axis("seed")
    n_seeds = len(seeds.values) if seeds else 1
    lines = [
        "# Ablation",
        "",
        f"Base config: {', '.join(_display_path(c) for c in spec.configs)}. "
        f"{len(runs)} runs; each cell is the mean ± sample std over its finished runs "
        f"(n of {n_seeds} seed{'s' if n_seeds > 1 else ''}); final values: the last validation, "
        "end-of-fit probes, median step time; `wall_s` and `cpu_s` are the wall and CPU time of the "
        "whole `varjepa fit` process. "
        f"β `{NO_BETA}`: the family sets β = 0 itself (no KL term).",
        "",
    ]
    header = [*axes, "n", *cols]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(axes) + ["---:"] * (1 + len(cols))) + "|")
    for r in rows:
        n = f"{r['n']}/{r['runs']}"
        cells = [r["labels"].get(a, "") for a in axes] + [n] + [_cell(r["stats"].get(c)) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [(r, results[r.run_id]) for r in runs if results.get(r.run_id, {}).get("status") == "failed"]
    pending = [r for r in runs if r.run_id not in results]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- `{r.run_id}`: {res.get('error', '?')}" for r, res in failed]
    if pending:
        lines += ["", f"Not run yet: {', '.join(f'`{r.run_id}`' for r in pending)}"]
    return "\n".join(lines) + "\n"


def plot(path: Path, spec: GridSpec, rows: list[dict]) -> bool:
    """``ablation.png``: one panel per key metric; bars grouped by the first axis (family), one
    colour per value of the other axes (β schedule, ...), error bars = std over seeds. Cells without
    a finished run are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["n"]]
    present = {k for r in rows for k in r["stats"]}
    metrics = [m for m in PLOT_METRICS if m in present][:6]
    if not metrics:
        metrics = [m for m in _columns(spec, rows) if m != "wall_s"][:6]
    if not metrics:
        return False
    axes = [a.key for a in spec.axes if a.key != "seed"]
    xkey, huekeys = (axes[0], axes[1:]) if axes else (None, [])

    def x_of(r: dict) -> str:
        return r["labels"][xkey] if xkey else "all"

    def hue_of(r: dict) -> str:
        return ", ".join(r["labels"][a] for a in huekeys)

    xs = list(dict.fromkeys(x_of(r) for r in rows))
    hues = list(dict.fromkeys(hue_of(r) for r in rows))
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, grid = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow + 0.6), squeeze=False)
    for ax, m in zip(grid.flat, metrics, strict=False):
        drawn: set[str] = set()
        for i, x in enumerate(xs):
            cell = [r for r in rows if x_of(r) == x and m in r["stats"]]
            width = 0.8 / max(len(cell), 1)
            for k, r in enumerate(cell):
                mean, std = r["stats"][m]
                hue = hue_of(r)
                ax.bar(
                    i + (k - (len(cell) - 1) / 2) * width,
                    mean,
                    width,
                    yerr=std or 0.0,
                    capsize=2,
                    color=f"C{hues.index(hue) % 10}",
                    label=hue if hue and hue not in drawn else None,
                )
                drawn.add(hue)
        ax.set_title(m, fontsize=9)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(grid.flat)[len(metrics) :]:
        ax.axis("off")
    if huekeys:
        handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j % 10}") for j in range(len(hues))]
        fig.legend(
            handles,
            hues,
            title=", ".join(huekeys),
            loc="lower center",
            ncol=min(len(hues), 6),
            fontsize=8,
            title_fontsize=8,
        )
    fig.suptitle(f"{spec.out.name}: mean ± std over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if huekeys else 0, 1, 0.96))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True


def collect(spec: GridSpec, runs: list[Run]) -> dict[str, dict]:
    """The recorded results of the grid's runs, keyed by run id (runs without one are absent)."""
    out = {}
    for r in runs:
        res = load_result(run_dir(spec, r) / "result.json")
        if res is not None and res.get("status") in ("ok", "failed"):
            out[r.run_id] = res
    return out


def write_outputs(spec: GridSpec, runs: list[Run], results: dict[str, dict]) -> str:
    """Write ablation.csv, runs.csv, ablation.md and ablation.png; return the Markdown."""
    rows = aggregate(spec, runs, results)
    spec.out.mkdir(parents=True, exist_ok=True)
    write_csv(spec.out / "ablation.csv", spec, rows)
    write_runs_csv(spec.out / "runs.csv", spec, runs, results)
    md = markdown(spec, rows, runs, results)
    _write_atomic(spec.out / "ablation.md", md)
    plot(spec.out / "ablation.png", spec, rows)
    return md


# ----------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit status 2
        self.exit(2, f"varjepa ablate: error: {message} (see varjepa ablate --help)\n")


def make_parser() -> argparse.ArgumentParser:
    """The ``varjepa ablate`` argument parser."""
    p = _Parser(
        prog="varjepa ablate",
        description="Run a grid of `varjepa fit` runs (posterior families x beta schedules x seeds x "
        "any config key) and tabulate their final metrics (mean ± std over seeds).",
    )
    p.add_argument(
        "--config",
        "-c",
        action="append",
        required=True,
        help="base varjepa fit config (repeat for overlays), or a grid file (a YAML with 'grid:')",
    )
    p.add_argument("--family", action="append", help=f"families, comma-separated ({', '.join(FAMILIES)})")
    p.add_argument("--beta", action="append", help=f"beta schedules or numbers ({', '.join(BETAS)})")
    p.add_argument("--seed", action="append", help="seeds, comma-separated (seed_everything)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=V[,V...]",
        help="a dotted config key: several values make an axis, one value is fixed for every run",
    )
    p.add_argument("--out", help="output folder (default: the grid file's 'out:' or runs/ablations/<name>)")
    p.add_argument(
        "--dry-run", action="store_true", help="print each run's `varjepa fit` command; run nothing"
    )
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    p.add_argument(
        "--index",
        type=int,
        help="run only the run with this 0-based index (e.g. $SLURM_ARRAY_TASK_ID); tables cover "
        "every finished run",
    )
    return p


def _sigterm_to_interrupt(signum, frame):
    raise Interrupted("SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    """``varjepa ablate``. Exit status 0 if every run finished, 1 if some failed, 2 for a bad grid
    (nothing written), 130 when interrupted."""
    args = make_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        spec = build_spec(args)
        runs = expand(spec)
        if args.index is not None and not 0 <= args.index < len(runs):
            raise AblationError(f"--index {args.index}: the grid has {len(runs)} runs (0..{len(runs) - 1})")
        extra = validate(spec, runs)
    except ConfigError as e:
        print(f"varjepa ablate: error: {e}", file=sys.stderr)
        return 2
    todo = runs if args.index is None else [runs[args.index]]
    if args.dry_run:
        try:
            for r in todo:
                print(command_line(fit_args(spec, r, extra)), flush=True)
        except BrokenPipeError:  # e.g. piped into head
            sys.stderr.close()
        return 0

    spec.out.mkdir(parents=True, exist_ok=True)
    grid_doc = {
        "configs": [_display_path(c) for c in spec.configs],
        "axes": {a.key: [lab for lab, _ in a.values] for a in spec.axes},
        "runs": [{"run_id": r.run_id, "labels": r.labels, "overrides": r.overrides} for r in runs],
    }
    _write_atomic(spec.out / "grid.json", json.dumps(grid_doc, indent=2, default=str) + "\n")
    shape = " x ".join(f"{len(a.values)} {a.key}" for a in spec.axes)
    print(f"varjepa ablate: {len(runs)} runs ({shape}) -> {_display_path(spec.out)}", flush=True)
    started = time.perf_counter()
    old = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    width = len(str(len(runs)))
    elapsed: list[float] = []
    interrupted = False
    try:
        for i, r in enumerate(runs):
            if r not in todo:
                continue
            tag = f"[{i + 1:>{width}}/{len(runs)}] {r.run_id}"
            prev = load_result(run_dir(spec, r) / "result.json")
            same = prev is not None and prev.get("fingerprint") == _fingerprint(spec, r)
            if same and prev.get("status") == "ok":
                print(f"{tag}: done earlier, skipped", flush=True)
                continue
            if same and prev.get("status") == "failed" and not args.retry_failed:
                print(f"{tag}: failed earlier ({prev.get('error')}), skipped; --retry-failed reruns it")
                continue
            note = " (config changed since its result)" if prev is not None and not same else ""
            print(f"{tag}: running{note} ...", flush=True)
            res = execute(spec, r, fit_args(spec, r, extra))
            if res is None:
                print(f"{tag}: stopped by SIGTERM before the end; not recorded", flush=True)
                continue
            elapsed.append(res["wall_s"])
            left = len(todo) - todo.index(r) - 1
            eta = f", about {statistics.fmean(elapsed) * left / 60:.0f} min left" if left else ""
            if res["status"] == "ok":
                m = res["metrics"]
                shown = ", ".join(f"{k} {_fmt(m[k])}" for k in ("probe/acc", "val/loss") if k in m)
                print(f"{tag}: done in {res['wall_s']:.0f} s{': ' + shown if shown else ''}{eta}", flush=True)
            else:
                print(f"{tag}: FAILED in {res['wall_s']:.0f} s: {res['error']}{eta}", flush=True)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, old)
    results = collect(spec, runs)
    md = write_outputs(spec, runs, results)
    n_ok = sum(res["status"] == "ok" for res in results.values())
    n_failed = sum(res["status"] == "failed" for res in results.values())
    print()
    print(md)
    print(
        f"varjepa ablate: {n_ok} finished, {n_failed} failed, {len(runs) - n_ok - n_failed} not run "
        f"({(time.perf_counter() - started) / 60:.1f} min this time); "
        f"{_display_path(spec.out / 'ablation.md')}, ablation.csv, runs.csv, ablation.png; "
        f"tensorboard --logdir {_display_path(spec.out)}",
        flush=True,
    )
    if interrupted:
        print("varjepa ablate: interrupted; run the same command again to resume (finished runs are skipped)")
        return 130
    return 1 if n_failed else 0
