"""The ``figrelay`` command: run the daemon, check a configuration, list plugins."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
from pathlib import Path

from . import __version__
from .config import ConfigError, load_config
from .plugins import PluginRegistry, load_plugins

CONFIG_ENV = "FIGRELAY_CONFIG"


def _config_arg(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(CONFIG_ENV)
    parser.add_argument(
        "-c", "--config", type=Path, default=Path(default) if default else None,
        help=f"the YAML configuration file (default: ${CONFIG_ENV})",
    )


def _need_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    if args.config is None:
        parser.error(f"give the configuration file with --config PATH (or set {CONFIG_ENV})")
    return args.config


def _report_plugin_failures(registry: PluginRegistry) -> None:
    for failure in registry.failures:
        print(f"warning: plugin {failure.plugin}: {failure.error}", file=sys.stderr)


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .daemon import StartupError, serve
    from .logs import setup_logging

    path = _need_config(args, parser)
    setup_logging(args.log_level)
    registry = load_plugins()
    try:
        asyncio.run(serve(path, registry))
    except ConfigError as exc:
        print(f"figrelay: the configuration is invalid; not starting.\n{_problems(exc)}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"figrelay: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _problems(exc: ConfigError) -> str:
    return "\n".join(f"  {p}" for p in exc.problems)


def cmd_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    path = _need_config(args, parser)
    registry = load_plugins()
    _report_plugin_failures(registry)
    try:
        config = load_config(path, registry)
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"{path}: {count} problem{'s' if count != 1 else ''}:\n{_problems(exc)}", file=sys.stderr)
        return 1
    print(f"OK {config.summary()}")
    return 0


def cmd_plugins(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    registry = load_plugins()
    rows = [("PLUGIN", "DISTRIBUTION", "CLIENT TYPES")]
    for plugin in registry.plugins:
        dist = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "-"
        rows.append((plugin.name, dist, ", ".join(plugin.client_types) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
    if registry.client_types:
        print()
        for name in registry.type_names():
            print(f"{name}: {registry.client_types[name].description}")
    for failure in registry.failures:
        print(f"\nFAILED {failure.plugin}: {failure.error}", file=sys.stderr)
    return 1 if registry.failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="figrelay",
        description="Relay Fig's web hooks to HTTP receivers, Slack, Teams and email.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """\
            examples:
              figrelay run --config /etc/figrelay/config.yaml
              figrelay check --config config.yaml
              figrelay plugins
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"figrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description="Run the daemon until SIGTERM; SIGHUP reloads the configuration.")
    _config_arg(run)
    run.add_argument("--log-level", default=os.environ.get("FIGRELAY_LOG_LEVEL", "info"), choices=["debug", "info", "warning", "error"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check", help="validate a configuration file",
        description="Validate a configuration, plugin options included. Exit 0 with a summary, or 1 listing every problem.",
    )
    _config_arg(check)
    check.set_defaults(func=cmd_check)

    plugins = sub.add_parser("plugins", help="list installed plugins and their client types")
    plugins.set_defaults(func=cmd_plugins)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, parser))
    except KeyboardInterrupt:
        return 130
