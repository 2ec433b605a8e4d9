"""Running figrelay in production: systemd notify and socket activation, health and metrics,
the reload endpoint, JSON logs, and the operator's commands, all against a real daemon."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from conftest import REPO, Daemon, event, wait_until, write_config
from test_e2e import AUTH, HASHED, SECRET, all_routes_to, daemon_config, outbox_rows, relay_config

PLAIN = f"  secret: {SECRET}"


def figrelay(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "figrelay", *args], input=stdin.decode() if stdin else None, capture_output=True, text=True,
        timeout=60, env={**os.environ, **(env or {})},
    )


async def afigrelay(*args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "figrelay", *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode or 0, out.decode(), err.decode()


# --- systemd ------------------------------------------------------------------------------------


class NotifySocket:
    """A real unix datagram socket standing in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.path = path
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def seen(self, field: str) -> bool:
        return any(field in m.split("\n") for m in self.drain())


async def test_sd_notify_ready_reloading_watchdog_stopping(daemon_factory, receiver, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem")), env=env)
    await wait_until(lambda: notify.seen("READY=1"))
    ready = next(m for m in notify.messages if "READY=1" in m)
    assert "STATUS=serving" in ready and "1 client," in ready
    await wait_until(lambda: sum(m == "WATCHDOG=1" for m in notify.drain()) >= 2, what="watchdog pings every WatchdogSec/2")

    notify.messages.clear()
    d.signal(signal.SIGHUP)
    await wait_until(lambda: notify.seen("READY=1"))
    fields = [f for m in notify.messages for f in m.split("\n")]
    assert fields.index("RELOADING=1") < fields.index("READY=1")
    assert any(f.startswith("MONOTONIC_USEC=") for f in fields)

    assert await d.stop() == 0
    assert notify.seen("STOPPING=1")


async def test_socket_activation_uses_the_inherited_socket(receiver, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = write_config(tmp_path / "figrelay.yaml", relay_config({"siem": receiver}, all_routes_to("siem"), intake=PLAIN))
    # what systemd does: the socket on fd 3, LISTEN_PID = the service's own pid, then exec
    launcher = (
        "import os, sys; os.dup2(int(sys.argv[1]), 3); os.set_inheritable(3, True); "
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
        "os.execv(sys.executable, [sys.executable, '-m', 'figrelay', 'run', '--config', sys.argv[2]])"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", launcher, str(listener.fileno()), str(config), pass_fds=(listener.fileno(),),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    d = Daemon(config)
    d.proc = proc
    d._reader = asyncio.get_running_loop().create_task(d._read())
    try:
        await d.wait_for_log("socket activation")
        await d.wait_for_log("ready in")
        listener.close()  # only the daemon holds it now
        d.url = f"http://127.0.0.1:{port}"
        status, _ = await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
        assert status == 200
        await wait_until(lambda: len(receiver.requests) == 1)
        assert await d.stop() == 0
    finally:
        await d.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    venv_figrelay = Path(sys.executable).with_name("figrelay")
    for unit in ("figrelay.service", "figrelay.socket"):
        text = (REPO / "systemd" / unit).read_text().replace("/opt/figrelay/venv/bin/figrelay", str(venv_figrelay))
        (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "figrelay.service"), str(tmp_path / "figrelay.socket")],
        capture_output=True, text=True, timeout=60,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "figrelay" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# --- health, metrics, reload --------------------------------------------------------------------


async def test_health_readiness_and_metrics(daemon_factory, receiver_factory):
    good, bad = await receiver_factory(), await receiver_factory()
    bad.responder = lambda r: web.Response(status=400, text="nope")
    d = await daemon_factory(relay_config({"good": good, "bad": bad}, all_routes_to("good") + "\n" + all_routes_to("bad"), intake=PLAIN))
    assert (await d.request("GET", "/healthz"))[0] == 200
    status, body, _ = await d.request("GET", "/readyz")
    assert status == 200 and body["outbox_writable"] and body["config_loaded"] and body["listening"]

    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await d.post("SecurityEvent", b"{}", AUTH)
    await d.post("SecurityEvent", event("SecurityEvent"), {"Authorization": "Secret wrong"})
    await wait_until(lambda: len(good.requests) == 1 and len(bad.requests) == 1)
    await d.wait_for_log("failed for good")
    status, text, headers = await d.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    expected = [
        'figrelay_events_received_total{event="SecurityEvent",outcome="accepted"} 1.0',
        'figrelay_events_received_total{event="SecurityEvent",outcome="invalid"} 1.0',
        'figrelay_events_received_total{event="SecurityEvent",outcome="unauthorized"} 1.0',
        'figrelay_hook_matches_total{client="good",event="SecurityEvent"} 1.0',
        'figrelay_deliveries_total{client="good",outcome="delivered"} 1.0',
        'figrelay_deliveries_total{client="bad",outcome="dead"} 1.0',
        'figrelay_outbox_dead{client="bad"} 1.0',
        'figrelay_outbox_pending{client="good"} 0.0',
        "figrelay_config_last_reload_successful 1.0",
        "figrelay_sessions_tracked 0.0",
        "figrelay_plugin_load_failures 0.0",
        'figrelay_delivery_latency_seconds_bucket{client="good",le="86400.0"} 1.0',
    ]
    for line in expected:
        assert line in text, line
    assert "OrdersApi" not in text, "setting client names are unbounded: never a label"


async def test_reload_endpoint_says_whether_it_applied(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), intake=PLAIN))
    status, body, _ = await d.request("POST", "/-/reload")
    assert status == 200 and body["applied"] is True
    write_config(d.config_path, relay_config({"siem": receiver}, "  - {event: SecurityEvnt, client: siem}", intake=PLAIN))
    status, body, _ = await d.request("POST", "/-/reload")
    assert status == 422 and body["applied"] is False
    assert any("unknown event 'SecurityEvnt'" in p for p in body["problems"])
    metrics = (await d.request("GET", "/metrics"))[1]
    assert "figrelay_config_last_reload_successful 0.0" in metrics
    assert 'figrelay_config_reloads_total{result="rejected"}' in metrics


