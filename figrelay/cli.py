"""The ``figrelay`` command: run the daemon, check a configuration, list plugins."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import NoReturn

from . import PLUGIN_API, __version__
from .config import Config, ConfigError, load_config
from .events import ROUTES
from .logs import redactor
from .plugins import API_DECLARATION, RESTRICT_ENV, PluginRegistry, describe_api, load_plugins
from .wording import plural

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
    registry = load_plugins(log_failures=False)  # reported just below, once
    _report_plugin_failures(registry)
    try:
        config = load_config(path, registry)
    except ConfigError as exc:
        print(f"{path}: {plural(len(exc.problems), 'problem')}:\n{_problems(exc)}", file=sys.stderr)
        if registry.failures:
            print(f"note: {plural(len(registry.failures), 'plugin problem')} above: the client types of a plugin that did not load "
                  "are unknown until it is fixed (`figrelay plugins` shows the installed plugins)", file=sys.stderr)
        return 1
    # with storage: set, everything lives in the shared database and state_dir goes unused
    for warning in state_dir_warnings(config.state_dir, path) if config.storage is None else []:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"OK {config.summary()}")
    return 0


# Where the unit (systemd/figrelay.service) reads its configuration, and the one folder its
# ProtectSystem=strict leaves writable: StateDirectory=figrelay.
UNIT_CONFIG_DIR = Path("/etc/figrelay")
UNIT_STATE_DIR = Path("/var/lib/figrelay")


def _user() -> str:
    import pwd

    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def state_dir_warnings(state_dir: Path, config_path: Path) -> list[str]:
    """Why figrelay could not create or write its outbox in ``state_dir``, if it could not.

    Warnings, not problems: ``check`` often runs as another user than the daemon (root, while the
    unit runs as a DynamicUser), and a relative ``./state`` on a developer's machine is fine.
    """
    fix = f"make it writable by the user figrelay runs as, or set state_dir to a folder it can write (under the unit: {UNIT_STATE_DIR})"
    warnings: list[str] = []
    if state_dir.exists():
        if not state_dir.is_dir():
            warnings.append(f"state_dir {state_dir} is not a directory, so figrelay cannot keep its outbox there; set state_dir to a folder")
        elif not os.access(state_dir, os.W_OK | os.X_OK):
            warnings.append(f"state_dir {state_dir} is not writable by {_user()}: figrelay could not write its outbox there; {fix}")
        else:
            for name in ("outbox.sqlite3", "outbox.marker"):
                stored = state_dir / name
                if stored.exists() and not os.access(stored, os.R_OK | os.W_OK):
                    warnings.append(f"{stored} is not writable by {_user()}: figrelay would not start; {fix}")
    else:
        parent = state_dir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            warnings.append(f"state_dir {state_dir} cannot be created: {parent} is not a directory; set state_dir to a folder figrelay can create")
        elif not os.access(parent, os.W_OK | os.X_OK):
            warnings.append(f"state_dir {state_dir} does not exist and cannot be created: {parent} is not writable by {_user()}; {fix}")
    # The unit's ProtectSystem=strict makes every folder but its StateDirectory read-only, so a
    # state_dir that root can create from a shell (./state next to /etc/figrelay/config.yaml)
    # still fails under systemd.
    in_unit_layout = config_path.resolve().parent == UNIT_CONFIG_DIR
    state = state_dir.resolve()
    if in_unit_layout and state != UNIT_STATE_DIR and UNIT_STATE_DIR not in state.parents:
        warnings.append(
            f"state_dir {state_dir} is outside {UNIT_STATE_DIR}: under systemd/figrelay.service (ProtectSystem=strict) figrelay "
            f"can write only its StateDirectory, {UNIT_STATE_DIR}; set state_dir: ${{STATE_DIRECTORY:-{UNIT_STATE_DIR}}}"
        )
    return warnings


def _load(args: argparse.Namespace, parser: argparse.ArgumentParser, need_credentials: bool = True) -> tuple[Config, PluginRegistry] | None:
    """The configuration; ``need_credentials=False`` for the commands that deliver nothing, so they
    work from a shell without the service's credentials (see config.load_config)."""
    path = _need_config(args, parser)
    registry = load_plugins()
    try:
        return load_config(path, registry, need_credentials=need_credentials), registry
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
    return asyncio.run(test_client(loaded[0], loaded[1], args.client, samples=args.samples))


