"""The servers the bench loads: figrelay, and what it is compared with (a bare aiohttp server,
Prometheus Alertmanager, a script around Apprise), with the requests each is sent."""

from __future__ import annotations

import json
import re
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import aiohttp

from .intake import BASELINE
from .load import Request
from .support import REPO, Proc, figrelay_problem, files_mb, free_port, have_tool, log_message, log_time, logfmt_problem, memory_mb, wait_http

# --- what is sent -------------------------------------------------------------------------------

FIXTURES = REPO / "tests" / "fixtures" / "fig"


def _fixture(name: str, **fields: object) -> str:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    data.update(fields)
    return json.dumps(data, separators=(",", ":"))


SETTING = _fixture("SettingValueChanged", ClientName="{name}", ChangeMessage="Increase timeout for peak ({seq})")
"""One SettingValueChanged, each numbered (the fixture of tests/fixtures, as tests/conftest.py's event())."""
CONNECTED = _fixture("ClientStatusChanged.connected", ClientName="{name}", Hostname="host-{seq}")
"""One ClientStatusChanged Connected: each a new run session (its Hostname differs)."""

ALERT = json.dumps([{
    "labels": {"alertname": "SettingValueChanged", "client": "{name}", "change": "{seq}"},
    "annotations": {"summary": "{name} changed Timeout, RetryCount", "description": "Increase timeout for peak"},
    "generatorURL": "http://localhost:5050/",
}], separators=(",", ":"))
"""One alert with labels of its own: with ``group_by: ['...']``, a new alert group per request."""

WORDS = ("Orders", "Payments", "Billing", "Search", "Catalog", "Shipping", "Accounts", "Pricing", "Inventory", "Reports")


def hook_regex(i: int) -> str:
    """Hook ``i``'s client_regex: an exact name (``^Orders0042Api$``) or a prefix (``^Svc0043``)."""
    return f"^{WORDS[i // 50 % len(WORDS)]}{i:04d}Api$" if i % 2 == 0 else f"^Svc{i:04d}"


def pool_name(k: int) -> str:
    """Setting client ``k`` of the pool of 200: hook ``50k`` or ``50k + 1`` matches it, no other."""
    i = 50 * k + k % 2
    return f"{WORDS[i // 50 % len(WORDS)]}{i:04d}Api" if i % 2 == 0 else f"Svc{i:04d}-worker"


POOL = tuple(pool_name(k) for k in range(200))
ANY_POOL_NAME = r"^(?:[A-Z][a-z]+\d{4}Api$|Svc\d{4}-)"
"""Matches every name of the pool (and no hook_regex() matches what it matches but the pool's)."""


def comparison_hooks() -> list[str]:
    """10 hooks, of which ``^OrdersApi$`` matches the comparison's events (ClientName OrdersApi)."""
    return ["^OrdersApi$", *(hook_regex(i) for i in range(2, 11))]


def scale_hooks(count: int) -> list[str]:
    """``count`` hooks of which exactly one matches each name of POOL: with 10, nine that match
    none and one that matches them all; with more, one hook per name (hook_regex)."""
    if count <= 200:
        return [*(hook_regex(i) for i in range(2, count + 1)), ANY_POOL_NAME]
    return [hook_regex(i) for i in range(count)]


def setting_request(names: tuple[str, ...] = ("OrdersApi",)) -> Request:
    return Request("/SettingValueChanged", SETTING, names)


def sessions_request() -> Request:
    return Request("/ClientStatusChanged", CONNECTED, POOL)


# --- the receiver -------------------------------------------------------------------------------


class Receiver:
    """bench/receiver.py in a process of its own."""

    def __init__(self) -> None:
        self.proc = Proc("receiver", [sys.executable, str(Path(__file__).with_name("receiver.py"))])
        self.url = ""

    async def start(self) -> None:
        await self.proc.start()
        m, _ = await self.proc.wait_for(r"listening on (http://\S+)", timeout=30)
        self.url = m.group(1)

    async def reset(self, record: bool = False) -> None:
        async with aiohttp.ClientSession() as http, http.post(self.url + "/_reset" + ("?record=1" if record else "")) as resp:
            await resp.read()

    async def stats(self) -> dict[str, Any]:
        """As receiver.py's /_stats tells them."""
        async with aiohttp.ClientSession() as http, http.get(self.url + "/_stats") as resp:
            return dict(await resp.json())

    async def times(self) -> dict[str, float]:
        async with aiohttp.ClientSession() as http, http.get(self.url + "/_times") as resp:
            return dict(await resp.json())


# --- the servers --------------------------------------------------------------------------------


