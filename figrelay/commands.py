"""The operator's commands: ``test`` a client, ``send`` an event to a running daemon, show which
hooks ``matches`` a setting client, and list, retry or purge ``deliveries``.

Each returns the process exit code and prints what a person needs; the argument parsing lives in
cli.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

from .config import Config, HookConfig, closest
from .daemon import OUTBOX_FILE
from .delivery import Delivered, Delivery, Failed, Outcome, Retry
from .events import ROUTES, EventError, parse_event_body
from .hookregex import HookPattern, time_limited
from .logs import redactor
from .messages import describe
from .plugins import PluginRegistry, client_context
from .samples import sample_test_events, test_button_events
from .storage import ClientHealth, OutboxError, Store, StoredDelivery
from .storage.postgresql_store import PostgresStore
from .storage.sqlite import Outbox
from .wording import plural


def table(rows: Sequence[Sequence[str]], out: Any = None) -> None:
    """Print rows as left-aligned columns; the first row is the header."""
    out = out or sys.stdout
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


# --- figrelay test CLIENT ---------------------------------------------------------------------


async def test_client(config: Config, registry: PluginRegistry, name: str, samples: bool = False) -> int:
    """Send Fig's seven Test-button payloads to one client through its plugin, exactly as Fig's
    Test button sends them; with ``samples``, figrelay's realistic sample events instead (marked
    as tests), to preview what real events look like."""
    client = config.clients.get(name)
    if client is None:
        print(f"figrelay test: no client is named {name!r} in {config.path} (clients: {', '.join(config.clients) or 'none'})", file=sys.stderr)
        return 2
    client_type = registry.client_types[client.type]
    rows = [["EVENT", "RESULT", "TIME", "DETAIL"]]
    ok = True
    async with aiohttp.ClientSession(headers={"User-Agent": "figrelay-test"}) as http:
        context = client_context(config, name, http)
        target = client_type.open(context)
        try:
            for event in sample_test_events() if samples else test_button_events():
                message = None
                if client.renders_messages:
                    message = describe(event)
                    if client.templates is not None:
                        message = client.templates.apply(event, message)
                delivery = Delivery(uuid.uuid4().hex, name, event, event.to_json(), 1, time.time(), message)
                started = time.monotonic()
                try:
                    async with asyncio.timeout(config.delivery.attempt_timeout):
                        outcome: Outcome = await target.deliver(delivery)
                except TimeoutError:
                    outcome = Retry(f"no outcome within {config.delivery.attempt_timeout:g}s")
                except Exception as exc:
                    outcome = Retry(f"plugin error: {type(exc).__name__}: {exc}")
                elapsed = f"{(time.monotonic() - started) * 1000:.0f} ms"
                if isinstance(outcome, Delivered):
                    rows.append([event.route, "ok", elapsed, redactor.redact(outcome.detail)])  # a target may echo in a 2xx too
                else:
                    ok = False
                    kind = "failed" if isinstance(outcome, Failed) else "retryable"
                    reason = outcome.reason + (f" (Retry-After {outcome.retry_after:g}s)" if isinstance(outcome, Retry) and outcome.retry_after else "")
                    rows.append([event.route, kind, elapsed, redactor.redact(reason)])
        finally:
            await target.aclose()
    what = "figrelay's sample events (marked as tests)" if samples else "Fig's Test-button events"
    print(f"{what} to {name} ({client.type}):")
    table(rows)
    print("all delivered" if ok else "some were not delivered")
    return 0 if ok else 1


# --- figrelay send ROUTE FILE -----------------------------------------------------------------


def _daemon_address(config: Config) -> tuple[str, str | None]:
    """(base URL, unix socket path or None) to reach the daemon of this configuration."""
    listener = next((l for l in config.listen if l.unix_path is None), None) or config.listen[0]
    if listener.unix_path is not None:
        return "http://figrelay", listener.unix_path
    host = listener.host or "127.0.0.1"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{listener.port}", None


async def send_event(config: Config | None, route: str, body: bytes, url: str | None, secret: str | None) -> int:
    """POST one event to a running daemon and print its answer."""
    if route not in ROUTES:
        print(f"figrelay send: unknown event {route!r}; one of: {', '.join(ROUTES)}", file=sys.stderr)
        return 2
    try:
        parse_event_body(route, body)
    except EventError as exc:
        print(f"figrelay send: the file is not a valid {route} event: {exc}", file=sys.stderr)
        return 2
    unix = None
    if url is None:
        if config is None:
            print("figrelay send: give --url, or --config to reach the daemon it describes", file=sys.stderr)
            return 2
        url, unix = _daemon_address(config)
        if secret is None and config.intake.secret is not None:
            secret = config.intake.secret.get_secret_value()
        unresolved = config.unresolved_under("intake")
        if secret is None and unresolved:
            # the configuration was loaded without the service's credentials (a shell has none)
            print(
                "figrelay send: the daemon requires the intake secret, but it cannot be read here:\n"
                + "".join(f"  {problem}\n" for problem in unresolved)
                + "give the plain secret with --secret or $FIGRELAY_SECRET",
                file=sys.stderr,
            )
            return 2
        if secret is None and config.intake.hashed_secret is not None:
            print("figrelay send: the configuration holds only the hashed secret; give the plain one with --secret or $FIGRELAY_SECRET", file=sys.stderr)
            return 2
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if secret:
        headers["Authorization"] = f"Secret {secret}"
    answered = await post_to_daemon("send", url, unix, route, body, headers, timeout=30)
    if answered is None:
        return 1
    status, text = answered
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except json.JSONDecodeError:
        pass
    print(f"HTTP {status}\n{text}")
    return 0 if 200 <= status < 300 else 1


# --- figrelay matches -------------------------------------------------------------------------


class _TooSlow(Exception):
    pass


def _found(pattern: HookPattern, text: str, limit: float) -> bool:
    """A search within the daemon's time limit (so a hostile name cannot hang the command)."""
    limited = time_limited(pattern)
    if limited is None:
        return pattern.search(text) is not None
    try:
        return limited.search(text, timeout=limit) is not None
    except TimeoutError:
        raise _TooSlow(pattern.pattern) from None


