"""``figrelay events``, ``trace`` and ``replay`` as a user runs them, on a journal written through
journal.py: their output, their JSON, and one line with exit status 2 for bad input."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from journal_helpers import JournalWriter, new_store, write_config

BODY = b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Timeout","Colour"],"Username":"admin","Link":null,"ChangeMessage":"m","IsTest":false}'


def figrelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "figrelay", *args], capture_output=True, text=True, timeout=60, env=dict(os.environ))


@pytest.fixture
async def journal(tmp_path):
    """A configuration and its store, with a delivered, a retried and a dead delivery."""
    store = await new_store(tmp_path)
    config = str(write_config(tmp_path))
    writer = JournalWriter(store)
    now = time.time()
    event_id, (done, dead) = writer.event(now - 120, body=BODY, to=[("slack-ops", 0), ("siem", 1)])
    writer.attempt(done, 1, now - 119, "retry", 503, "HTTP 503: try later", duration=0.05)
    writer.attempt(done, 2, now - 110, "delivered", 200, "HTTP 200")
    writer.attempt(dead, 1, now - 119, "dead", 404, "HTTP 404: no route /fig/SettingValueChanged")
    writer.outbox_row(dead, "siem", "SettingValueChanged", BODY, now - 120, state="dead", attempts=1, last_error="HTTP 404", event_id=event_id)
    security, _ = writer.event(now - 60, route="SecurityEvent", setting_client=None, to=[])
    writer.close()
    return {"config": config, "event": event_id, "done": done, "dead": dead, "security": security, "store": store}


def test_events_lists_newest_first_with_each_deliverys_outcome(journal):
    result = figrelay("events", "--since", "1h", "--config", journal["config"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["RECEIVED", "EVENT", "ID", "EVENT", "SETTING", "CLIENT", "DELIVERIES"]
    assert journal["security"] in lines[1] and "no hook matched" in lines[1]
    assert journal["event"] in lines[2] and "OrdersApi" in lines[2]
    assert "slack-ops delivered (2 attempts), siem dead (1 attempt)" in lines[2]
    assert lines[-1] == "2 events, newest first"


def test_events_json_and_filters(journal):
    result = figrelay("events", "--json", "--client", "siem", "--outcome", "dead", "--setting-client", "^Orders", "--config", journal["config"])
    assert result.returncode == 0, result.stderr
    page = json.loads(result.stdout)
    (event,) = page["events"]
    assert event["event_id"] == journal["event"] and event["event"] == "SettingValueChanged" and event["setting_client"] == "OrdersApi"
    assert [(d["client"], d["state"], d["attempts"]) for d in event["deliveries"]] == [("slack-ops", "delivered", 2), ("siem", "dead", 1)]
    assert event["received"].endswith("Z") and page["more"] is False
    result = figrelay("events", "--json", "--event", "SecurityEvent", "--until", "now", "--config", journal["config"])
    assert [e["event_id"] for e in json.loads(result.stdout)["events"]] == [journal["security"]]
    result = figrelay("events", "--client", "nobody", "--config", journal["config"])
    assert (result.returncode, result.stdout) == (0, "no events match\n")


def test_trace_shows_hooks_attempts_and_where_each_delivery_is(journal):
    result = figrelay("trace", journal["done"][:10], "--config", journal["config"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"event {journal['event']} (of delivery {journal['done']}): SettingValueChanged for OrdersApi\n")
    assert "  hook 0 to slack-ops -> delivery " + journal["done"] in out
    assert "    fires now: /^Orders/ found in 'OrdersApi'; would send Timeout" in out
    assert "    this hook is no longer in the configuration; hook 1 is now SecurityEvent to siem" in out
    attempt_lines = [line.split() for line in out.splitlines() if line.startswith("  1 ") or line.startswith("  2 ")]
    assert [(line[0], line[5], line[6]) for line in attempt_lines] == [("1", "retry", "503"), ("2", "delivered", "200"), ("1", "dead", "404")]
    assert "  now: delivered at " in out
    assert "  now: dead letter since " in out and f"`figrelay deliveries retry {journal['dead']}` or `figrelay replay {journal['dead']}`" in out


def test_trace_json(journal):
    result = figrelay("trace", journal["event"], "--json", "--config", journal["config"])
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["event"]["body"]["UpdatedSettings"] == ["Timeout", "Colour"] and found["delivery_asked"] is None
    done, dead = found["deliveries"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in done["attempt_log"]] == [(1, "retry", 503), (2, "delivered", 200)]
    assert done["outbox"] is None and dead["outbox"]["state"] == "dead"
    assert [(h["hook"], h["configured"], h["fires"]) for h in found["hooks"]] == [(0, True, True), (1, False, None)]


def test_the_commands_leave_the_store_unchanged(journal):
    def version() -> tuple[int, int]:
        conn = sqlite3.connect(journal["store"])
        try:
            return conn.execute("SELECT COUNT(*) FROM journal_events").fetchone()[0], conn.execute("PRAGMA schema_version").fetchone()[0]
        finally:
            conn.close()

    before = (version(), journal["store"].stat().st_mtime_ns)
    assert figrelay("events", "--config", journal["config"]).returncode == 0
    assert figrelay("trace", journal["event"], "--config", journal["config"]).returncode == 0
    assert (version(), journal["store"].stat().st_mtime_ns) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["events", "--since", "yesterday"], "figrelay events: --since 'yesterday' is not a time: give a duration ago (30m, 1h, 2d, 1h30m) or an ISO 8601 time"),
        (["events", "--until", "2025-13-01"], "figrelay events: --until '2025-13-01' is not a time"),
        (["events", "--since", "1h", "--until", "2h"], "figrelay events: the time window ends before it starts"),
        (["events", "--setting-client", "(Orders"], "figrelay events: the setting-client regex '(Orders' does not compile: missing )"),
        (["events", "--event", "SettingChanged"], "figrelay events: unknown event type 'SettingChanged'; did you mean 'SettingValueChanged'?"),
        (["events", "--outcome", "failed"], "figrelay events: unknown outcome 'failed'"),
        (["events", "--limit", "0"], "figrelay events: the limit must be 1 to 100000, got 0"),
        (["events", "--limit", "many"], "figrelay events: argument --limit: invalid int value: 'many'"),
        (["trace", "0123456789abcdef0123456789abcdef"], "figrelay trace: unknown id '0123456789abcdef0123456789abcdef': no event or delivery in the journal has it"),
        (["trace", "../etc"], "figrelay trace: '../etc' is not an id"),
        (["trace"], "figrelay trace: the following arguments are required: ID"),
        (["replay", "--since", "a while"], "figrelay replay: --since 'a while' is not a time"),
        (["replay", "--since", "1h", "--event", "Security"], "figrelay replay: unknown event type 'Security'; did you mean 'SecurityEvent'?"),
        (["replay", "--since", "1h", "--outcome", "pending"], "figrelay replay: --outcome 'pending': only delivered or dead deliveries are replayed"),
        (["replay"], "figrelay replay: nothing to replay: give delivery or event ids (`figrelay events` lists them), or --since"),
        (["replay", "abc", "--since", "1h"], "figrelay replay: give delivery or event ids, or --since (and --until), not both"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(journal, args, message):
    result = figrelay(*args, "--config", journal["config"])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_no_store_or_no_journal_says_so(tmp_path):
    config = str(write_config(tmp_path))
    result = figrelay("events", "--config", config)
    assert result.returncode == 1 and "figrelay events: no store at" in result.stderr and "has figrelay run with this configuration" in result.stderr
    (tmp_path / "state").mkdir()
    conn = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3")
    conn.execute("CREATE TABLE deliveries (id TEXT)")
    conn.close()
    result = figrelay("trace", "0" * 32, "--config", config)
    assert result.returncode == 1 and "holds no event journal (no table journal_events)" in result.stderr


def test_replay_without_a_daemon_says_it_cannot_reach_it(journal):
    result = figrelay("replay", journal["done"], "--url", "http://127.0.0.1:9", "--config", journal["config"])
    assert result.returncode == 1 and "figrelay replay: cannot reach figrelay at http://127.0.0.1:9" in result.stderr


def test_help_has_examples():
    for command in ("events", "trace", "replay"):
        result = figrelay(command, "--help")
        assert result.returncode == 0 and "examples:\n  figrelay " + command in result.stdout
