"""End to end: the event journal with a real daemon. Events posted as Fig posts them, delivered to
real receivers; ``figrelay events`` and ``trace`` read what happened while the daemon runs;
``figrelay replay`` sends a dead delivery again once its target is fixed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from aiohttp import web
from test_operations import afigrelay

from conftest import REPO, event, wait_until, write_config
from figrelay.journal_queries import JournalUnavailable, open_read_only
from test_e2e import AUTH, HASHED, all_routes_to, daemon_config, relay_config

HOOKS = """
  - {event: SettingValueChanged, client: slack-ops, client_regex: ^Orders, setting_regex: Timeout$}
  - {event: SecurityEvent, client: siem}
"""


def journal_state(config_path: Path, delivery_id: str) -> str | None:
    """Where the journal says a delivery is, read as the commands read it."""
    try:
        conn = open_read_only(config_path.parent / "state" / "outbox.sqlite3")
    except JournalUnavailable:
        return None
    try:
        row = conn.execute("SELECT state FROM journal_deliveries WHERE delivery_id = ?", (delivery_id,)).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


async def test_events_and_trace_follow_an_event_from_fig_to_its_target(daemon_factory, receiver_factory):
    slack, siem = await receiver_factory(), await receiver_factory()
    slack.responder = lambda r: web.Response(status=503, text="busy") if len(slack.requests) == 1 else None
    d = await daemon_factory(relay_config({"slack-ops": slack, "siem": siem}, HOOKS))
    config = str(d.config_path)
    body = event("SettingValueChanged", ClientName="OrdersApi", UpdatedSettings=["Timeout", "Colour"])
    status, change = await d.post("SettingValueChanged", body, AUTH)
    assert status == 200 and len(change["event_id"]) == 32
    (delivery,) = change["deliveries"]
    status, login = await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    assert status == 200
    status, unmatched = await d.post("SettingValueChanged", event("SettingValueChanged", ClientName="PaymentsApi"), AUTH)
    assert status == 200 and unmatched["deliveries"] == []
    await wait_until(lambda: journal_state(d.config_path, delivery["id"]) == "delivered", what="the retried delivery recorded as delivered")
    await wait_until(lambda: journal_state(d.config_path, login["deliveries"][0]["id"]) == "delivered", what="the login delivered")

    code, out, err = await afigrelay("events", "--json", "--since", "10m", "--config", config)
    assert code == 0, err
    listed = {e["event_id"]: e for e in json.loads(out)["events"]}
    assert list(listed) == [unmatched["event_id"], login["event_id"], change["event_id"]]  # newest first
    assert [(x["client"], x["state"], x["attempts"]) for x in listed[change["event_id"]]["deliveries"]] == [("slack-ops", "delivered", 2)]
    assert [(x["client"], x["state"]) for x in listed[login["event_id"]]["deliveries"]] == [("siem", "delivered")]
    assert listed[unmatched["event_id"]]["deliveries"] == []
    code, out, err = await afigrelay("events", "--setting-client", "^Orders", "--client", "slack-ops", "--config", config)
    assert code == 0 and change["event_id"] in out and "slack-ops delivered (2 attempts)" in out and login["event_id"] not in out

    code, out, err = await afigrelay("trace", change["event_id"], "--json", "--config", config)
    assert code == 0, err
    found = json.loads(out)
    assert found["event"]["body"]["UpdatedSettings"] == ["Timeout", "Colour"]  # as received: the hook narrowed what it sent
    assert json.loads(slack.requests[-1].body)["UpdatedSettings"] == ["Timeout"]
    (traced,) = found["deliveries"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in traced["attempt_log"]] == [(1, "retry", 503), (2, "delivered", 200)]
    assert traced["now"].startswith("delivered at ")
    code, out, err = await afigrelay("trace", delivery["id"], "--config", config)
    assert code == 0, err
    assert "fires now: /^Orders/ found in 'OrdersApi'; would send Timeout" in out
    assert f"hook 0 to slack-ops -> delivery {delivery['id']}" in out


async def test_a_dead_delivery_replayed_after_the_target_is_fixed_arrives_with_a_new_id(daemon_factory, receiver, tmp_path):
    answers = {"status": 404}
    receiver.responder = lambda r: web.Response(status=answers["status"], text="no such route")
    d = await daemon_factory(relay_config({"slack-ops": receiver}, all_routes_to("slack-ops")))
    config = str(d.config_path)
    status, accepted = await d.post("HealthStatusChanged", event("HealthStatusChanged"), AUTH)
    assert status == 200
    original = accepted["deliveries"][0]["id"]
    await wait_until(lambda: journal_state(d.config_path, original) == "dead", what="the delivery dead (HTTP 404)")

    answers["status"] = 200  # the target is fixed
    code, out, err = await afigrelay("replay", "--since", "24h", "--client", "slack-ops", "--dry-run", "--url", d.url, "--config", config)
    assert code == 0, err
    assert original in out and "would replay 1 delivery (dry run: nothing was sent)" in out
    conn = open_read_only(d.config_path.parent / "state" / "outbox.sqlite3")
    try:
        assert conn.execute("SELECT COUNT(*) FROM journal_deliveries").fetchone()[0] == 1, "a dry run stores nothing"
    finally:
        conn.close()

    code, out, err = await afigrelay("replay", "--since", "24h", "--client", "slack-ops", "--json", "--url", d.url, "--config", config)
    assert code == 0, err
    (replayed,) = json.loads(out)["replays"]
    assert replayed["replay_of"] == original and replayed["event_id"] == accepted["event_id"] and replayed["client"] == "slack-ops"
    new_id = replayed["new_id"]
    await wait_until(lambda: len(receiver.requests) == 2, what="the replay delivered")
    first, again = receiver.requests
    assert again.headers["X-Figrelay-Delivery"] == new_id != first.headers["X-Figrelay-Delivery"] == original
    assert again.body == first.body and again.path == first.path
    await wait_until(lambda: journal_state(d.config_path, new_id) == "delivered", what="the replay recorded as delivered")

    code, out, err = await afigrelay("trace", original, "--json", "--config", config)
    assert code == 0, err
    by_id = {x["delivery_id"]: x for x in json.loads(out)["deliveries"]}
    assert by_id[original]["state"] == "dead" and by_id[original]["replayed_as"] == [new_id]
    assert by_id[new_id]["replay_of"] == original and [a["outcome"] for a in by_id[new_id]["attempt_log"]] == ["delivered"]

    # the same delivery by id once more: a third request, with a third id
    code, out, err = await afigrelay("replay", original, "--url", d.url, "--config", config)
    assert code == 0 and "replaying 1 delivery" in out, (out, err)
    await wait_until(lambda: len(receiver.requests) == 3)
    assert receiver.requests[2].headers["X-Figrelay-Delivery"] not in (original, new_id)

    # bad input through the daemon: one line, exit status 2
    code, out, err = await afigrelay("replay", "0123456789abcdef0123456789abcdef", "--url", d.url, "--config", config)
    assert code == 2 and err.startswith("figrelay replay: unknown id '0123456789abcdef0123456789abcdef'") and err.count("\n") == 1

    # the endpoint itself: a JSON error that names the field
    status, answer, _ = await d.request("POST", "/-/replay", b'{"ids": "abc"}')
    assert (status, answer["error"]) == (400, "invalid_replay") and '"ids" must be a list' in answer["message"]
    status, answer, _ = await d.request("POST", "/-/replay", b"{not json")
    assert (status, answer["error"]) == (400, "invalid_replay") and answer["message"].startswith("the body is not JSON")

    # a client no longer in the configuration: refused, with the reason
    write_config(d.config_path, relay_config({"siem": receiver}, all_routes_to("siem")))
    status, reloaded, _ = await d.request("POST", "/-/reload")
    assert status == 200 and reloaded["applied"], reloaded
    code, out, err = await afigrelay("replay", original, "--url", d.url, "--config", config)
    assert code == 1, (out, err)
    assert f"not replayed: {original}: client 'slack-ops' is no longer in the configuration" in out


# --- docs/operations.md, "Where is my event?": the examples are this run's output -------------------

DOC = REPO / "docs" / "operations.md"
EXAMPLE = re.compile(r"(<!-- example from tests/test_e2e_journal\.py: (?P<name>[\w-]+) -->\n```text\n)(?P<body>.*?)(```\n)", re.S)
REGENERATE = "FIGRELAY_REGENERATE_DOCS=1 .venv/bin/python -m pytest tests/test_e2e_journal.py -k docs"


def normalised(text: str) -> str:
    """What stays the same from run to run: ids by order of appearance, times, durations and
    column widths left out."""
    ids: dict[str, str] = {}
    text = re.sub(r"\b[0-9a-f]{32}\b", lambda m: ids.setdefault(m.group(), f"<id{len(ids) + 1}>"), text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "<iso>", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", text)
    text = re.sub(r"\b\d+ ms\b", "<ms>", text)
    return re.sub(r"[ \t]+", " ", text)


async def test_docs_examples_show_what_the_commands_print(daemon_factory, receiver_factory):
    slack, siem = await receiver_factory(), await receiver_factory()
    answer = {"status": 200, "text": "ok"}
    slack.responder = lambda r: web.Response(status=503, text="busy") if len(slack.requests) == 1 else web.Response(**answer)
    clients = f"""  - name: slack-ops
    type: slack
    webhook_url: {slack.url}/services/T000/B000/XXXXslackpath
    coalesce: 0
    min_interval: 0
  - name: siem
    type: http
    base_uri: {siem.url}/fig/
