"""What PagerDuty receives from figrelay's pagerduty client type, generated from the code:
docs/pagerduty.md and the files in docs/pagerduty/.

    .venv/bin/python docs/pagerduty_render.py           # writes them
    .venv/bin/python docs/pagerduty_render.py --check   # writes nothing; lists what differs (exit 1), as the plugin's tests do

Each case is a Fig event on its way to a pagerduty client named ``oncall``, delivered by the
plugin's own target (``figrelay_pagerduty.PagerDutyTarget``) to a local stand-in for PagerDuty's
Events API v2 (a real aiohttp server). What arrives there is what the docs show:

- ``pagerduty/<case>.json``: the body PagerDuty receives, as sent;
- ``pagerduty/<case>.svg``: for a trigger, a picture of what the alert carries;
- ``pagerduty.md``: each case with its picture and its body.

The message is figrelay's default one (``describe(event, min_sessions)``), as the dispatcher makes
it for a hook and client without templates. The delivery ids and the time figrelay accepted each
event are fixed, and the routing key is the example key of PagerDuty's own documentation, so every
run gives the same bytes and ``git diff`` shows only what a change to the code changed.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import importlib.util
import json
import logging
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from figrelay.delivery import ClientContext, Delivered, Delivery
from figrelay.events import FigEvent, parse_event
from figrelay.messages import describe
from figrelay.samples import sample_events, test_button_events
from figrelay.testing import Received, http_receiver
from figrelay_pagerduty import PagerDutyOptions, PagerDutyTarget

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FOLDER = "docs/pagerduty"


_spec = importlib.util.spec_from_file_location("generated_files", HERE / "generated_files.py")
assert _spec is not None and _spec.loader is not None
_generated = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_generated)
"""docs/generated_files.py, loaded from its file: this script is run, or loaded from its file by a test."""
PAGE = "docs/pagerduty.md"
ROUTING_KEY = "e93facc04764012d7bfb002500d5d1a6"
"""The example routing key of PagerDuty's Events API v2 documentation."""
CREATED_AT = 1748781296.0  # 2025-06-01 12:34:56 UTC, when figrelay accepted each event
MIN_SESSIONS = 2
SCRIPT = "docs/pagerduty_render.py"


class DocsError(Exception):
    """The docs cannot be generated; the message says why."""


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    text: str
    """What the case shows, one paragraph."""
    event: FigEvent
    minimum: int | None = None


def _sample(route: str, index: int = 0, **fields: Any) -> FigEvent:
    return parse_event(route, {**sample_events(route)[index].to_wire(), **fields})


def cases() -> list[Case]:
    unhealthy = _sample("HealthStatusChanged", Status=2, HealthDetails={"Status": 2, "Components": [
        {"Name": "Database", "Status": 2, "Message": "connection refused"}, {"Name": "Cache", "Status": 0, "Message": None}]})
    the_test = datetime.fromtimestamp(CREATED_AT, timezone.utc)
    test_below = next(e for e in test_button_events(the_test) if e.route == "MinRunSessions")
    return [
        Case("sessions-below-minimum", "MinRunSessions: BelowMinimum opens an incident",
             f"A hook with `min_sessions: {MIN_SESSIONS}` for `^Orders`: OrdersApi is down to one run session.", _sample("MinRunSessions", 0), MIN_SESSIONS),
        Case("sessions-restored", "MinRunSessions: MinimumRestored resolves it",
             "The second session is back: the resolve names the same `dedup_key`, and nothing else.", _sample("MinRunSessions", 1), MIN_SESSIONS),
        Case("health-unhealthy", "HealthStatusChanged: Unhealthy opens an incident for the host",
             "Each health component and its message is a custom detail.", unhealthy),
        Case("health-healthy", "HealthStatusChanged: Healthy resolves it",
             "The same host reports Healthy.", _sample("HealthStatusChanged", Status=0, HealthDetails={"Status": 0, "Components": []})),
        Case("session-disconnected", "ClientStatusChanged: a lost run session",
             "A run session stopped polling Fig (warning); the client's next Connected resolves it.", _sample("ClientStatusChanged", 1)),
        Case("login-failed", "SecurityEvent: a failed login",
             "Repeated failures of one user add to one alert; the source is the Fig server.", _sample("SecurityEvent", 0)),
        Case("setting-changed", "SettingValueChanged: a change event",
             "Setting changes and registrations go to the service's timeline, beside its incidents: they never page anyone.",
             _sample("SettingValueChanged")),
        Case("test-button", "Fig's Test button",
             "The Test button's MinRunSessions: marked `[TEST]`, at severity `info`, under a key of its own.", test_below, MIN_SESSIONS),
    ]


