"""Checkpoint helpers: RNG state capture/restore, safe loading, compatibility checks.

Everything stored here is made of tensors, numbers, strings, lists, tuples and dicts, so
varjepa checkpoints load with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import pickle
import random
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .registry import ConfigError


def capture_rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states as plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """RNG states of every data-parallel rank (a collective under torch.distributed), rank order."""
    mine = capture_rng_state()
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, tuple):
        d = list(d)
    return {prefix: d}


def config_diff(checkpoint_hparams: Mapping[str, Any], model_hparams: Mapping[str, Any]) -> list[str]:
    """``["model.encoder.embed_dim = 32 (checkpoint: 96)", ...]`` for every differing option."""
    a, b = _flatten(dict(checkpoint_hparams), "model"), _flatten(dict(model_hparams), "model")
    out = []
    for k in sorted(a.keys() | b.keys()):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if va != vb:
            out.append(f"{k} = {vb!r} (checkpoint: {va!r})")
    return out


def check_compatible(model: torch.nn.Module, checkpoint: Mapping[str, Any], source: str) -> None:
    """Raise a ConfigError naming the mismatch when ``checkpoint`` cannot be loaded into ``model``.

    Compares tensor names and shapes of ``checkpoint["state_dict"]`` with ``model.state_dict()``
    and explains the difference by the config options that differ.
    """
    theirs = checkpoint.get("state_dict")
    if theirs is None:
        raise ConfigError(f"{source}: the file holds no 'state_dict'; it is not a Lightning checkpoint")
    own = model.state_dict()
    missing = sorted(own.keys() - theirs.keys())
    unexpected = sorted(theirs.keys() - own.keys())
    shapes = [
        f"{k}: checkpoint {list(theirs[k].shape)}, model {list(own[k].shape)}"
        for k in sorted(own.keys() & theirs.keys())
        if tuple(theirs[k].shape) != tuple(own[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) differ in shape (e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing from the checkpoint (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s) in the checkpoint (e.g. {unexpected[0]})")
    hp = checkpoint.get("hyper_parameters")
    diff = config_diff(hp, getattr(model, "hparams", {})) if isinstance(hp, Mapping) else []
    why = (
        "; this config differs from the checkpoint's in "
        + ", ".join(diff[:8])
        + (" ..." if len(diff) > 8 else "")
        if diff
        else ""
    )
    raise ConfigError(
        f"{source} does not fit this model: {'; '.join(parts)}{why}. Use the config the checkpoint was "
        "trained with (config.yaml in its run directory) or drop --ckpt_path."
    )


def load_checkpoint(path: str | Path, option: str = "ckpt_path") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with ConfigErrors that name the file and the problem."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{option} = '{path}': no such file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(
            f"{option} = '{path}' holds objects that are not plain tensors/containers, so it does not "
            f"load with weights_only=True (varjepa never unpickles code): {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ConfigError(
            f"{option} = '{path}' is not a readable checkpoint (truncated or not a torch file?): {e}"
        ) from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{option} = '{path}': expected a checkpoint dict, got {type(ckpt).__name__}")
    return ckpt


def resave_final_checkpoints(trainer) -> list[Path]:
    """Overwrite the checkpoints that ``trainer``'s ModelCheckpoint callbacks wrote at the current
    global step (``last`` and the top-k files) with the current state; returns their paths.

    Lightning calls the callbacks' ``on_train_end`` before the module's, so a change a module makes
    in its own ``on_train_end`` (e.g. a final refit of a head) would otherwise never reach the
    files the run leaves behind. Checkpoints of earlier steps are left as they are, and each file
    keeps its callback's ``save_weights_only``. Rank 0 decides which files to write and tells the
    others (``trainer.save_checkpoint`` is collective), so call it on every rank."""
    todo: list[tuple[str, bool]] = []
    if trainer.is_global_zero:
        for cb in trainer.checkpoint_callbacks:
            named = [getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", "")]
            for p in [*named, *getattr(cb, "best_k_models", {})]:  # (without a monitor: best = newest)
                if not p or any(p == q for q, _ in todo) or not Path(p).is_file():
                    continue
                try:
                    step = torch.load(p, map_location="cpu", weights_only=True, mmap=True).get("global_step")
                except Exception as e:  # an unreadable file is left as it is, with a warning
                    warnings.warn(
                        f"resave_final_checkpoints: {p} not re-saved, it does not load: {e}", stacklevel=2
                    )
                    continue
                if step == trainer.global_step:
                    todo.append((p, bool(getattr(cb, "save_weights_only", False))))
    todo = trainer.strategy.broadcast(todo, src=0)
    for p, weights_only in todo:
        trainer.save_checkpoint(p, weights_only=weights_only)
    return [Path(p) for p, _ in todo]