async def post_to_daemon(
    command: str, url: str, unix: str | None, path: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, str] | None:
    """POST to the running daemon (over its unix socket when ``unix`` is set); (status, text),
    or None after saying on stderr that it cannot be reached."""
    connector = aiohttp.UnixConnector(path=unix) if unix else None
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(f"{url.rstrip('/')}/{path}", data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        where = f"unix:{unix}" if unix else url
        print(f"figrelay {command}: cannot reach figrelay at {where}: {exc or type(exc).__name__} (is it running?)", file=sys.stderr)
        return None


def _explain(hook: HookConfig, client_name: str | None, settings: Sequence[str], limit: float) -> tuple[bool, str]:
    try:
        return _explain_within(hook, client_name, settings, limit)
    except _TooSlow as exc:
        return False, (
            f"/{exc}/ took longer than {limit * 1000:g}ms (intake.regex_timeout): the daemon would keep this event "
            "as a dead letter for the hook's client"
        )


def _explain_within(hook: HookConfig, client_name: str | None, settings: Sequence[str], limit: float) -> tuple[bool, str]:
    if hook.event == "SecurityEvent":
        return True, "SecurityEvent hooks get every login"
    if client_name is None:
        return True, f"when the setting client's name matches /{hook.client_regex.pattern}/"
    if not _found(hook.client_regex, client_name, limit):
        return False, f"/{hook.client_regex.pattern}/ is not found in {client_name!r}"
    why = f"/{hook.client_regex.pattern}/ found in {client_name!r}"
    if hook.min_sessions is not None:
        return True, f"{why}; figrelay raises it when run sessions cross {hook.min_sessions}"
    if hook.event == "SettingValueChanged" and hook.setting_regex is not None:
        if not settings:
            return True, f"{why}; sends only the changed settings matching /{hook.setting_regex.pattern}/"
        setting_regex = hook.setting_regex
        matched = [s for s in settings if _found(setting_regex, s, limit)]
        if not matched:
            return False, f"{why}, but no setting matches /{hook.setting_regex.pattern}/"
        return True, f"{why}; would send {', '.join(matched)}"
    return True, why


def matches(config: Config, client_name: str | None, settings: Sequence[str], event: str | None) -> int:
    """Which hooks would fire, like Fig's match details."""
    if event is not None and event not in ROUTES:
        print(f"figrelay matches: unknown event {event!r}; one of: {', '.join(ROUTES)}", file=sys.stderr)
        return 2
    rows = [["HOOK", "EVENT", "CLIENT", "FIRES", "WHY"]]
    firing = 0
    for hook in config.hooks:
        if event is not None and hook.event != event:
            continue
        if settings and event is None and hook.event != "SettingValueChanged":
            continue
        fires, why = _explain(hook, client_name, settings, config.intake.regex_timeout)
        firing += fires
        line = f"{hook.index} (line {hook.line})" if hook.line else str(hook.index)
        rows.append([line, hook.event, hook.client, "yes" if fires else "no", why])
    if len(rows) == 1:
        print("no hook is about that event")
        return 1
    table(rows)
    print(f"{firing} of {plural(len(rows) - 1, 'hook')} would fire")
    return 0 if firing else 1


# --- figrelay deliveries ----------------------------------------------------------------------


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


async def _open_outbox(config: Config) -> Store | None:
    # The back end is chosen here, as in daemon.serve: SQLite, the file in state_dir, or the
    # PostgreSQL database replicas share (read and written as the daemons do, claiming nothing).
    outbox: Store
    if config.storage is not None:
        outbox = PostgresStore(config.storage.target, lease=config.storage.lease, command=True)
    else:
        path = config.state_dir / OUTBOX_FILE
        if not path.exists():
            print(f"no outbox at {path}: has figrelay run with this configuration (state_dir)?", file=sys.stderr)
            return None
        outbox = Outbox(path)
    try:
        await outbox.open()
    except OutboxError as exc:
        print(f"figrelay deliveries: {exc}", file=sys.stderr)
        await outbox.close()
        return None
    return outbox


async def deliveries(config: Config, action: str, ids: Sequence[str], client: str | None, state: str, all_dead: bool, limit: int) -> int:
    outbox = await _open_outbox(config)
    if outbox is None:
        return 1
    redactor.update(config.secrets)
    try:
        if action == "list":
            rows = await outbox.list(None if state == "all" else state, client, limit)
            _print_deliveries(rows, set(config.clients))
            _print_circuits(await outbox.client_health(), client)
            if isinstance(outbox, PostgresStore):
                await _print_replicas(outbox, client)
            return 0
        if not ids and client is None and not all_dead:
            print(f"figrelay deliveries {action}: name delivery ids, --client NAME or --all-dead", file=sys.stderr)
            return 2
        # read before acting, to say of each id that was not acted on why not
        before = await outbox.fetch(list(ids)) if ids else {}
        if action == "retry":
            revived = await outbox.revive(ids, client=client, all_dead=all_dead)
            done = len(revived)
            if revived:
                is_, them = ("is", "it") if done == 1 else ("are", "them")
                print(f"{plural(done, 'dead letter')} {is_} pending again; a running figrelay picks {them} up within seconds")
            unknown = sorted({c for _, c in revived} - set(config.clients))
            if unknown:
                print(f"warning: {', '.join(unknown)} is not in the configuration: those deliveries wait until it is", file=sys.stderr)
        else:
            done = await outbox.purge(ids, client=client, all_dead=all_dead)
            if done:
                whose = f" of client {client!r}" if client is not None and not ids else ""
                print(f"{plural(done, 'dead letter')}{whose} deleted")
            if client is not None and not ids and client not in config.clients:
                waiting = await outbox.purge_waiting(client)
                if waiting:
                    print(f"{plural(waiting, 'pending delivery', 'pending deliveries')} of removed client {client!r} deleted")
                done += waiting
        for delivery_id in ids:
            row = before.get(delivery_id)
            if row is None or row.state != "dead":
                print(f"{delivery_id}: {_not_a_dead_letter(delivery_id, row, action)}")
        if client is not None and not ids and not done:
            print(await _nothing_for_client(outbox, config, client, action))
        if all_dead and not ids and client is None and not done:
            print(f"no dead letters: nothing to {action}")
        return 0 if done else 1
    finally:
        await outbox.close()


async def _print_replicas(store: PostgresStore, client: str | None) -> None:
    """Which replicas share the database, and which one sends to each client now."""
    replicas = await store.replicas()
    hashes = {h for _, _, _, h in replicas}
    print(f"\nreplicas: {len(replicas)} alive" + (" (different configurations: compare their config_hash in /readyz)" if len(hashes) > 1 else ""))
    for name, seen, version, digest in replicas:
        print(f"  {name}  figrelay {version}, config {digest or '-'}, seen {_age(seen)} ago")
    lanes = {c: v for c, v in (await store.lane_owners()).items() if client is None or c == client}
    if lanes:
        print("lanes (the replica sending to each client now):")
        for name, (owner, left) in sorted(lanes.items()):
            print(f"  {name}: {owner} (lease {left:.0f}s left)")


_DELIVERY_ID = re.compile(r"[0-9a-f]{32}")


def _not_a_dead_letter(delivery_id: str, row: StoredDelivery | None, action: str) -> str:
    """Why ``retry``/``purge`` of this id did nothing: only dead letters are retried or purged."""
    if row is not None:
        when = "now" if row.next_attempt_at <= time.time() else f"in {_age(row.next_attempt_at - time.time())}"
        return (
            f"still pending, not a dead letter (to {row.client}, {plural(row.attempts, 'attempt')} so far, next try {when}): "
            f"nothing to {action}; `figrelay deliveries --client {row.client}` shows it"
        )
    if not _DELIVERY_ID.fullmatch(delivery_id):
        return "unknown id: a delivery id is 32 hex digits, as `figrelay deliveries` lists them"
    return "not in the outbox: it was delivered already, or purged (the outbox keeps only pending deliveries and dead letters)"


async def _nothing_for_client(outbox: Store, config: Config, client: str, action: str) -> str:
    """What to tell when ``--client NAME`` found nothing to retry or purge."""
    pending = (await outbox.stats()).get(client, (0, 0, None))[0]
    some_pending = plural(pending, "pending delivery", "pending deliveries")
    if client in config.clients:
        left = f" ({some_pending} left as {'it is' if pending == 1 else 'they are'})" if pending else ""
        return f"client {client!r} has no dead letters: nothing to {action}{left}"
    names = sorted(config.clients)
    clients = f" (configured clients: {', '.join(names) or 'none'}){closest(client, names)}"
    if action == "retry" and pending:
        waits = "waits" if pending == 1 else "wait"
        return f"client {client!r} is not in the configuration and has no dead letters; its {some_pending} {waits} for it to return{clients}"
    what = "dead letters" if action == "retry" else "deliveries"
    return f"client {client!r} is not in the configuration and has no {what} in the outbox: nothing to {action}{clients}"


def _print_deliveries(rows: list[StoredDelivery], configured: set[str]) -> None:
    if not rows:
        print("no deliveries")
        return
    now = time.time()
    out = [["ID", "CLIENT", "EVENT", "STATE", "ATTEMPTS", "AGE", "NEXT TRY", "LAST ERROR"]]
    waiting = 0
    for r in rows:
        state, next_try = r.state, "-"
        if r.state == "pending" and r.client not in configured:
            state, next_try = "waiting", "client removed"
            waiting += 1
        elif r.state == "pending":
            next_try = "now" if r.next_attempt_at <= now else f"in {_age(r.next_attempt_at - now)}"
        error = redactor.redact(r.last_error or "-").replace("\n", " ")
        out.append([r.id, r.client, r.route, state, str(r.attempts), _age(now - r.created_at), next_try, error[:100]])
    table(out)
    pending = sum(r.state == "pending" for r in rows)
    note = f" ({waiting} waiting for a removed client to return)" if waiting else ""
    print(f"{pending} pending{note}, {len(rows) - pending} dead")


def _print_circuits(health: dict[str, ClientHealth], client: str | None) -> None:
    now = time.time()
    for h in sorted(health.values(), key=lambda h: h.client):
        if h.state != "open" or (client is not None and h.client != client):
            continue
        since = f" for {_age(now - h.since)}" if h.since is not None else ""
        probe = f"; next probe in {_age(h.next_probe_at - now)}" if h.next_probe_at is not None and h.next_probe_at > now else ""
        error = redactor.redact(h.last_error or "-").replace("\n", " ")
        print(f"client {h.client}: circuit open{since} after {plural(h.failures, 'failed attempt')} in a row{probe}; last error: {error[:200]}")


__all__ = ["deliveries", "matches", "send_event", "test_client"]