class Server:
    """A server under load: its process, URL, and the receiver source its deliveries count under."""

    name = "server"
    source: str | None = None
    """The receiver counts its deliveries under this; None: it delivers nothing."""

    def __init__(self) -> None:
        self.proc: Proc | None = None
        self.url = ""
        self.next_seq = 1
        """The number of its next request: each request it is sent differs (Alertmanager: a new alert)."""

    def numbers(self, count: int) -> int:
        """The first of ``count`` request numbers, taken."""
        first = self.next_seq
        self.next_seq += count
        return first

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        raise NotImplementedError

    def request(self, names: tuple[str, ...] = ("OrdersApi",)) -> Request:
        return setting_request(names)

    def rss_mb(self) -> float:
        return memory_mb(self.pid)[0]

    async def stop(self) -> int | None:
        return await self.proc.stop() if self.proc is not None else None


class Bare(Server):
    """bench/intake.py's baseline: an aiohttp server that parses the JSON and answers."""

    name = "bare aiohttp"

    async def start(self) -> None:
        self.proc = Proc(self.name, [sys.executable, "-c", BASELINE])
        await self.proc.start()
        m, _ = await self.proc.wait_for(r"listening on (http://\S+)", timeout=30)
        self.url = m.group(1)


RELAY_SCRIPT = textwrap.dedent(
    """
    # The ceiling of a relay built on aiohttp, as figrelay is: parse the event, answer, and forward
    # its body to the target from 16 sends in flight. Nothing is stored, matched, journaled or
    # logged: what is queued is lost with the process.
    import asyncio, json, sys
    import aiohttp
    from aiohttp import web

    async def main():
        queue = asyncio.Queue()
        http = aiohttp.ClientSession()

        async def handle(request):
            body = await request.read()
            json.loads(body)
            queue.put_nowait((request.match_info["route"], body))
            return web.json_response({"status": "accepted"})

        async def sender():
            while True:
                route, body = await queue.get()
                try:
                    async with http.post(sys.argv[1] + route, data=body, headers={"Content-Type": "application/json"}) as resp:
                        await resp.read()
                except aiohttp.ClientError:
                    pass

        senders = [asyncio.create_task(sender()) for _ in range(16)]
        app = web.Application()
        app.router.add_post("/{route}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print("listening on http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


class BareRelay(Server):
    """RELAY_SCRIPT, forwarding to the receiver: what figrelay's intake and sends cost in aiohttp
    alone, without durability, matching, the journal or logging."""

    name = "bare aiohttp relay"
    source = "relay"

    def __init__(self, receiver: str) -> None:
        super().__init__()
        self.target = receiver + "/relay/"

    async def start(self) -> None:
        self.proc = Proc(self.name, [sys.executable, "-c", RELAY_SCRIPT, self.target])
        await self.proc.start()
        m, _ = await self.proc.wait_for(r"listening on (http://\S+)", timeout=30)
        self.url = m.group(1)


APPRISE_SCRIPT = textwrap.dedent(
    """
    # "Just write a script": receive Fig's POST, notify through Apprise's json:// sender, answer.
    import asyncio, json, sys
    import apprise
    from aiohttp import web

    notifier = apprise.Apprise()
    notifier.add(sys.argv[1])

    async def handle(request):
        event = json.loads(await request.read())
        title = "%s changed %s" % (event.get("ClientName"), ", ".join(event.get("UpdatedSettings") or []))
        ok = await notifier.async_notify(title=title, body=json.dumps(event))
        return web.json_response({"status": "sent" if ok else "failed"}, status=200 if ok else 502)

    async def main():
        app = web.Application()
        app.router.add_post("/{route}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print("listening on http://127.0.0.1:%d" % site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


class AppriseScript(Server):
    """APPRISE_SCRIPT, notifying ``json://`` the receiver: it answers once the notification is sent."""

    name = "Apprise script"
    source = "apprise"

    def __init__(self, receiver: str) -> None:
        super().__init__()
        self.target = receiver.replace("http://", "json://", 1) + "/apprise/notify"

    async def start(self) -> None:
        self.proc = Proc(self.name, [sys.executable, "-c", APPRISE_SCRIPT, self.target])
        await self.proc.start()
        m, _ = await self.proc.wait_for(r"listening on (http://\S+)", timeout=60)
        self.url = m.group(1)


def alertmanager_binary() -> str | None:
    return have_tool("prometheus-alertmanager") or have_tool("alertmanager")


class Alertmanager(Server):
    """Prometheus Alertmanager: a webhook receiver to the bench's receiver, one group per alert,
    group_wait 0s; no cluster (a single instance)."""

    name = "Alertmanager"
    source = "alertmanager"

    def __init__(self, folder: Path, receiver: str) -> None:
        super().__init__()
        self.folder = folder
        self.receiver = receiver
        self.version = ""

    def request(self, names: tuple[str, ...] = ("OrdersApi",)) -> Request:
        return Request("/api/v2/alerts", ALERT, names)

    async def start(self) -> None:
        binary = alertmanager_binary()
        assert binary is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "alertmanager.yml"
        config.write_text(textwrap.dedent(
            f"""\
            route:
              receiver: bench
              group_by: ['...']
              group_wait: 0s
              group_interval: 1m
              repeat_interval: 24h
            receivers:
              - name: bench
                webhook_configs:
                  - url: {self.receiver}/alertmanager/alert
                    send_resolved: false
            """
        ))
        port = free_port()
        self.proc = Proc(self.name, [
            binary, f"--config.file={config}", f"--storage.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=", "--log.level=warn",
        ], problem=logfmt_problem)
        await self.proc.start()
        self.url = f"http://127.0.0.1:{port}"
        await wait_http(self.url + "/-/ready", self.proc)
        async with aiohttp.ClientSession() as http, http.get(self.url + "/api/v2/status") as resp:
            self.version = str((await resp.json()).get("versionInfo", {}).get("version", ""))


class Figrelay(Server):
    """``figrelay run`` on a configuration of its own: one ``http`` client to the receiver (its
    defaults otherwise), the hooks given (SettingValueChanged, each to that client), the rest of
    the settings figrelay's defaults (journal on)."""

    name = "figrelay"
    source = "figrelay"

    def __init__(self, folder: Path, receiver: str, hooks: list[str], *, log_level: str = "warning", label: str = "figrelay") -> None:
        super().__init__()
        self.folder = folder
        self.receiver = receiver
        self.hooks = hooks
        self.log_level = log_level
        self.label = label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "figrelay.yaml"
        self.state = folder / "state"
        self._variant = 0
        self.logs: list[Proc] = []
        """Every process run on this configuration (a restart makes a new one)."""

    def config_text(self, variant: int = 0) -> str:
        """The configuration; ``variant`` changes the regex of a hook that matches no name of the
        POOL (nor OrdersApi) to another that matches none either: a real change for a reload to apply."""
        hooks = list(self.hooks)
        if variant:
            names = (*POOL, "OrdersApi")
            spare = next(i for i, regex in enumerate(hooks) if not any(re.search(regex, name) for name in names))
            hooks[spare] = f"^NoSuchClient{variant}$"
        lines = [
            f"listen: 127.0.0.1:{self.port}",
            "state_dir: ./state",
            "clients:",
            f'  - {{name: receiver, type: http, base_uri: "{self.receiver}/figrelay/"}}',
            "hooks:",
            *(f"  - {{event: SettingValueChanged, client: receiver, client_regex: '{regex}'}}" for regex in hooks),
        ]
        return "\n".join(lines) + "\n"

    def write_config(self, variant: int = 0) -> None:
        """Written beside and renamed into place, as the docs ask."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text(self.config_text(variant))
        tmp.replace(self.config)

    async def start(self, *, log_level: str | None = None) -> None:
        if not self.config.exists():
            self.write_config()
        level = log_level or self.log_level
        self.proc = Proc(
            f"{self.label} ({len(self.logs) + 1})" if self.logs else self.label,
            [sys.executable, "-m", "figrelay", "run", "--config", str(self.config), "--log-level", level, "--log-format", "json"],
            cwd=self.folder, problem=figrelay_problem,
            # a change of the file is applied only after an hour of quiet: the bench reloads with SIGHUP
            env={"FIGRELAY_RELOAD_QUIET_PERIOD": "1h"},
        )
        self.logs.append(self.proc)
        await self.proc.start()
        await wait_http(self.url + "/readyz", self.proc)

    async def startup(self) -> tuple[float, float, int]:
        """At log level info: (seconds from the process's start to its "ready in" line, the seconds
        that line tells, the sessions it tells)."""
        assert self.proc is not None
        m, line = await self.proc.wait_for(r'ready in ([\d.]+)s: .*; (\d+) sessions? tracked', timeout=120)
        return log_time(line) - self.proc.spawned_at, float(m.group(1)), int(m.group(2))

    async def reload(self, timeout: float = 60) -> tuple[float, str]:
        """Rewrite the file with a change, SIGHUP, and wait for the "reload (SIGHUP)" line (log level
        info): (seconds from the signal to the line, the line)."""
        assert self.proc is not None
        self._variant = self._variant % 2 + 1
        self.write_config(self._variant)
        mark = self.proc.seen
        sent = time.time()
        self.proc.signal(signal.SIGHUP)
        _, line = await self.proc.wait_for(r"reload \(SIGHUP\) (applied|rejected)", timeout=timeout, since=mark)
        return log_time(line) - sent, log_message(line)

    async def metrics(self) -> dict[str, float]:
        """Each metric of /metrics summed over its labels."""
        async with aiohttp.ClientSession() as http, http.get(self.url + "/metrics") as resp:
            text = await resp.text()
        out: dict[str, float] = {}
        for m in re.finditer(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? (\S+)$", text, re.M):
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
            except ValueError:
                continue
        return out

    def store_mb(self) -> float:
        """outbox.sqlite3 with its -wal (and -shm)."""
        db = self.state / "outbox.sqlite3"
        return files_mb(db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
