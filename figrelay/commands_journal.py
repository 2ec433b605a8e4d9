"""The journal's commands: ``events`` lists what was received and where it went, ``trace`` follows
one event or delivery through every attempt, ``replay`` has the running daemon send finished
deliveries again.

``events`` and ``trace`` open the store read-only: they work beside the running daemon, need no
credentials, and cannot change what it keeps. ``replay`` asks the daemon (``POST /-/replay``), so
that pacing, coalescing and retries apply to what it sends. Bad input (a malformed time, an
unknown id, a regex that does not compile, an unknown event type) is one line on stderr and exit
status 2.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from .commands import _age, _daemon_address, _explain, post_to_daemon, table
from .config import Config
from .daemon import OUTBOX_FILE
from .durations import parse_duration
from .journal_queries import (
    DeliveryRecord,
    DeliveryTrace,
    EventFilter,
    EventPage,
    Explain,
    JournalUnavailable,
    QueryError,
    ReadConnection,
    ReceivedEvent,
    Trace,
    check_route,
    find_events,
    open_read_only,
    query_errors,
    trace,
)
from .logs import escape_controls, redactor
from .storage.pg_read import PostgresReader
from .wording import plural

# --- times ----------------------------------------------------------------------------------------

_HAS_UNIT = re.compile(r"[0-9.]+\s*(ms|s|m|h|d)", re.IGNORECASE)


class BadInput(ValueError):
    """One line that names the problem; the command exits 2."""


def parse_when(text: str, now: float, flag: str) -> float:
    """A unix time from a duration ago (``30m``, ``1h``, ``2d``, ``1h30m``), an ISO 8601 time
    (``2025-06-01T10:00:00Z``; without an offset, local time), or ``now``."""
    value = text.strip()
    if value.lower() == "now":
        return now
    if _HAS_UNIT.match(value):
        try:
            return now - parse_duration(value)
        except ValueError:
            pass
    else:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return when.timestamp()  # a naive time is taken as local time, as `date` shows it
    raise BadInput(
        f"{flag} {text!r} is not a time: give a duration ago (30m, 1h, 2d, 1h30m) or an ISO 8601 time "
        "(2025-06-01T10:00, 2025-06-01T10:00:00Z)"
    )


def _local(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _shown(text: str | None, limit: int = 0) -> str:
    """A name or reason as it can be printed: credentials masked, control characters escaped."""
    if text is None:
        return "-"
    shown = escape_controls(redactor.redact(text))
    return shown if not limit or len(shown) <= limit else shown[: limit - 1] + "…"


def _fail(command: str, message: str) -> int:
    print(f"figrelay {command}: {message}", file=sys.stderr)
    return 2


def _open(config: Config, command: str) -> ReadConnection | None:
    """The journal, read-only: the SQLite file in state_dir, or the database replicas share."""
    try:
        if config.storage is not None:
            return PostgresReader.open(config.storage.target)
        return open_read_only(config.state_dir / OUTBOX_FILE)
    except JournalUnavailable as exc:
        print(f"figrelay {command}: {exc}", file=sys.stderr)
        return None


# --- figrelay events ------------------------------------------------------------------------------


def events(
    config: Config, *, since: str | None, until: str | None, event: str | None, setting_client: str | None, client: str | None,
    outcome: str | None, limit: int, as_json: bool,
) -> int:
    """List the events received, newest first, each with where its deliveries are now."""
    now = time.time()
    try:
        filt = EventFilter(
            since=parse_when(since, now, "--since") if since is not None else None,
            until=parse_when(until, now, "--until") if until is not None else None,
            route=event, setting_client=setting_client, client=client, outcome=outcome, limit=limit,
        )
    except BadInput as exc:
        return _fail("events", str(exc))
    conn = _open(config, "events")
    if conn is None:
        return 1
    redactor.update(config.secrets)
    try:
        page = find_events(conn, filt, regex_timeout=config.intake.regex_timeout)
    except QueryError as exc:
        return _fail("events", str(exc))
    except (JournalUnavailable, *query_errors()) as exc:
        print(f"figrelay events: cannot read the journal: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    for name in page.regex_timeouts:
        print(f"warning: the setting-client regex took longer than {config.intake.regex_timeout * 1000:g}ms on {_shown(name, 60)!r}: "
              "its events are left out", file=sys.stderr)
    if as_json:
        print(json.dumps(_page_json(page), indent=2, ensure_ascii=False))
        return 0
    _print_page(page, filt)
    if not config.journal.enabled:
        print(f"note: journal.enabled is false in {config.path}: figrelay records no new events", file=sys.stderr)
    return 0


def _delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    out = asdict(d)
    out["last_reason"] = redactor.redact(d.last_reason) if d.last_reason else d.last_reason
    out["created"] = _iso(d.created_at)
    out["finished"] = _iso(d.finished_at)
    return out


def _page_json(page: EventPage) -> dict[str, Any]:
    return {
        "events": [
            {
                "event_id": e.event_id, "received_at": e.received_at, "received": _iso(e.received_at), "event": e.route,
                "setting_client": e.setting_client, "test": e.test, "deliveries": [_delivery_json(d) for d in e.deliveries],
            }
            for e in page.events
        ],
        "more": page.more,
        "regex_timeouts": list(page.regex_timeouts),
    }


def _outcomes(deliveries: Sequence[DeliveryRecord]) -> str:
    if not deliveries:
        return "no hook matched"
    parts = []
    for d in deliveries:
        replay = " replay" if d.replay_of else ""
        parts.append(f"{_shown(d.client)}{replay} {d.state} ({plural(d.attempts, 'attempt')})")
    return ", ".join(parts)


def _print_page(page: EventPage, filt: EventFilter) -> None:
    if not page.events:
        print("no events" + (" match" if _narrowed(filt) else " in the journal"))
        return
    rows = [["RECEIVED", "EVENT ID", "EVENT", "SETTING CLIENT", "DELIVERIES"]]
    for e in page.events:
        route = e.route + (" (test)" if e.test else "")
        rows.append([_local(e.received_at), e.event_id, route, _shown(e.setting_client, 40), _outcomes(e.deliveries)])
    table(rows)
    shown = plural(len(page.events), "event")
    if page.more:
        print(f"{shown}, newest first; more match: raise --limit (now {filt.limit}) or narrow with --since/--until")
    else:
        print(f"{shown}, newest first")


def _narrowed(filt: EventFilter) -> bool:
    return any(v is not None for v in (filt.since, filt.until, filt.route, filt.setting_client, filt.client, filt.outcome))


# --- figrelay trace ID ------------------------------------------------------------------------------


def explainer(config: Config) -> Explain:
    """Explains a recorded hook match with ``figrelay matches``'s words, under ``config``. Hooks
    are numbered by position: a hook at the same index for another client or event type is
    another hook, and the one the event matched is gone."""
    hooks = {hook.index: hook for hook in config.hooks}

    def explain(index: int, client: str, event: ReceivedEvent) -> tuple[bool, bool | None, str]:
        hook = hooks.get(index)
        raised = hook is not None and hook.min_sessions is not None and event.route == "ClientStatusChanged"
        if hook is None or hook.client != client or (hook.event != event.route and not raised):
            now = f"; hook {index} is now {hook.event} to {hook.client}" if hook is not None else ""
            return False, None, f"this hook is no longer in the configuration{now}"
        fires, why = _explain(hook, event.setting_client, event.updated_settings, config.intake.regex_timeout)
        return True, fires, why

    return explain


def trace_command(config: Config, id_: str, as_json: bool) -> int:
    """Show one event (or the event of a delivery): as received, the hooks it matched and why,
    each delivery with every attempt, and where each is now."""
    conn = _open(config, "trace")
    if conn is None:
        return 1
    redactor.update(config.secrets)
    try:
        found = trace(conn, id_, explainer(config))
    except QueryError as exc:
        return _fail("trace", str(exc))
    except (JournalUnavailable, *query_errors()) as exc:
        print(f"figrelay trace: cannot read the journal: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    if as_json:
        print(json.dumps(_trace_json(found), indent=2, ensure_ascii=False))
    else:
        _print_trace(found)
    return 0


def _body_value(body: bytes) -> Any:
    try:
        return json.loads(redactor.redact(body.decode("utf-8")))
    except (UnicodeDecodeError, ValueError):
        return body.decode("utf-8", "replace")


def _trace_json(t: Trace) -> dict[str, Any]:
    e = t.event
    return {
        "asked": t.asked,
        "delivery_asked": t.asked_delivery,
        "event": {
            "event_id": e.event_id, "received_at": e.received_at, "received": _iso(e.received_at), "event": e.route,
            "setting_client": e.setting_client, "test": e.test, "body": _body_value(e.body),
        },
        "hooks": [asdict(h) for h in t.hooks],
        "deliveries": [
            {
                **_delivery_json(d.delivery),
                "attempt_log": [{**asdict(a), "started": _iso(a.started_at), "reason": redactor.redact(a.reason) if a.reason else a.reason}
                                for a in d.attempts],
                "outbox": None if d.outbox is None else {**asdict(d.outbox), "next_attempt": _iso(d.outbox.next_attempt_at)},
                "replayed_as": list(d.replayed_as),
                "now": _where_now(d),
            }
            for d in t.deliveries
        ],
    }


def _where_now(d: DeliveryTrace) -> str:
    r, row = d.delivery, d.outbox
    now = time.time()
    if r.state == "delivered":
        return f"delivered at {_local(r.finished_at)}"
    if r.state == "purged":
        return f"purged at {_local(r.finished_at)} (dropped from the outbox)"
    if r.state == "dead":
        if row is not None:
            return (f"dead letter since {_local(r.finished_at)}, kept in the outbox: send it again with "
                    f"`figrelay deliveries retry {r.delivery_id}` or `figrelay replay {r.delivery_id}`")
        return f"dead since {_local(r.finished_at)}; send it again with `figrelay replay {r.delivery_id}`"
    if row is None:
        return "pending in the journal, but the outbox no longer has it (being recorded just now?)"
    if row.state == "dead":
        return f"dead letter in the outbox (the journal has not caught up): {_shown(row.last_error, 200)}"
    when = "now" if row.next_attempt_at <= now else f"in {_age(row.next_attempt_at - now)} ({_local(row.next_attempt_at)})"
    return f"pending, next attempt {when}"


def _print_trace(t: Trace) -> None:
    e = t.event
    subject = f" for {_shown(e.setting_client)}" if e.setting_client is not None else ""
    test = " (a Fig Test-button event)" if e.test else ""
    asked = f" (of delivery {t.asked_delivery})" if t.asked_delivery else ""
    print(f"event {e.event_id}{asked}: {e.route}{subject}{test}")
    print(f"  received {_local(e.received_at)} ({_iso(e.received_at)})")
    body = e.body.decode("utf-8", "replace")
    print(f"  body     {_shown(body, 2000)}")
    print()
    if not t.hooks:
        print("hooks: none matched")
    else:
        print("hooks it matched:")
        for h in t.hooks:
            where = f" -> delivery {h.delivery_id}" if h.delivery_id else ""
            note = f" [{_shown(h.note)}]" if h.note else ""
            verdict = "" if h.fires is None else ("fires now: " if h.fires else "would not fire now: ")
            print(f"  hook {h.hook} to {_shown(h.client)}{where}{note}")
            print(f"    {verdict}{_shown(h.why)}")
    for d in t.deliveries:
        r = d.delivery
        print()
        hook = f", hook {r.hook}" if r.hook is not None else ""
        replay = f", replay of {r.replay_of}" if r.replay_of else ""
        print(f"delivery {r.delivery_id} to {_shown(r.client)} ({r.route}{hook}{replay}), created {_local(r.created_at)}")
        if d.attempts:
            rows = [["  ATTEMPT", "STARTED", "DURATION", "OUTCOME", "STATUS", "REASON"]]
            for a in d.attempts:
                status = "-" if a.status is None else str(a.status)
                rows.append([f"  {a.attempt}", _local(a.started_at), f"{a.duration * 1000:.0f} ms", a.outcome, status, _shown(a.reason, 120)])
            table(rows)
        else:
            print("  no attempt yet")
        print(f"  now: {_where_now(d)}")
        if d.replayed_as:
            print(f"  replayed as {', '.join(d.replayed_as)}")


# --- figrelay replay --------------------------------------------------------------------------------


async def replay_command(
    config: Config, *, ids: Sequence[str], since: str | None, until: str | None, client: str | None, event: str | None,
    outcome: str | None = None, dry_run: bool, as_json: bool, url: str | None, secret: str | None,
) -> int:
    """Ask the running daemon to send finished deliveries again (or, with ``dry_run``, to say
    which it would)."""
    now = time.time()
    try:
        if ids and (since is not None or until is not None):
            raise BadInput("give delivery or event ids, or --since (and --until), not both")
        if not ids and since is None:
            raise BadInput("nothing to replay: give delivery or event ids (`figrelay events` lists them), or --since")
        if event is not None:
            check_route(event)
        if outcome is not None and outcome not in ("delivered", "dead"):
            raise BadInput(f"--outcome {outcome!r}: only delivered or dead deliveries are replayed (--outcome delivered or --outcome dead)")
        body: dict[str, Any] = {"dry_run": dry_run}
        if ids:
            body["ids"] = list(ids)
        else:
            body["since"] = parse_when(since or "", now, "--since")
            if until is not None:
                body["until"] = parse_when(until, now, "--until")
        if client is not None:
            body["client"] = client
        if event is not None:
            body["event"] = event
        if outcome is not None:
            body["outcome"] = outcome
    except (BadInput, QueryError) as exc:
        return _fail("replay", str(exc))
    unix = None
    if url is None:
        url, unix = _daemon_address(config)
    if secret is None and config.intake.secret is not None:
        secret = config.intake.secret.get_secret_value()
    headers = {"Content-Type": "application/json"}
    if secret:  # from this machine the daemon needs none; through another address it does
        headers["Authorization"] = f"Secret {secret}"
    answered = await post_to_daemon("replay", url, unix, "-/replay", json.dumps(body).encode(), headers, timeout=60)
    if answered is None:
        return 1
    status, text = answered
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        answer = None
    if status != 200 or not isinstance(answer, dict):
        message = answer.get("message") if isinstance(answer, dict) else None
        print(f"figrelay replay: {message or f'the daemon answered HTTP {status}: {text[:200]}'}", file=sys.stderr)
        if status == 404 and isinstance(answer, dict) and answer.get("error") == "not_found":
            print("  (this daemon has no /-/replay: it runs an older figrelay; restart it)", file=sys.stderr)
            return 1
        return 2 if status in (400, 404) else 1
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        _print_replay(answer)
    replays, refused = answer.get("replays") or [], answer.get("refused") or []
    return 0 if replays and not refused else 1


def _print_replay(answer: dict[str, Any]) -> None:
    replays, refused = answer.get("replays") or [], answer.get("refused") or []
    dry_run = bool(answer.get("dry_run"))
    if replays:
        if dry_run:
            rows = [["REPLAY OF", "CLIENT", "EVENT", "EVENT ID", "WAS", "BODY FROM"]]
            rows += [[r["replay_of"], _shown(r["client"]), r["event"], r["event_id"], r["state_was"], r["body_from"]] for r in replays]
        else:
            rows = [["NEW ID", "REPLAY OF", "CLIENT", "EVENT", "EVENT ID"]]
            rows += [[r["new_id"], r["replay_of"], _shown(r["client"]), r["event"], r["event_id"]] for r in replays]
        table(rows)
    count = plural(len(replays), "delivery", "deliveries")
    if dry_run:
        print(f"would replay {count} (dry run: nothing was sent)" if replays else "nothing to replay")
    else:
        print(f"replaying {count}: the daemon sends them as new deliveries" if replays else "nothing replayed")
    for r in refused:
        print(f"not replayed: {r['id']}: {_shown(r['reason'])}")


__all__ = ["BadInput", "events", "explainer", "parse_when", "replay_command", "trace_command"]