async def test_json_logs(daemon_factory, receiver, tmp_path):
    config = write_config(tmp_path / "json.yaml", relay_config({"siem": receiver}, all_routes_to("siem"), intake=PLAIN))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "figrelay", "run", "--config", str(config), "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    d = Daemon(config)
    d.proc = proc
    d._reader = asyncio.get_running_loop().create_task(d._read())
    try:
        m = await d.wait_for_log(r"listening on (http://[0-9.:]+)")
        d.url = m.group(1)
        await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
        await d.wait_for_log("delivered")
        assert await d.stop() == 0
        entries = [json.loads(line) for line in d.lines if line.strip()]
        accepted = next(e for e in entries if e["message"].startswith("accepted SecurityEvent"))
        delivered = next(e for e in entries if "delivered" in e["message"])
        assert accepted["level"] == "info" and accepted["logger"] == "figrelay.intake" and accepted["time"].endswith("Z")
        delivery_id = accepted["message"].rsplit("delivery ", 1)[1].split()[0]
        assert delivery_id in delivered["message"], "a delivery id ties the two lines together"
        # and the ids are fields of their own, for a log system to filter on
        assert accepted["event_id"] == delivered["event_id"] and accepted["route"] == "SecurityEvent"
        assert delivered["delivery_id"] == delivery_id and delivered["client"] == "siem"
        assert delivered["attempt"] == 1 and delivered["outcome"] == "delivered"
    finally:
        await d.close()


# --- operator commands --------------------------------------------------------------------------


async def test_test_command_sends_figs_seven_test_events(receiver_factory, tmp_path):
    good, bad = await receiver_factory(), await receiver_factory()
    bad.responder = lambda r: web.Response(status=503, headers={"Retry-After": "30"}) if r.path.endswith("Event") else None
    config = write_config(tmp_path / "figrelay.yaml", relay_config({"good": good, "bad": bad}, all_routes_to("good"), intake=PLAIN))
    code, out, err = await afigrelay("test", "good", "--config", str(config))
    assert code == 0, err
    assert [r.path for r in good.requests] == [f"/fig/{r}" for r in (
        "ClientStatusChanged", "SettingValueChanged", "NewClientRegistration", "UpdatedClientRegistration",
        "MinRunSessions", "HealthStatusChanged", "SecurityEvent")]
    assert all(r.json["IsTest"] is True for r in good.requests)
    assert "EVENT" in out and "RESULT" in out and "TIME" in out and out.count(" ok ") == 7 and "all delivered" in out

    code, out, _ = await afigrelay("test", "bad", "--config", str(config))
    assert code == 1
    assert "SecurityEvent" in out and "retryable" in out and "HTTP 503" in out and "Retry-After 30s" in out

    code, _, err = await afigrelay("test", "nosuch", "--config", str(config))
    assert code == 2 and "no client is named 'nosuch'" in err and "good, bad" in err


