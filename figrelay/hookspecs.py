"""The plugin hooks of figrelay. Each docstring is that hook's documentation (see docs/plugins.md).

Every delivery target, built-in or third party, is a plugin registering client types here; the
core calls nothing else of a plugin.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .delivery import ClientType

hookspec = pluggy.HookspecMarker("figrelay")
hookimpl = pluggy.HookimplMarker("figrelay")


@hookspec
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    """Register the client types this plugin provides by calling ``register(ClientType(...))``
    once for each. Called once per process, before the configuration is loaded.

    :param register: takes a :class:`figrelay.delivery.ClientType`; a name already registered
        by another plugin is reported as a plugin error and the second registration ignored.
    """
