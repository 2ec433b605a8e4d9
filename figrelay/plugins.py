"""The plugin manager: loads plugins from the ``figrelay`` entry-point group and collects the
client types they register.

``FIGRELAY_PLUGINS=http,slack`` restricts loading to those entry-point names (an empty value
loads none). A plugin that fails to import or to register is reported and skipped; the others
still load.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .delivery import ClientType

ENTRY_POINT_GROUP = "figrelay"
RESTRICT_ENV = "FIGRELAY_PLUGINS"

log = logging.getLogger("figrelay.plugins")


@dataclass(frozen=True, slots=True)
class PluginFailure:
    plugin: str
    error: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    name: str
    distribution: str | None
    version: str | None
    client_types: tuple[str, ...]


@dataclass
class PluginRegistry:
    """The client types on offer, where each came from, and what failed to load."""

    client_types: dict[str, ClientType] = field(default_factory=dict)
    plugins: list[LoadedPlugin] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)

    def type_names(self) -> list[str]:
        return sorted(self.client_types)


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def load_plugins(extra: Iterable[tuple[str, ModuleType | object]] = (), *, entry_points: bool = True) -> PluginRegistry:
    """Load the installed plugins (and ``extra`` (name, plugin) pairs) into a registry."""
    pm = pluggy.PluginManager("figrelay")
    pm.add_hookspecs(hookspecs)
    registry = PluginRegistry()
    candidates: list[tuple[str, Any, str | None, str | None]] = []

    if entry_points:
        wanted: set[str] | None = None
        restrict = os.environ.get(RESTRICT_ENV)
        if restrict is not None:
            wanted = {n.strip() for n in restrict.split(",") if n.strip()}
        seen: set[str] = set()
        for ep in sorted(_entry_points(), key=lambda e: e.name):
            if (wanted is not None and ep.name not in wanted) or ep.name in seen:
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                registry.failures.append(
                    PluginFailure(ep.name, f"cannot import {ep.value}: {type(exc).__name__}: {exc}", traceback.format_exc())
                )
                continue
            candidates.append((ep.name, obj, dist.name if dist else None, dist.version if dist else None))
        if wanted:
            for missing in sorted(wanted - seen):
                registry.failures.append(PluginFailure(missing, f"{RESTRICT_ENV} names {missing!r}, which is not installed"))

    candidates.extend((name, obj, None, None) for name, obj in extra)

    for name, obj, dist_name, version in candidates:
        try:
            pm.register(obj, name=name)
        except Exception as exc:
            registry.failures.append(PluginFailure(name, f"cannot register: {exc}"))
            continue
        provided: list[str] = []

        def register(client_type: ClientType, _plugin: str = name, _provided: list[str] = provided) -> None:
            if not isinstance(client_type, ClientType):
                raise TypeError(f"register() takes a figrelay.delivery.ClientType, got {type(client_type).__name__}")
            if client_type.name in registry.client_types:
                registry.failures.append(
                    PluginFailure(_plugin, f"client type {client_type.name!r} is already provided by another plugin; ignored")
                )
                return
            registry.client_types[client_type.name] = client_type
            _provided.append(client_type.name)

        impls = [i for i in pm.hook.figrelay_client_types.get_hookimpls() if i.plugin_name == name]
        for impl in impls:
            try:
                impl.function(register=register)
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(name, f"figrelay_client_types failed: {type(exc).__name__}: {exc}", traceback.format_exc())
                )
        registry.plugins.append(LoadedPlugin(name, dist_name, version, tuple(provided)))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        registry.failures.append(PluginFailure("?", str(exc)))

    for failure in registry.failures:
        log.error("plugin %s: %s", failure.plugin, failure.error)
    return registry