async def test_send_command_injects_into_a_running_daemon(daemon_factory, receiver, tmp_path):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), intake=PLAIN))
    body = event("SettingValueChanged", ChangeMessage="sent by figrelay send")
    (tmp_path / "event.json").write_bytes(body)
    code, out, err = await afigrelay("send", "SettingValueChanged", str(tmp_path / "event.json"), "--url", d.url, "--secret", SECRET)
    assert code == 0, err
    assert "HTTP 200" in out and '"accepted"' in out
    await wait_until(lambda: len(receiver.requests) == 1)
    assert receiver.requests[0].json["ChangeMessage"] == "sent by figrelay send"

    code, out, _ = await afigrelay("send", "SettingValueChanged", "-", "--url", d.url, "--secret", "wrong", stdin=body)
    assert code == 1 and "HTTP 401" in out
    code, _, err = await afigrelay("send", "SettingValueChanged", "-", "--url", d.url, stdin=b'{"UpdatedSettings": []}')
    assert code == 2 and "ClientName: is required" in err
    code, _, err = await afigrelay("send", "SettingValueChanged", "-", "--url", "http://127.0.0.1:1", "--secret", SECRET, stdin=body)
    assert code == 1 and "cannot reach figrelay" in err


def test_matches_command(tmp_path):
    config = write_config(tmp_path / "figrelay.yaml", """
        listen: 127.0.0.1:0
        clients:
          - {name: a, type: log}
        hooks:
          - {event: SettingValueChanged, client: a, client_regex: ^Orders, setting_regex: Timeout$}
          - {event: SecurityEvent, client: a}
          - {event: HealthStatusChanged, client: a, client_regex: ^Payments}
    """)
    result = figrelay("matches", "--client-name", "OrdersApi", "--config", str(config))
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert any("SettingValueChanged" in l and "yes" in l for l in lines)
    assert any("HealthStatusChanged" in l and " no " in l and "/^Payments/ is not found in 'OrdersApi'" in l for l in lines)
    assert "2 of 3 hooks would fire" in result.stdout
    result = figrelay("matches", "--client-name", "OrdersApi", "--setting", "RetryCount", "--config", str(config))
    assert "no setting matches /Timeout$/" in result.stdout and result.returncode == 1
    result = figrelay("matches", "--client-name", "OrdersApi", "--setting", "Timeout", "--setting", "HttpTimeout", "--config", str(config))
    assert "would send Timeout, HttpTimeout" in result.stdout and result.returncode == 0



def test_matches_command_keeps_the_regex_time_limit(tmp_path):
    config = write_config(tmp_path / "figrelay.yaml", """
        listen: 127.0.0.1:0
        clients:
          - {name: a, type: log}
        hooks:
          - {event: ClientStatusChanged, client: a, client_regex: ^(a|aa)+$}
          - {event: ClientStatusChanged, client: a, client_regex: ^a}
    """)
    result = figrelay("matches", "--client-name", "a" * 60 + "!", "--config", str(config))
    assert "/^(a|aa)+$/ took longer than 5ms (intake.regex_timeout): the daemon would keep this event as a dead letter" in result.stdout
    assert "1 of 2 hooks would fire" in result.stdout