# --- sending them -----------------------------------------------------------------------------------


async def _sent_bodies(all_cases: list[Case]) -> dict[str, bytes]:
    """{case: the body PagerDuty received}, each sent by the plugin's target."""
    received: dict[str, bytes] = {}

    def answer(request: Received) -> web.Response:
        message = "Change event processed" if request.path.endswith("/change/enqueue") else "Event processed"
        return web.json_response({"status": "success", "message": message, "dedup_key": request.json.get("dedup_key")}, status=202)

    async with http_receiver() as pagerduty, aiohttp.ClientSession() as http:
        pagerduty.responder = answer
        options = PagerDutyOptions(routing_key=ROUTING_KEY, api_url=pagerduty.url)
        target = PagerDutyTarget(ClientContext("oncall", options, http, logging.getLogger("docs"), REPO))
        for i, case in enumerate(all_cases):
            delivery = Delivery(f"{i + 1:032x}", "oncall", case.event, case.event.to_json(), 1, CREATED_AT,
                                describe(case.event, case.minimum), (), case.minimum)
            outcome = await target.deliver(delivery)
            if not isinstance(outcome, Delivered) or outcome.detail.startswith("not sent"):
                raise DocsError(f"case {case.name}: the target did not send it ({outcome})")
            received[case.name] = pagerduty.requests[-1].body
    return received


# --- the picture of an alert ------------------------------------------------------------------------

WIDTH = 760
LABEL_X, VALUE_X = 20, 190
SANS = "-apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
MONO = "ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace"
SEVERITY_COLOURS = {"critical": "#C62828", "error": "#E65100", "warning": "#F9A825", "info": "#1565C0"}
MAX_VALUE_LINES = 6


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, width, break_long_words=True, break_on_hyphens=False) or [""]
    if len(lines) > MAX_VALUE_LINES:
        lines = [*lines[: MAX_VALUE_LINES - 1], lines[MAX_VALUE_LINES - 1][: width - 1] + "…"]
    return lines


def _text(x: int, y: int, content: str, *, size: int = 14, weight: str = "normal", fill: str = "#1F2328", font: str = SANS) -> str:
    return (f'<text x="{x}" y="{y}" font-family="{html.escape(font)}" font-size="{size}" font-weight="{weight}" fill="{fill}">'
            f"{html.escape(content)}</text>")


