"""End to end: a hook regex that backtracks for ever cannot stop the daemon.

Client and setting names come from whoever can post to Fig; a hook's pattern comes from the
operator. A pattern that backtracks catastrophically on one name must cost that one event a few
milliseconds, not freeze the intake for every event behind it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from test_operations import afigrelay

from conftest import event, wait_until
from test_e2e import AUTH, outbox_rows, relay_config

# Only a hang guard, so that a daemon without the time limit fails the test instead of running
# it for hours: with the limit, every answer comes in milliseconds.
HANG = 60


async def promptly(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, HANG)


def dead_bodies(daemon_dir) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(daemon_dir / "state" / "outbox.sqlite3")
    try:
        return {row[0]: json.loads(row[1]) for row in conn.execute("SELECT id, body FROM deliveries WHERE state = 'dead'")}
    finally:
        conn.close()


async def test_a_catastrophic_regex_leaves_a_dead_letter_and_the_daemon_serving(daemon_factory, receiver):
    hooks = """
  - {event: ClientStatusChanged, client: siem, client_regex: '^(a+)+$'}
  - {event: ClientStatusChanged, client: siem, client_regex: '^(a|aa)+$'}
  - {event: SettingValueChanged, client: siem, setting_regex: '(x+x+)+y'}
"""
    d = await daemon_factory(relay_config({"siem": receiver}, hooks))
    hostile = "a" * 40 + "!"

    # '^(a+)+$' is the pattern of the report: the engine itself answers it at once (no match);
    # '^(a|aa)+$' backtracks exponentially in any backtracking engine and runs out of time
    status, body = await promptly(d.post("ClientStatusChanged", event("ClientStatusChanged", ClientName=hostile), AUTH))
    assert status == 200 and len(body["deliveries"]) == 1
    dead_id = body["deliveries"][0]["id"]
    status, _, _ = await promptly(d.request("GET", "/healthz"))
    assert status == 200

    # a setting name that makes the setting regex backtrack: the whole event is kept, not narrowed
    status, body = await promptly(d.post("SettingValueChanged", event("SettingValueChanged", UpdatedSettings=["Timeout", "x" * 3000]), AUTH))
    assert status == 200 and len(body["deliveries"]) == 1
    setting_dead_id = body["deliveries"][0]["id"]

    # an ordinary event right behind them is matched and delivered as usual
    status, body = await promptly(d.post("ClientStatusChanged", event("ClientStatusChanged", ClientName="aaaa"), AUTH))
    assert status == 200 and len(body["deliveries"]) == 2
    await wait_until(lambda: len(receiver.requests) == 2, what="the ordinary event, once per matching hook")
    assert {r.json["ClientName"] for r in receiver.requests} == {"aaaa"}

    # the timed-out matches are dead letters that say what happened and what to do
    dead = {row[0]: row for row in outbox_rows(d.config_path.parent, "dead")}
    assert set(dead) == {dead_id, setting_dead_id}
    reason = dead[dead_id][5]
    assert reason.startswith("client_regex '^(a|aa)+$' took longer than 5ms on this event; matching was abandoned")
    assert f"figrelay deliveries retry {dead_id}" in reason and f"figrelay deliveries purge {dead_id}" in reason
    assert dead[setting_dead_id][5].startswith("setting_regex '(x+x+)+y' took longer than 5ms")
    bodies = dead_bodies(d.config_path.parent)
    assert bodies[dead_id]["ClientName"] == hostile
    assert bodies[setting_dead_id]["UpdatedSettings"] == ["Timeout", "x" * 3000]

    await d.wait_for_log(r"WARNING.*client_regex '\^\(a\|aa\)\+\$' took longer than 5ms")
    metrics = (await d.request("GET", "/metrics"))[1]
    assert 'figrelay_regex_timeouts_total{client="siem",regex="client_regex"} 1.0' in metrics
    assert 'figrelay_regex_timeouts_total{client="siem",regex="setting_regex"} 1.0' in metrics

    # the operator sees them, and decides: send one anyway, drop the other
    config = str(d.config_path)
    code, out, _ = await afigrelay("deliveries", "--state", "dead", "--config", config)
    assert code == 0 and dead_id in out and "client_regex '^(a|aa)+$' took longer than 5ms" in out and "0 pending, 2 dead" in out
    code, _, _ = await afigrelay("deliveries", "retry", dead_id, "--config", config)
    assert code == 0
    await wait_until(lambda: len(receiver.requests) == 3, what="the dead letter sent on request")
    assert receiver.requests[2].json["ClientName"] == hostile
    code, _, _ = await afigrelay("deliveries", "purge", setting_dead_id, "--config", config)
    assert code == 0
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [])
