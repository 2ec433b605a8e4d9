"""The ``figrelay`` command: run the daemon, check a configuration, list plugins."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import textwrap
from pathlib import Path

from . import __version__
from .config import Config, ConfigError, load_config
from .events import ROUTES
from .logs import redactor
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
    setup_logging(args.log_level or "info", args.log_format)
    registry = load_plugins()
    try:
        asyncio.run(serve(path, registry, log_level=args.log_level, accept_empty_state=args.accept_empty_state))
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


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Config, PluginRegistry] | None:
    path = _need_config(args, parser)
    registry = load_plugins()
    try:
        return load_config(path, registry), registry
    except ConfigError as exc:
        print(f"{path}: the configuration is invalid:\n{_problems(exc)}", file=sys.stderr)
        return None


def cmd_test(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import test_client

    loaded = _load(args, parser)
    if loaded is None:
        return 1
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    redactor.update(loaded[0].secrets)
    logging.getLogger().handlers[0].addFilter(redactor)
    return asyncio.run(test_client(loaded[0], loaded[1], args.client))


def cmd_send(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import send_event

    config = None
    if args.url is None:
        loaded = _load(args, parser)
        if loaded is None:
            return 1
        config = loaded[0]
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"figrelay send: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    return asyncio.run(send_event(config, args.route, body, args.url, args.secret))


def cmd_matches(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import matches

    loaded = _load(args, parser)
    return 1 if loaded is None else matches(loaded[0], args.client_name, args.setting or [], args.event)


def cmd_deliveries(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import deliveries

    loaded = _load(args, parser)
    if loaded is None:
        return 1
    if args.action == "list" and args.ids:
        parser.error("'deliveries list' takes no ids; use --client or --state")
    return asyncio.run(deliveries(loaded[0], args.action, args.ids, args.client, args.state, args.all_dead, args.limit))


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
              figrelay test ops-slack --config config.yaml
              figrelay send SettingValueChanged event.json --config config.yaml
              figrelay matches --client-name OrdersApi --config config.yaml
              figrelay deliveries --state dead --config config.yaml
              figrelay plugins

            Every command takes --help. The configuration defaults to $FIGRELAY_CONFIG.
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"figrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon", description="Run the daemon until SIGTERM; SIGHUP reloads the configuration.")
    _config_arg(run)
    run.add_argument(
        "--log-level", default=os.environ.get("FIGRELAY_LOG_LEVEL"), choices=["debug", "info", "warning", "error"],
        help="overrides log_level in the configuration (default info)",
    )
    run.add_argument(
        "--log-format", default=os.environ.get("FIGRELAY_LOG_FORMAT", "text"), choices=["text", "json"],
        help="text for a terminal, json lines for journald/Loki",
    )
    run.add_argument(
        "--accept-empty-state", action="store_true",
        help="start even though state_dir's marker shows an outbox existed and it is now missing, empty or another one "
        "(what it held is lost); use it once, when the outbox cannot be restored from a backup",
    )
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check", help="validate a configuration file",
        description="Validate a configuration, plugin options included. Exit 0 with a summary, or 1 listing every problem.",
    )
    _config_arg(check)
    check.set_defaults(func=cmd_check)

    plugins = sub.add_parser("plugins", help="list installed plugins and their client types")
    plugins.set_defaults(func=cmd_plugins)

    test = sub.add_parser(
        "test", help="send Fig's seven test events to one client",
        description="Send the seven payloads of Fig's Test button (IsTest: true) to CLIENT through its plugin, "
        "and print the result, status and time of each. Exit 0 when all were delivered.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  figrelay test ops-slack --config /etc/figrelay/config.yaml",
    )
    test.add_argument("client", metavar="CLIENT", help="a client name from the configuration")
    _config_arg(test)
    test.set_defaults(func=cmd_test)

    send = sub.add_parser(
        "send", help="post an event to a running daemon",
        description="Post one event to a running figrelay, as Fig would, and print its answer; for trying hooks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay send SettingValueChanged change.json --config config.yaml\n"
        "  echo '{\"ClientName\":\"OrdersApi\",\"UpdatedSettings\":[\"Timeout\"]}' | figrelay send SettingValueChanged - --url http://127.0.0.1:8970",
    )
    send.add_argument("route", metavar="ROUTE", help=f"the event type: {', '.join(ROUTES)}")
    send.add_argument("file", metavar="FILE", help="the JSON body, or - for standard input")
    _config_arg(send)
    send.add_argument("--url", help="the daemon's address (default: from the configuration's listen)")
    send.add_argument("--secret", default=os.environ.get("FIGRELAY_SECRET"), help="the intake secret (default: $FIGRELAY_SECRET, or intake.secret)")
    send.set_defaults(func=cmd_send)

    match = sub.add_parser(
        "matches", help="show which hooks would fire",
        description="Show which hooks would fire for a setting client (and changed settings), with Fig's filter semantics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay matches --client-name OrdersApi --config config.yaml\n"
        "  figrelay matches --client-name OrdersApi --setting Timeout --setting PoolSize --config config.yaml",
    )
    match.add_argument("--client-name", help="the setting client's name, e.g. OrdersApi")
    match.add_argument("--setting", action="append", metavar="NAME", help="a changed setting's name (repeatable): SettingValueChanged hooks")
    match.add_argument("--event", help="only hooks of this event type")
    _config_arg(match)
    match.set_defaults(func=cmd_matches)

    dl = sub.add_parser(
        "deliveries", help="list, retry or purge deliveries",
        description="List pending and dead deliveries, make dead letters pending again, or delete them. "
        "Safe while the daemon runs; it picks retried deliveries up within seconds.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay deliveries --config config.yaml\n  figrelay deliveries --state dead --client siem\n"
        "  figrelay deliveries retry 6f0c1d... --config config.yaml\n  figrelay deliveries retry --all-dead\n  figrelay deliveries purge --client siem",
    )
    dl.add_argument("action", nargs="?", default="list", choices=["list", "retry", "purge"])
    dl.add_argument("ids", nargs="*", metavar="ID", help="delivery ids (retry and purge)")
    dl.add_argument("--client", help="only this client's deliveries")
    dl.add_argument("--state", default="all", choices=["pending", "dead", "all"], help="for list (default all)")
    dl.add_argument("--all-dead", action="store_true", help="retry or purge every dead letter")
    dl.add_argument("--limit", type=int, default=200, help="for list: at most this many rows (default 200)")
    _config_arg(dl)
    dl.set_defaults(func=cmd_deliveries)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, parser))
    except KeyboardInterrupt:
        return 130