def incident_svg(event: Mapping[str, Any]) -> str:
    """A picture of what a trigger carries: its severity and summary, the PD-CEF fields, the
    custom details and the link, in the order a responder reads them."""
    payload = event["payload"]
    colour = SEVERITY_COLOURS[payload["severity"]]
    parts: list[str] = []
    y = 30
    parts.append(f'<rect x="0" y="0" width="{WIDTH}" height="44" fill="{colour}"/>')
    parts.append(_text(LABEL_X, y, f"TRIGGER · {payload['severity'].upper()}", weight="bold", fill="#FFFFFF"))
    parts.append(_text(WIDTH - 230, y, "what PagerDuty receives", size=12, fill="#FFFFFF"))
    y = 76
    for line in _wrap(payload["summary"], 62):
        parts.append(_text(LABEL_X, y, line, size=19, weight="bold"))
        y += 26
    y += 6

    def row(label: str, value: str, mono: bool = False) -> None:
        nonlocal y
        parts.append(_text(LABEL_X, y, label, size=12, fill="#656D76"))
        for line in _wrap(value, 70 if mono else 74):
            parts.append(_text(VALUE_X, y, line, size=12 if mono else 14, font=MONO if mono else SANS))
            y += 20
        y += 4

    for label, key in (("source", "source"), ("component", "component"), ("group", "group"), ("class", "class"), ("timestamp", "timestamp")):
        if key in payload:
            row(label, str(payload[key]))
    row("dedup_key", event["dedup_key"], mono=True)
    parts.append(f'<line x1="{LABEL_X}" y1="{y - 8}" x2="{WIDTH - 20}" y2="{y - 8}" stroke="#D0D7DE"/>')
    y += 14
    parts.append(_text(LABEL_X, y, "custom_details", size=13, weight="bold"))
    y += 24
    for key, value in payload.get("custom_details", {}).items():
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        row(_wrap(key, 24)[0], shown, mono=not isinstance(value, str))
    if event.get("links"):
        parts.append(f'<line x1="{LABEL_X}" y1="{y - 8}" x2="{WIDTH - 20}" y2="{y - 8}" stroke="#D0D7DE"/>')
        y += 14
        for link in event["links"]:
            row("link", f"{link.get('text', '')}: {link['href']}")
    height = y + 6
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">\n'
        f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="{height - 1}" rx="6" fill="#FFFFFF" stroke="#D0D7DE"/>\n'
        + "\n".join(parts)
        + "\n</svg>\n"
    )


# --- the page ---------------------------------------------------------------------------------------


def _page(all_cases: list[Case], bodies: Mapping[str, bytes]) -> str:
    lines = [
        "# What PagerDuty receives",
        "",
        f"<!-- generated by {SCRIPT} from the plugin's code: edit the script, not this page, then run it -->",
        "",
        "figrelay's `pagerduty` client type ([plugins/figrelay-pagerduty](../plugins/figrelay-pagerduty/README.md))",
        "sends each Fig event below as shown, to a client named `oncall` whose `routing_key` is",
        "PagerDuty's documentation example. Each body is exactly what the plugin sent to a local",
        "stand-in for the Events API v2 (`.venv/bin/python docs/pagerduty_render.py` makes them again).",
        "",
    ]
    for case in all_cases:
        body = json.loads(bodies[case.name])
        lines += [f"## {case.title}", "", case.text, ""]
        if body.get("event_action") == "trigger":
            lines += [f"![{case.title}: what the alert carries](pagerduty/{case.name}.svg)", ""]
        where = "/v2/change/enqueue" if "event_action" not in body else "/v2/enqueue"
        lines += [f"`POST {where}` ([pagerduty/{case.name}.json](pagerduty/{case.name}.json)):", "", "```json",
                  json.dumps(body, ensure_ascii=False, indent=2), "```", ""]
    return "\n".join(lines)


def artefacts() -> dict[str, str]:
    """{path from the repository's root: content} of everything this script writes."""
    all_cases = cases()
    bodies = asyncio.run(_sent_bodies(all_cases))
    out: dict[str, str] = {PAGE: _page(all_cases, bodies)}
    for case in all_cases:
        body = json.loads(bodies[case.name])
        out[f"{FOLDER}/{case.name}.json"] = json.dumps(body, ensure_ascii=False, indent=2) + "\n"
        if body.get("event_action") == "trigger":
            out[f"{FOLDER}/{case.name}.svg"] = incident_svg(body)
    return out


def differences(produced: Mapping[str, str], root: Path = REPO) -> list[str]:
    """What differs between the files in ``root`` and ``produced``, one line each."""
    return _generated.differences(produced, root, FOLDER)


def write(produced: Mapping[str, str], root: Path = REPO) -> list[str]:
    """Write what changed and delete what is no longer produced; what was done, one line each."""
    return _generated.write(produced, root, FOLDER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; list what differs and exit 1 if anything does")
    args = parser.parse_args(argv)
    try:
        produced = artefacts()
    except DocsError as exc:
        print(f"pagerduty_render: {exc}", file=sys.stderr)
        return 1
    if args.check:
        found = differences(produced)
        for line in found:
            print(line)
        if found:
            print(f"run {sys.executable} {SCRIPT} to regenerate them", file=sys.stderr)
        return 1 if found else 0
    for line in write(produced) or ["nothing changed"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
