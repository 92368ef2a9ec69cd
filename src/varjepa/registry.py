"""A small name -> builder registry, filled by a decorator (timm's ``register_model`` style).

A spec that selects an entry may be, in YAML or Python:

* a short name: ``"diag_gaussian"``;
* a mapping with the name plus options: ``{"name": "lowrank_gaussian", "rank": 4}``;
* a Lightning/jsonargparse class path: ``{"class_path": "pkg.Cls", "init_args": {...}}``;
* an already built object, which is returned unchanged.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Spec = str | Mapping[str, Any]


class ConfigError(ValueError):
    """A configuration value is not allowed; the message names the option, the value and what is allowed."""


class Registry(Generic[T]):
    """Maps short names to builders (classes or functions) of one kind of component.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"posterior family"``).
        option: the config option that selects from it (e.g. ``"model.posterior"``).
    """

    def __init__(self, kind: str, option: str):
        self.kind = kind
        self.option = option
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator adding a class or factory function under ``name``."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = fn
            fn.registry_name = name  # type: ignore[attr-defined]
            return fn

        return deco

    def names(self) -> list[str]:
        """The registered short names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str, option: str | None = None) -> Callable[..., T]:
        """The builder registered under ``name``; a ConfigError listing the names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"{option or self.option}: unknown {self.kind} '{name}'. Registered: "
                f"{', '.join(self.names())} (or give a class_path)."
            ) from None

    def resolve(
        self, spec: Spec | T, option: str | None = None
    ) -> tuple[Callable[..., T] | None, dict[str, Any]]:
        """Split a spec into (builder, options); builder is None when ``spec`` is already built."""
        option = option or self.option
        if isinstance(spec, str):
            return self.get(spec, option), {}
        if isinstance(spec, Mapping) and "name" in spec and not isinstance(spec["name"], str):
            raise ConfigError(f"{option}: 'name' must be a string, got {spec['name']!r}")
        if isinstance(spec, Mapping):
            opts = dict(spec)
            if "class_path" in opts:
                builder = import_class_path(opts.pop("class_path"), option)
                init_args = dict(opts.pop("init_args", None) or {})
                if opts:
                    raise ConfigError(
                        f"{option}: with class_path only 'init_args' is allowed, got {sorted(opts)}"
                    )
                return builder, init_args
            if "name" not in opts:
                raise ConfigError(
                    f"{option}: a mapping must hold 'name' (one of {', '.join(self.names())}) "
                    f"or 'class_path'; got keys {sorted(opts)}"
                )
            return self.get(opts.pop("name"), option), opts
        return None, {}

    def build(self, spec: Spec | T, option: str | None = None, **injected: Any) -> T:
        """Build the component a spec selects; ``injected`` (e.g. ``dim``) are passed too.

        ``option`` names the config key in error messages. A built object is returned as is.
        """
        option = option or self.option
        builder, opts = self.resolve(spec, option)
        if builder is None:
            return spec  # type: ignore[return-value]
        clash = set(opts) & set(injected)
        if clash:
            raise ConfigError(
                f"{option}: option(s) {sorted(clash)} are set by varjepa from the model "
                f"(e.g. the latent size comes from the encoder); remove them from the config"
            )
        try:
            return builder(**opts, **injected)
        except ConfigError as e:
            if str(e).startswith(option):
                raise
            raise ConfigError(f"{option}: {e}") from None
        except TypeError as e:
            raise ConfigError(
                f"{option}: bad options {opts} for {self.kind} '{builder.__name__}': {e}"
            ) from e


def import_class_path(path: str, option: str) -> Callable[..., Any]:
    """Import ``"package.module.Name"``; a ConfigError names the option otherwise."""
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{option}: cannot import class_path '{path}': {e}") from e


def spec_name(spec: Any) -> str:
    """A short human name for a spec, for logs and hparams."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return str(spec.get("name") or spec.get("class_path", "?")).rsplit(".", 1)[-1]
    return getattr(spec, "registry_name", type(spec).__name__)
