"""figrelay: a relay for the Fig settings manager's web hooks."""

__version__: str = "0.1.0"

PLUGIN_API: int = 1
"""The version of the plugin API (docs/plugins.md, "The plugin API reference") this figrelay offers.

Raised only by an incompatible change to the hookspecs, ``ClientType``, ``ClientContext``,
``Delivery``, the outcomes or the exported helpers; an addition does not raise it. A plugin module
declares the versions it works with as ``FIGRELAY_PLUGIN_API = 1`` or ``(1, 2)``, and figrelay
does not load a plugin whose declaration leaves this version out (see figrelay.plugins).
"""