def cmd_send(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import send_event

    config = None
    if args.url is None:
        loaded = _load(args, parser, need_credentials=False)
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

    loaded = _load(args, parser, need_credentials=False)
    return 1 if loaded is None else matches(loaded[0], args.client_name, args.setting or [], args.event)


def cmd_deliveries(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import deliveries

    loaded = _load(args, parser, need_credentials=False)
    if loaded is None:
        return 1
    if args.action == "list" and args.ids:
        parser.error("'deliveries list' takes no ids; use --client or --state")
    return asyncio.run(deliveries(loaded[0], args.action, args.ids, args.client, args.state, args.all_dead, args.limit))


def cmd_events(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands_journal import events

    loaded = _load(args, parser, need_credentials=False)
    if loaded is None:
        return 1
    return events(
        loaded[0], since=args.since, until=args.until, event=args.event, setting_client=args.setting_client, client=args.client,
        outcome=args.outcome, limit=args.limit, as_json=args.json,
    )


def cmd_trace(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands_journal import trace_command

    loaded = _load(args, parser, need_credentials=False)
    return 1 if loaded is None else trace_command(loaded[0], args.id, args.json)


def cmd_replay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands_journal import replay_command

    loaded = _load(args, parser, need_credentials=False)
    if loaded is None:
        return 1
    return asyncio.run(replay_command(
        loaded[0], ids=args.ids, since=args.since, until=args.until, client=args.client, event=args.event, outcome=args.outcome, dry_run=args.dry_run,
        as_json=args.json, url=args.url, secret=args.secret,
    ))


def _one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Bad input to the journal's commands is one line naming the problem, exit status 2 (scripts
    read it; the usage is one --help away)."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: {message} (see --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def cmd_plugins(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    registry = load_plugins(log_failures=False)  # listed below as FAILED
    print(f"figrelay {__version__}, plugin API {PLUGIN_API}")
    restrict = os.environ.get(RESTRICT_ENV)
    if restrict is not None:
        print(f"{RESTRICT_ENV}={restrict}: " + ("loading only the plugins it names" if restrict.strip(", ") else "loading no plugin"))
    print()
    rows = [("PLUGIN", "DISTRIBUTION", "API", "CLIENT TYPES")]
    for plugin in registry.plugins:
        dist = f"{plugin.distribution} {plugin.version}" if plugin.distribution else "-"
        rows.append((plugin.name, dist, describe_api(plugin.api), ", ".join(plugin.client_types) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    if not registry.plugins:
        print("(no plugin loaded)")
    undeclared = [p.name for p in registry.plugins if p.api is None]
    if undeclared:
        print(f"\nAPI undeclared: {', '.join(undeclared)} (assumed to work with plugin API {PLUGIN_API}; "
              f"a plugin module says which it supports with {API_DECLARATION} = {PLUGIN_API})")
    if registry.client_types:
        print()
        for name in registry.type_names():
            print(f"{name}: {registry.client_types[name].description}")
    for failure in registry.failures:
        print(f"\nFAILED {failure.plugin}: {failure.error}", file=sys.stderr)
    return 1 if registry.failures else 0


def cmd_schema(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import json

    from .schema import build_schema

    registry = load_plugins()
    _report_plugin_failures(registry)
    if registry.failures:
        print("warning: the client types of a plugin that did not load are missing from the schema; fix it and write the schema again",
              file=sys.stderr)
    document, problems = build_schema(registry)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    # beside the target, then renamed: an editor never reads half a schema
    partial = args.output.with_name(f".{args.output.name}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, args.output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"figrelay schema: cannot write {args.output}: {exc.strerror or exc}; choose another --output, or print it "
              "with `figrelay schema > FILE`", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({document['title']}); an editor with the YAML language server uses it for a configuration "
          f"whose first line is:\n# yaml-language-server: $schema={args.output.name}")
    return 0


def cmd_new_plugin(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .scaffold import ScaffoldError, next_steps, plugin_names, write_plugin

    registry = load_plugins(log_failures=False)  # only to refuse a name already installed
    taken = {p.name: f"an installed plugin ({p.distribution or 'no distribution'})" for p in registry.plugins}
    taken.update({name: f"a client type of an installed plugin ({_provider(registry, name)})" for name in registry.client_types})
    try:
        names = plugin_names(args.name, taken)
        folder = args.dir if args.dir is not None else Path(names.distribution)
        write_plugin(names, folder)
    except ScaffoldError as exc:
        print(f"figrelay new-plugin: {exc}", file=sys.stderr)
        return 2
    print(next_steps(names, folder))
    return 0


def _provider(registry: PluginRegistry, client_type: str) -> str:
    plugin = next((p for p in registry.plugins if client_type in p.client_types), None)
    if plugin is None:
        return "?"
    return f"{plugin.distribution} {plugin.version}" if plugin.distribution else f"plugin {plugin.name}"


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
              figrelay events --since 1h --config config.yaml
              figrelay trace EVENT_OR_DELIVERY_ID --config config.yaml
              figrelay replay --since 24h --client slack-ops --dry-run --config config.yaml
              figrelay plugins
              figrelay new-plugin pager
              figrelay schema --output figrelay.schema.json

            Every command takes --help. The configuration defaults to $FIGRELAY_CONFIG.
            """
        ),
    )
    parser.add_argument("--version", action="version", version=f"figrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the daemon", description="Run the daemon until SIGTERM; SIGHUP reloads the configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay run --config config.yaml\n"
        "  figrelay run --config /etc/figrelay/config.yaml --log-format json   # as systemd/figrelay.service runs it\n"
        "  FIGRELAY_CONFIG=config.yaml figrelay run --log-level debug",
    )
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
        description="Validate a configuration, plugin options included. Exit 0 with a summary, or 1 listing every problem. "
        "Warns when figrelay could not write its state_dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay check --config config.yaml\n"
        "  sudo figrelay check --config /etc/figrelay/config.yaml\n"
        "  figrelay check --config config.yaml.new && mv config.yaml.new config.yaml   # before replacing a live file",
    )
    _config_arg(check)
    check.set_defaults(func=cmd_check)

    plugins = sub.add_parser(
        "plugins", help="list installed plugins and their client types",
        description="List the installed plugins (the 'figrelay' entry-point group), their distributions, the plugin API "
        "versions they declare and the client types they provide. Exit 1 when a plugin failed to load, for instance one "
        "written for another plugin API version.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay plugins\n  FIGRELAY_PLUGINS=http,slack figrelay plugins   # load only these plugins",
    )
    plugins.set_defaults(func=cmd_plugins)

    new_plugin = sub.add_parser(
        "new-plugin", help="write a new delivery plugin to start from",
        description="Write a complete, installable delivery plugin into a new folder (default ./figrelay-NAME): its "
        "pyproject.toml (build system, the figrelay entry point, dependencies), the module figrelay_NAME.py with a client "
        "type NAME (typed options: an https URL, a secret token, a timeout; a target that POSTs each event as JSON), a "
        "README, and tests that run it inside a real figrelay daemon. Then print the next steps. See docs/plugins.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay new-plugin pager\n  figrelay new-plugin ops_chat --dir ~/src/figrelay-ops-chat",
    )
    new_plugin.add_argument(
        "name", metavar="NAME",
        help="the client type's name (type: NAME in the YAML): a lower-case letter, then lower-case letters, digits and single underscores",
    )
    new_plugin.add_argument("--dir", type=Path, metavar="PATH", help="the folder to write, new or empty (default: ./figrelay-NAME)")
    new_plugin.set_defaults(func=cmd_new_plugin)

    schema = sub.add_parser(
        "schema", help="print a JSON Schema of the configuration, for editors",
        description="Print a JSON Schema (draft 2020-12) of the configuration file, with the options of every installed "
        "plugin's client types, so that an editor with the YAML language server (VS Code's YAML extension, and others) "
        "completes keys, shows their documentation and marks mistakes as you type. Write it beside the configuration and "
        "put '# yaml-language-server: $schema=figrelay.schema.json' on the configuration's first line. Write it again after "
        "installing or upgrading a plugin. The schema cannot check everything `figrelay check` does (that a hook's client "
        "exists, that a regex or template compiles): check the file before using it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay schema --output /etc/figrelay/figrelay.schema.json\n"
        "  figrelay schema > figrelay.schema.json\n"
        "  FIGRELAY_PLUGINS=http,slack figrelay schema --output figrelay.schema.json   # only these plugins' client types",
    )
    schema.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the schema to FILE instead of standard output")
    schema.set_defaults(func=cmd_schema)

    test = sub.add_parser(
        "test", help="send Fig's seven Test-button events to one client",
        description="Send the seven payloads of Fig's Test button to CLIENT through its plugin, exactly as Fig sends them "
        "(IsTest: true, ClientName \"Test\", the time of the test), so you see what Fig's button will produce through "
        "figrelay; print the result and time of each. Exit 0 when all were delivered.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay test ops-slack --config /etc/figrelay/config.yaml\n"
        "  figrelay test ops-slack --samples --config /etc/figrelay/config.yaml   # realistic events, to preview messages",
    )
    test.add_argument("client", metavar="CLIENT", help="a client name from the configuration")
    test.add_argument(
        "--samples", action="store_true",
        help="send figrelay's realistic sample events of every type instead (OrdersApi, a failed login, a degraded "
        "service ...), marked IsTest so targets show them as tests",
    )
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

    ev = _one_line_errors(sub.add_parser(
        "events", help="list received events and where their deliveries are",
        description="List the events figrelay received, newest first, one line each with its deliveries' outcomes, from the "
        "event journal. Read-only and without credentials: safe while the daemon runs. Times are durations ago (30m, 1h, 2d) "
        "or ISO 8601 times (2025-06-01T10:00, 2025-06-01T10:00:00Z; without an offset, local time).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay events --since 1h --config config.yaml\n"
        "  figrelay events --setting-client ^Orders --event SettingValueChanged --since 2d\n"
        "  figrelay events --client slack-ops --outcome dead --since 24h\n"
        "  figrelay events --since 2025-06-01T03:00 --until 2025-06-01T04:00 --json | jq '.events[].event_id'",
    ))
    ev.add_argument("--since", metavar="TIME", help="received at or after: a duration ago (1h) or an ISO 8601 time")
    ev.add_argument("--until", metavar="TIME", help="received at or before (default now)")
    ev.add_argument("--event", metavar="TYPE", help=f"only events received of this type: {', '.join(ROUTES)}")
    ev.add_argument("--setting-client", metavar="REGEX", help="a regex searched in the setting client's name, as a hook's client_regex (^Orders)")
    ev.add_argument("--client", metavar="NAME", help="only events with a delivery to this client")
    ev.add_argument("--outcome", metavar="STATE", help="only events with a delivery (to --client) now in this state: delivered, dead, pending or purged")
    ev.add_argument("--limit", type=int, default=50, help="at most this many events (default 50)")
    ev.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    _config_arg(ev)
    ev.set_defaults(func=cmd_events)

    tr = _one_line_errors(sub.add_parser(
        "trace", help="follow one event or delivery through every attempt",
        description="Show an event (or the event of a delivery): the body as received, each hook it matched and why (as "
        "`figrelay matches` explains it under the configuration now), each delivery with every attempt (time, duration, "
        "outcome, status, reason) and where it is now. Read-only and without credentials.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay trace 3f2a9c0d5e6b4a718293a4b5c6d7e8f9 --config config.yaml   # an event id (`figrelay events`)\n"
        "  figrelay trace 6f0c1d2e     # a delivery id from the log, or the start of one\n"
        "  figrelay trace 6f0c1d2e --json | jq '.deliveries[].attempt_log'",
    ))
    tr.add_argument("id", metavar="ID", help="an event id or a delivery id (or its first 6 characters or more)")
    tr.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    _config_arg(tr)
    tr.set_defaults(func=cmd_trace)

    rp = _one_line_errors(sub.add_parser(
        "replay", help="send delivered or dead deliveries again, through the running daemon",
        description="Have the running daemon send delivered or dead deliveries again, as new deliveries with new ids that "
        "name the original (replay_of), paced, coalesced and retried like any other. Name event or delivery ids, or a "
        "window of time (the deliveries made in it). --dry-run lists what would go. A replay sends the original's body "
        "while the outbox has it, else the body the journal kept as sent, else the received event matched again against "
        "the same hook (see docs/operations.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  figrelay replay --since 24h --client slack-ops --dry-run --config config.yaml\n"
        "  figrelay replay --since 24h --client slack-ops       # after a day in which slack-ops lost messages\n"
        "  figrelay replay --since 2025-06-01T08:00 --until 2025-06-01T17:00 --client siem --outcome dead\n"
        "  figrelay replay 3f2a9c0d5e6b4a718293a4b5c6d7e8f9     # every delivery of one event\n"
        "  figrelay replay 6f0c1d2e... 8159f1a9... --json       # these deliveries",
    ))
    rp.add_argument("ids", nargs="*", metavar="ID", help="event or delivery ids")
    rp.add_argument("--since", metavar="TIME", help="replay the deliveries made since: a duration ago (24h) or an ISO 8601 time")
    rp.add_argument("--until", metavar="TIME", help="and until (default now)")
    rp.add_argument("--client", metavar="NAME", help="only deliveries to this client")
    rp.add_argument("--event", metavar="TYPE", help="only deliveries of this event type")
    rp.add_argument("--outcome", metavar="STATE", help="only deliveries now delivered, or dead (default both)")
    rp.add_argument("--dry-run", action="store_true", help="list what would be replayed; send nothing")
    rp.add_argument("--json", action="store_true", help="the daemon's JSON answer, for scripts")
    rp.add_argument("--url", help="the daemon's address (default: from the configuration's listen)")
    rp.add_argument(
        "--secret", default=os.environ.get("FIGRELAY_SECRET"),
        help="the intake secret, needed only when the daemon is reached through a non-loopback address (default: $FIGRELAY_SECRET, or intake.secret)",
    )
    _config_arg(rp)
    rp.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            return int(args.func(args, parser))
        finally:
            # stdout to a pipe is block-buffered: flush here, so that a reader that went away
            # shows up below rather than as a traceback when the interpreter exits
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `figrelay plugins | head`: the reader has all it wants. Stop quietly, as cat and grep do
        # (Python's documented way: point stdout at /dev/null so the exit's flush cannot fail again),
        # with the status of a process ended by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