"""
    hooks = """
  - {event: SettingValueChanged, client: slack-ops, client_regex: ^Orders}
  - {event: HealthStatusChanged, client: slack-ops}
  - {event: SecurityEvent, client: siem}
"""
    d = await daemon_factory(daemon_config(clients, hooks, f'  hashed_secret: "{HASHED}"'))
    config = str(d.config_path)
    shown: dict[str, str] = {}

    async def run(name: str, *args: str, url: bool = False) -> str:
        code, out, err = await afigrelay(*args, *(["--url", d.url] if url else []), "--config", config)
        assert code == 0, err
        shown[name] = f"$ figrelay {' '.join(args)} --config /etc/figrelay/config.yaml\n{out}"
        return out

    _, change = await d.post("SettingValueChanged", event("SettingValueChanged"), AUTH)
    _, login = await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    for accepted in (change, login):
        await wait_until(lambda a=accepted: journal_state(d.config_path, a["deliveries"][0]["id"]) == "delivered")
    await run("events", "events", "--since", "1h")
    await run("trace", "trace", change["event_id"])

    answer.update(status=404, text="no_service")  # the webhook removed
    alerts = [(await d.post("HealthStatusChanged", event("HealthStatusChanged"), AUTH))[1] for _ in range(2)]
    for accepted in alerts:
        await wait_until(lambda a=accepted: journal_state(d.config_path, a["deliveries"][0]["id"]) == "dead")
    answer.update(status=200, text="ok")  # and fixed
    await run("replay-dry-run", "replay", "--since", "24h", "--client", "slack-ops", "--dry-run", url=True)
    out = await run("replay", "replay", "--since", "24h", "--client", "slack-ops", "--outcome", "dead", url=True)
    assert "replaying 2 deliveries" in out
    await wait_until(lambda: len(slack.requests) == 6, what="the two replays delivered")

    doc = DOC.read_text()
    if os.environ.get("FIGRELAY_REGENERATE_DOCS"):
        DOC.write_text(EXAMPLE.sub(lambda m: m[1] + shown[m["name"]] + m[4], doc))
        return
    committed = {m["name"]: m["body"] for m in EXAMPLE.finditer(doc)}
    assert set(committed) == set(shown), f"docs/operations.md shows {sorted(committed)}; this test produces {sorted(shown)}"
    for name, text in shown.items():
        assert normalised(committed[name]) == normalised(text), f"docs/operations.md, example {name!r} is not what figrelay prints now:\n{text}\nrun {REGENERATE}"


async def test_with_the_journal_off_replay_says_so(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), extra="journal:\n  enabled: false\n"))
    status, _ = await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    assert status == 200
    await wait_until(lambda: len(receiver.requests) == 1)
    code, out, err = await afigrelay("replay", "--since", "1h", "--url", d.url, "--config", str(d.config_path))
    assert code == 1 and err == "figrelay replay: replay selects from the event journal, and journal.enabled is false\n"
    code, out, err = await afigrelay("events", "--config", str(d.config_path))
    assert (code, out) == (0, "no events in the journal\n"), err
    assert err == f"note: journal.enabled is false in {d.config_path}: figrelay records no new events\n"
