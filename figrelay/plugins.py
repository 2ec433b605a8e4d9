"""The plugin manager: loads plugins from the ``figrelay`` entry-point group and collects the
client types they register.

``FIGRELAY_PLUGINS=http,slack`` restricts loading to those entry-point names (an empty value
loads none). A plugin that fails to import or to register is reported and skipped; the others
still load.

A plugin module may declare the plugin API versions it works with, ``FIGRELAY_PLUGIN_API = 1``
or ``(1, 2)``; one whose declaration leaves out this figrelay's ``PLUGIN_API`` is reported and
not registered, so it fails in ``figrelay plugins`` and ``check`` rather than at run time.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from . import PLUGIN_API, __version__, hookspecs
from .delivery import ClientContext, ClientType

if TYPE_CHECKING:
    import aiohttp

    from .config import Config

ENTRY_POINT_GROUP = "figrelay"
RESTRICT_ENV = "FIGRELAY_PLUGINS"
API_DECLARATION = "FIGRELAY_PLUGIN_API"
"""The name a plugin module gives the plugin API versions it works with."""

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
    api: tuple[int, ...] | None = None
    """The plugin API versions the plugin declares (``FIGRELAY_PLUGIN_API``); None: undeclared."""


class ApiDeclarationError(ValueError):
    """A ``FIGRELAY_PLUGIN_API`` that is neither an int nor a tuple of ints."""


def declared_api(plugin: object) -> tuple[int, ...] | None:
    """The plugin API versions a plugin object declares, sorted; None when it declares none.
    Raises ApiDeclarationError for a declaration that is not an int or a non-empty tuple of ints."""
    value = getattr(plugin, API_DECLARATION, None)
    if value is None:
        return None
    versions = (value,) if isinstance(value, int) else value
    if (
        not isinstance(versions, (tuple, list, set, frozenset))
        or not versions
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions)
    ):
        raise ApiDeclarationError(
            f"{API_DECLARATION} = {value!r} is not a plugin API version: declare an int such as "
            f"{API_DECLARATION} = {PLUGIN_API}, or a tuple of them such as ({PLUGIN_API}, {PLUGIN_API + 1})"
        )
    return tuple(sorted(set(versions)))


def describe_api(api: tuple[int, ...] | None) -> str:
    """``1``, ``1, 2`` or ``undeclared``: a plugin's declared API versions, for a table."""
    return "undeclared" if api is None else ", ".join(str(v) for v in api)


def _either(versions: tuple[int, ...]) -> str:
    words = [str(v) for v in versions]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def incompatibility(name: str, distribution: str | None, version: str | None, api: tuple[int, ...]) -> str | None:
    """Why a plugin declaring ``api`` cannot load into this figrelay, or None when it can."""
    if PLUGIN_API in api:
        return None
    where = f" ({distribution} {version})" if distribution else ""
    supports = f"plugin API {api[0]}" if len(api) == 1 else f"plugin APIs {', '.join(str(v) for v in api[:-1])} and {api[-1]}"
    release = f"a release of {distribution}" if distribution else f"a version of plugin {name!r}"
    return (
        f"plugin {name!r}{where} supports figrelay {supports}; this figrelay ({__version__}) has plugin API {PLUGIN_API}: "
        f"install a figrelay release with plugin API {_either(api)}, or {release} that supports API {PLUGIN_API}"
    )


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


def load_plugins(extra: Iterable[tuple[str, ModuleType | object]] = (), *, entry_points: bool = True, log_failures: bool = True) -> PluginRegistry:
    """Load the installed plugins (and ``extra`` (name, plugin) pairs) into a registry. Each
    failure is logged as an error, unless ``log_failures`` is False (a command that prints them)."""
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
        installed = sorted(_entry_points(), key=lambda e: e.name)
        for ep in installed:
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
            names = ", ".join(sorted({ep.name for ep in installed})) or "none"
            for missing in sorted(wanted - seen):
                registry.failures.append(PluginFailure(
                    missing, f"{RESTRICT_ENV} names {missing!r}, which is not installed (installed plugins: {names}); "
                    f"install it, or take it out of {RESTRICT_ENV}",
                ))

    candidates.extend((name, obj, None, None) for name, obj in extra)

    for name, obj, dist_name, version in candidates:
        where = f"plugin {name!r}" + (f" ({dist_name} {version})" if dist_name else "")
        try:
            api = declared_api(obj)
        except ApiDeclarationError as exc:
            registry.failures.append(PluginFailure(name, f"{where} is not loaded: {exc}"))
            continue
        problem = incompatibility(name, dist_name, version, api) if api is not None else None
        if problem is not None:
            registry.failures.append(PluginFailure(name, problem))
            continue
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
        registry.plugins.append(LoadedPlugin(name, dist_name, version, tuple(provided), api))

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        registry.failures.append(PluginFailure("?", str(exc)))

    for failure in registry.failures if log_failures else ():
        log.error("plugin %s: %s", failure.plugin, failure.error)
    return registry


def client_context(config: Config, name: str, http: aiohttp.ClientSession) -> ClientContext:
    """The context a configured client's target is opened with: the same wherever figrelay opens
    one (the daemon, ``figrelay test``)."""
    return ClientContext(
        name=name,
        options=config.clients[name].options,
        http=http,
        logger=logging.getLogger(f"figrelay.client.{name}"),
        state_dir=config.state_dir,
        config_dir=config.path.parent.resolve(),
    )