async def test_deliveries_list_retry_and_purge_against_a_running_daemon(daemon_factory, receiver):
    answers = {"status": 400}
    receiver.responder = lambda r: web.Response(status=answers["status"], text="rejected")
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), intake=PLAIN))
    for name in ("alice", "bob"):
        await d.post("SecurityEvent", event("SecurityEvent", Username=name), AUTH)
    await wait_until(lambda: len(outbox_rows(d.config_path.parent, "dead")) == 2)
    config = str(d.config_path)

    code, out, _ = await afigrelay("deliveries", "--config", config)
    assert code == 0 and out.count("dead") >= 2 and "HTTP 400: rejected" in out and "0 pending, 2 dead" in out
    alice, bob = (row[0] for row in sorted(outbox_rows(d.config_path.parent, "dead"), key=lambda r: r[0]))

    answers["status"] = 200
    code, out, _ = await afigrelay("deliveries", "retry", alice, "--config", config)
    assert code == 0 and "1 dead letter is pending again; a running figrelay picks it up" in out
    await wait_until(lambda: len(receiver.requests) == 3, what="the running daemon delivering the revived letter")
    await wait_until(lambda: [row[0] for row in outbox_rows(d.config_path.parent)] == [bob], what="the delivered letter gone from the outbox")

    # ids that are not dead letters: each says why nothing was done
    code, out, _ = await afigrelay("deliveries", "retry", alice, "not-an-id", "--config", config)
    assert code == 1 and "pending again" not in out
    assert f"{alice}: not in the outbox: it was delivered already, or purged" in out
    assert "not-an-id: unknown id: a delivery id is 32 hex digits" in out
    code, out, _ = await afigrelay("deliveries", "purge", alice, "--config", config)
    assert code == 1 and f"{alice}: not in the outbox" in out

    # --client NAME with nothing to do says so, and whether the client is configured
    code, out, _ = await afigrelay("deliveries", "purge", "--client", "siemm", "--config", config)
    assert code == 1
    assert "client 'siemm' is not in the configuration and has no deliveries in the outbox: nothing to purge" in out
    assert "(configured clients: siem); did you mean 'siem'?" in out

    code, out, _ = await afigrelay("deliveries", "purge", "--all-dead", "--config", config)
    assert code == 0 and "1 dead letter deleted" in out
    assert outbox_rows(d.config_path.parent) == []
    code, out, _ = await afigrelay("deliveries", "purge", "--client", "siem", "--config", config)
    assert code == 1 and "client 'siem' has no dead letters: nothing to purge" in out
    code, out, _ = await afigrelay("deliveries", "retry", "--all-dead", "--config", config)
    assert code == 1 and "no dead letters: nothing to retry" in out
    code, _, err = await afigrelay("deliveries", "retry", "--config", config)
    assert code == 2 and "--all-dead" in err


def test_every_command_has_help_with_examples():
    from figrelay.cli import build_parser

    [commands] = [a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"run", "check", "plugins", "test", "send", "matches", "deliveries"} <= set(commands)
    for command in commands:  # every command the parser has, so a new one cannot come without examples
        result = figrelay(command, "--help")
        assert result.returncode == 0 and "usage: figrelay" in result.stdout
        examples = result.stdout.split("examples:", 1)
        assert len(examples) == 2 and f"figrelay {command}" in examples[1], f"`figrelay {command} --help` shows no examples"


# --- /metrics content negotiation ----------------------------------------------------------------


async def test_metrics_negotiate_the_format_and_keep_the_whole_content_type(daemon_factory, receiver):
    d = await daemon_factory(relay_config({"siem": receiver}, all_routes_to("siem"), intake=PLAIN))
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(receiver.requests) == 1)

    status, text, headers = await d.request("GET", "/metrics", headers={"Accept": "text/plain"})
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in text and 'figrelay_events_received_total{event="SecurityEvent",outcome="accepted"} 1.0' in text

    # what Prometheus itself sends: OpenMetrics first
    prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    for accept in ("application/openmetrics-text; version=1.0.0", prometheus):
        status, text, headers = await d.request("GET", "/metrics", headers={"Accept": accept})
        assert status == 200
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0; charset=utf-8"), headers["Content-Type"]
        assert text.endswith("# EOF\n"), text[-200:]
        assert 'figrelay_events_received_total{event="SecurityEvent",outcome="accepted"} 1.0' in text


# --- operator commands from a shell, without the service's credentials --------------------------


async def test_operator_commands_need_no_credentials_they_do_not_use(daemon_factory, receiver, tmp_path, monkeypatch):
    """The layout docs/operations.md recommends: secrets are systemd credentials read through
    ${file:${CREDENTIALS_DIRECTORY}/...}. The daemon (the service) has CREDENTIALS_DIRECTORY;
    an operator's shell does not."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("FIGRELAY_SECRET", raising=False)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "fig-secret").write_text(SECRET + "\n")
    (creds / "siem-secret").write_text("downstream-secret\n")
    sock = tmp_path / "intake.sock"
    clients = f"""  - name: siem
    type: http
    base_uri: {receiver.url}/fig
    secret: "${{file:${{CREDENTIALS_DIRECTORY}}/siem-secret}}"
