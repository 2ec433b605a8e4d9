"""Reloading under hostile conditions: files caught half-written or empty, and restored files.

The unit tests drive ``wait_for_quiet`` with a fake clock and ``ConfigHolder`` directly; the
end-to-end tests write a real daemon's file the way editors and deploy tools do, and watch its log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from test_operations import afigrelay

from conftest import event, wait_until, write_config
from figrelay.config import DEFAULT_LISTEN
from figrelay.plugins import PluginRegistry, load_plugins
from figrelay.reload import ConfigHolder, file_state, wait_for_quiet
from test_e2e import AUTH, outbox_rows, relay_config

RESULT = re.compile(r"reload \(file changed\) (applied|rejected)")


# --- wait_for_quiet, on a fake clock ------------------------------------------------------------


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def writer(script: dict[float, str]) -> tuple[FakeTime, object]:
    """A file whose state changes at the given fake times: ``read`` returns the latest one."""
    time = FakeTime()

    def read() -> str:
        return [state for at, state in sorted(script.items()) if at <= time.now][-1]

    return time, read


async def test_wait_for_quiet_returns_once_the_state_stopped_changing() -> None:
    time, read = writer({0.0: "empty", 0.3: "half", 0.9: "whole"})
    seen: list[str] = []
    state = await wait_for_quiet(read, 1.0, step=0.1, clock=time.clock, sleep=time.sleep, changed=seen.append)
    assert state == "whole"
    assert seen == ["empty", "half", "whole"]
    assert time.now >= 0.9 + 1.0  # not before the last change had a full quiet period behind it


async def test_wait_for_quiet_outlasts_a_slow_writer() -> None:
    # ten writes, 0.6 s apart: each one restarts the quiet period, so none is read as final
    time, read = writer({i * 0.6: f"part {i}" for i in range(10)})
    seen: list[str] = []
    state = await wait_for_quiet(read, 1.0, step=0.1, clock=time.clock, sleep=time.sleep, changed=seen.append)
    assert state == "part 9"
    assert seen == [f"part {i}" for i in range(10)]


async def test_wait_for_quiet_with_a_file_already_settled_waits_one_quiet_period() -> None:
    time, read = writer({0.0: "whole"})
    assert await wait_for_quiet(read, 1.0, step=0.25, clock=time.clock, sleep=time.sleep) == "whole"
    assert time.now == pytest.approx(1.0) and time.sleeps == 4


async def test_wait_for_quiet_zero_reads_once() -> None:
    time, read = writer({0.0: "whole", 0.1: "later"})
    assert await wait_for_quiet(read, 0.0, clock=time.clock, sleep=time.sleep) == "whole"
    assert time.sleeps == 0


def test_file_state_sees_content_not_only_size_and_time(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    assert file_state(path) is None
    path.write_text("a: 1\n")
    first = file_state(path)
    path.write_text("a: 2\n")  # same size, possibly the same mtime on a coarse clock
    assert file_state(path) != first
    assert file_state(path) == file_state(path)


# --- the listen/state_dir warning compares with the values in effect ------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[PluginRegistry]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FIGRELAY_PLUGINS", raising=False)
        yield load_plugins()


def log_config(listen: str = "127.0.0.1:0", hooks: int = 1) -> str:
    hook_lines = "".join("  - {event: SecurityEvent, client: console}\n" for _ in range(hooks))
    return f"listen: {listen}\nclients:\n  - {{name: console, type: log}}\nhooks:\n{hook_lines}"


async def test_restart_warning_compares_with_the_running_values(registry: PluginRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_config(tmp_path / "figrelay.yaml", log_config())
    caplog.set_level(logging.INFO, logger="figrelay.reload")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "restart figrelay" in r.getMessage()]

    async with aiohttp.ClientSession() as http:
        holder = ConfigHolder(path, registry, http)
        await holder.load()
        try:
            write_config(path, log_config(listen="127.0.0.1:1"))
            assert (await holder.reload("test")).applied
            [warning] = warnings()
            assert "'listen'" in warning and "127.0.0.1:1" in warning and "127.0.0.1:0" in warning

            write_config(path, log_config(listen="127.0.0.1:1", hooks=2))  # listen unchanged since
            assert (await holder.reload("test")).applied
            assert len(warnings()) == 1

            write_config(path, log_config())  # back to the value in effect: nothing to say
            assert (await holder.reload("test")).applied
            assert len(warnings()) == 1

            write_config(path, log_config(listen="127.0.0.1:2"))  # a new difference is told again
            assert (await holder.reload("test")).applied
            assert len(warnings()) == 2 and "127.0.0.1:2" in warnings()[1]

            path.write_text("")  # rejected: the values in effect and the warnings stay as they were
            assert not (await holder.reload("test")).applied
            write_config(path, log_config())
            assert (await holder.reload("test")).applied
            assert len(warnings()) == 2
            assert [str(l) for l in holder.current.config.listen] == ["127.0.0.1:0"] != [DEFAULT_LISTEN]
        finally:
            await holder.close()


# --- a real daemon --------------------------------------------------------------------------------


def results_since(d, mark: int) -> list[str]:
    return [line for line in d.lines[mark:] if RESULT.search(line)]


async def watching(d, quiet: float = 1.0) -> None:
    """Return once the daemon's file watcher runs. It starts just after "ready", so a write at once
    may go unseen: rewrite the file with a new comment until a change is reloaded."""
    text = d.config_path.read_text()
    for attempt in range(5):
        mark = len(d.lines)
        write_config(d.config_path, text + f"# watched {attempt}\n")
        try:
            await d.wait_for_log(RESULT.pattern, start=mark, timeout=quiet + 5)
            return
        except AssertionError:
            continue  # unseen (or slow: the next write only extends the quiet period)
    raise AssertionError(f"the daemon never reloaded a changed file:\n{d.log}")


async def test_a_file_written_slowly_in_place_is_applied_once_whole(daemon_factory, receiver_factory):
    a, b = await receiver_factory(), await receiver_factory()
    # a long quiet period: the test writes its next part as soon as the daemon has seen the last
    # one, so only a stall of seconds in this test process could let a part look final
    d = await daemon_factory(relay_config({"a": a}, "  - {event: SecurityEvent, client: a}"), env={"FIGRELAY_RELOAD_QUIET_PERIOD": "2s"})
    await watching(d, quiet=2)
    whole = relay_config({"a": a, "b": b}, "  - {event: SecurityEvent, client: a}\n  - {event: SecurityEvent, client: b}")
    cut = whole.index("base_uri: http://") + len("base_uri: http://12")
    # parts ending mid-way, as a slow copy leaves them: the client list alone, a URL cut short...
    ends = sorted({whole.index("clients:"), whole.index("  - name: b"), cut, whole.index("hooks:"), whole.index("  - {event: SecurityEvent, client: b}"), len(whole)})

    mark = len(d.lines)
    written = 0
    with open(d.config_path, "w", encoding="utf-8") as f:  # noqa: ASYNC230 (in place on purpose; truncates: the daemon sees an empty file first)
        for end in [0, *ends]:
            f.write(whole[written:end])
            f.flush()
            written = end
            # the daemon has seen this state once it logs it, or once it reloads it (the old behaviour)
            seen = len(d.lines)
            await d.wait_for_log(rf"\({len(whole[:end].encode())} bytes\)|{RESULT.pattern}", start=seen)
    await d.wait_for_log(RESULT.pattern, start=mark)
    results = results_since(d, mark)
    assert len(results) == 1 and "applied" in results[0] and "2 clients, 2 hooks" in results[0], "\n".join(results)
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(a.requests) == 1 and len(b.requests) == 1)
    assert results_since(d, mark) == results, "the whole file is applied once"


async def test_an_empty_file_is_rejected_and_the_running_configuration_keeps_relaying(daemon_factory, receiver_factory):
    a = await receiver_factory()
    up = {"a": False}
    a.responder = lambda r: None if up["a"] else web.Response(status=503, text="down")
    base = relay_config({"a": a}, "  - {event: SecurityEvent, client: a}")
    d = await daemon_factory(base)
    await d.post("SecurityEvent", event("SecurityEvent", Username="before"), AUTH)
    await wait_until(lambda: len(a.requests) >= 1, what="a first, failed attempt")  # the delivery now waits in the outbox
    await watching(d)

    mark = len(d.lines)
    d.config_path.write_text("")  # an in-place write caught at its start
    await d.wait_for_log(r"reload \(file changed\) rejected", start=mark)
    m = await d.wait_for_log("the file is empty", start=mark)
    assert "figrelay.yaml" in m.string

    # the same through SIGHUP, which does not wait for a quiet file
    d.config_path.write_text("# a comment, and nothing else\n")
    mark_hup = len(d.lines)
    d.signal(signal.SIGHUP)
    await d.wait_for_log(r"reload \(SIGHUP\) rejected", start=mark_hup)

    # the running configuration still relays: the waiting delivery and a new event both arrive
    await d.post("SecurityEvent", event("SecurityEvent", Username="during"), AUTH)
    up["a"] = True
    await wait_until(lambda: {r.json["Username"] for r in a.requests if r.json} >= {"before", "during"})
    await wait_until(lambda: outbox_rows(d.config_path.parent) == [], what="everything delivered, nothing dead")
    assert "0 clients" not in d.log and "dead letter" not in d.log

    # restoring the file: applied, with no talk of a changed 'listen'
    mark = len(d.lines)
    write_config(d.config_path, base)
    await d.wait_for_log(r"reload \(file changed\) applied \(the file is valid again\)", start=mark)
    assert "changed; restart figrelay" not in d.log


async def test_restoring_the_file_does_not_warn_about_listen(daemon_factory, receiver, tmp_path):
    base = relay_config({"a": receiver}, "  - {event: SecurityEvent, client: a}")
    d = await daemon_factory(base)
    await watching(d)
    other = base.replace("listen: 127.0.0.1:0", f"listen: [127.0.0.1:0, 'unix:{tmp_path}/intake.sock']")
    for text in (other, other + "  - {event: SecurityEvent, client: a}\n", base):
        mark = len(d.lines)
        write_config(d.config_path, text)
        await d.wait_for_log(r"reload \(file changed\) applied", start=mark)
    warnings = [line for line in d.lines if "'listen' changed" in line]
    assert len(warnings) == 1, "\n".join(warnings)
    assert "unix:" in warnings[0]
    await d.post("SecurityEvent", event("SecurityEvent"), AUTH)
    await wait_until(lambda: len(receiver.requests) == 1)


@pytest.mark.parametrize("text", ["", "\n  \n", "# figrelay\n# (nothing here yet)\n", "---\n"])
async def test_an_empty_file_is_refused_by_check_and_at_start(daemon_factory, text):
    d = await daemon_factory(text, start=False)
    code, out, err = await afigrelay("check", "--config", str(d.config_path))
    assert code == 1 and "the file is empty" in err, out + err
    await d.start(expect_ready=False)
    assert await d.wait() == 1
    assert "the file is empty" in d.log


async def test_a_file_that_is_not_a_mapping_is_refused_by_check(tmp_path):
    path = write_config(tmp_path / "figrelay.yaml", "clients\n")  # a half-written first line
    code, _, err = await afigrelay("check", "--config", str(path))
    assert code == 1 and "must be a mapping" in err and "only the text 'clients'" in err


def test_the_quiet_period_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from figrelay.reload import QUIET_PERIOD, quiet_period

    monkeypatch.delenv("FIGRELAY_RELOAD_QUIET_PERIOD", raising=False)
    assert quiet_period() == QUIET_PERIOD == 1.0
    monkeypatch.setenv("FIGRELAY_RELOAD_QUIET_PERIOD", "250ms")
    assert quiet_period() == 0.25
    monkeypatch.setenv("FIGRELAY_RELOAD_QUIET_PERIOD", "soon")
    with pytest.raises(ValueError, match="FIGRELAY_RELOAD_QUIET_PERIOD"):
        quiet_period()


async def test_wait_for_quiet_reads_off_the_event_loop(tmp_path: Path) -> None:
    # the real reader and the real clock, with a quiet period of zero: one read, in a thread
    path = write_config(tmp_path / "f.yaml", "a: 1\n")
    threads: list[bool] = []

    def read() -> object:
        try:
            asyncio.get_running_loop()
            threads.append(False)
        except RuntimeError:
            threads.append(True)
        return file_state(path)

    assert await wait_for_quiet(read, 0.0) == file_state(path)
    assert threads == [True]


# --- a large file is read and indexed off the event loop ---------------------------------------------


def many_hooks_config(count: int, client_regex: str) -> str:
    hooks = "".join(f"  - {{event: SettingValueChanged, client: console, client_regex: '^Svc{i:05d}(Api)?$'}}\n" for i in range(count))
    return f"listen: 127.0.0.1:0\nclients:\n  - {{name: console, type: log}}\nhooks:\n  - {{event: SettingValueChanged, client: console, client_regex: '{client_regex}'}}\n{hooks}"


async def test_events_are_matched_against_the_running_configuration_during_a_reload(
    registry: PluginRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from figrelay import reload as reload_module
    from figrelay.events import parse_event

    built_in: list[str] = []
    real_rules = reload_module.Rules

    def rules_in_a_thread(*args: object, **kwargs: object) -> object:
        built_in.append(threading.current_thread().name)
        return real_rules(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(reload_module, "Rules", rules_in_a_thread)
    path = write_config(tmp_path / "figrelay.yaml", many_hooks_config(0, "^OrdersApi$"))
    orders = parse_event("SettingValueChanged", {"ClientName": "OrdersApi", "UpdatedSettings": ["Timeout"]})
    payments = parse_event("SettingValueChanged", {"ClientName": "PaymentsApi", "UpdatedSettings": ["Timeout"]})
    async with aiohttp.ClientSession() as http:
        holder = ConfigHolder(path, registry, http)
        await holder.load()
        try:
            state = {"reloading": False}
            holder.reload_started.append(lambda: state.update(reloading=True))
            holder.reload_finished.append(lambda result: state.update(reloading=False))
            seen: list[tuple[bool, int, int, int]] = []
            stop = asyncio.Event()

            async def intake() -> None:  # what the intake does for each event: match on the current configuration
                while not stop.is_set():
                    live = holder.current
                    seen.append((state["reloading"], live.generation, len(live.rules.match(orders)), len(live.rules.match(payments))))
                    await asyncio.sleep(0)

            task = asyncio.create_task(intake())
            await asyncio.sleep(0)
            write_config(path, many_hooks_config(3_000, "^PaymentsApi$"))
            result = await holder.reload("test")
            await asyncio.sleep(0)
            stop.set()
            await task
        finally:
            await holder.close()
    assert result.applied and "3001 hooks" in result.summary
    during = [s for s in seen if s[0]]
    print(f"\n{len(during)} events matched while the reload ran (for reading)")
    assert during, "the event loop kept running during the reload"
    assert all(s[1:] == (1, 1, 0) for s in during), "the running configuration until the swap"
    assert seen[-1][1:] == (2, 0, 1)
    assert len(built_in) == 2 and threading.main_thread().name not in built_in, "hooks are indexed off the event loop"