"""
    text = daemon_config(clients, "  - {event: SecurityEvent, client: siem}", '  secret: "${file:${CREDENTIALS_DIRECTORY}/fig-secret}"')
    d = await daemon_factory(text.replace("listen: 127.0.0.1:0", f"listen: unix:{sock}"), env={"CREDENTIALS_DIRECTORY": str(creds)}, start=False)
    await d.start(expect_ready=False)
    await d.wait_for_log("ready in")
    config = str(d.config_path)
    lines = d.config_path.read_text().splitlines()
    intake_line = 1 + next(i for i, l in enumerate(lines) if "fig-secret" in l)
    siem_line = 1 + next(i for i, l in enumerate(lines) if "siem-secret" in l)
    receiver.responder = lambda r: web.Response(status=400, text="rejected")
    (tmp_path / "login.json").write_bytes(event("SecurityEvent"))

    # send: the daemon requires the intake secret, which only the service can read
    code, _, err = await afigrelay("send", "SecurityEvent", str(tmp_path / "login.json"), "--config", config)
    assert code == 2 and "the daemon requires the intake secret, but it cannot be read here" in err
    assert f"{config}:{intake_line}: intake.secret: ${{file:${{CREDENTIALS_DIRECTORY}}/fig-secret}} is a systemd credential" in err
    assert "--secret or $FIGRELAY_SECRET" in err
    code, out, err = await afigrelay("send", "SecurityEvent", str(tmp_path / "login.json"), "--config", config, env={"FIGRELAY_SECRET": SECRET})
    assert code == 0 and "HTTP 200" in out, err
    await wait_until(lambda: len(outbox_rows(d.config_path.parent, "dead")) == 1, what="the refused delivery kept as a dead letter")

    # deliveries and matches read state_dir, hooks and client names: no credential
    code, out, err = await afigrelay("deliveries", "--config", config)
    assert code == 0 and "HTTP 400: rejected" in out and "0 pending, 1 dead" in out, err
    code, out, err = await afigrelay("matches", "--client-name", "OrdersApi", "--config", config)
    assert code == 0 and "1 of 1 hook would fire" in out, err
    receiver.responder = None
    code, out, err = await afigrelay("deliveries", "retry", "--client", "siem", "--config", config)
    assert code == 0 and "1 dead letter is pending again" in out, err
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [], what="the retried letter delivered by the daemon")

    # check, test and run do use every credential: each names the missing value with file and line
    for args in (("check", "--config", config), ("test", "siem", "--config", config), ("run", "--config", config)):
        code, _, err = await afigrelay(*args)
        assert code == 1, (args, err)
        assert f"{config}:{intake_line}: intake.secret: ${{file:${{CREDENTIALS_DIRECTORY}}/fig-secret}} is a systemd credential" in err, err
        assert f"{config}:{siem_line}: clients[0].secret: ${{file:${{CREDENTIALS_DIRECTORY}}/siem-secret}} is a systemd credential" in err
        assert "LoadCredential=siem-secret:/etc/figrelay/credentials/siem-secret" in err and "systemd-run --pipe" in err
    # ... and pass when the shell points CREDENTIALS_DIRECTORY at the credential files, as docs/operations.md shows
    code, out, err = await afigrelay("check", "--config", config, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert code == 0 and out.startswith("OK "), err


def test_the_documented_credentials_error_is_what_figrelay_says(tmp_path, monkeypatch):
    """docs/operations.md quotes the error for its own example configuration: keep it true."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    doc = (REPO / "docs" / "operations.md").read_text()
    example = re.search(r"## 2\. Configure.*?```yaml\n(.*?)```", doc, re.S)
    quoted = re.search(r"(?m)^/etc/figrelay/config\.yaml:\d+: clients\[0\]\.webhook_url: .*$", doc)
    assert example and quoted
    config = tmp_path / "config.yaml"
    config.write_text(example.group(1).replace('"$2a$11$..."', f'"{HASHED}"'))
    result = figrelay("check", "--config", str(config))
    expected = quoted.group(0).replace("/etc/figrelay/config.yaml", str(config))
    assert result.returncode == 1 and expected in [line.strip() for line in result.stderr.splitlines()], result.stderr


async def test_send_into_a_closed_pipe_ends_quietly(receiver, tmp_path):
    (tmp_path / "login.json").write_bytes(event("SecurityEvent"))
    read_end, write_end = os.pipe()
    os.close(read_end)  # `figrelay send ... | head` after head has gone: every write fails
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "figrelay", "send", "SecurityEvent", str(tmp_path / "login.json"), "--url", receiver.url,
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(write_end)
    assert len(receiver.requests) == 1
    assert err.decode() == "" and proc.returncode == 128 + signal.SIGPIPE
