"""Hostile storage conditions, mostly through the real daemon: an event the outbox cannot store
among many it can, a state filesystem that fills up (a small tmpfs), a store the daemon cannot
write, and a store that went missing or empty.

The tmpfs and chattr tests need root (they skip, saying why, where that is not permitted).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_DELIVERY, Daemon, Receiver, event, wait_until
from figrelay.storage import NewDelivery, OutboxError, StoreLostError
from figrelay.storage.sqlite import RECOVERY_HEADROOM, Outbox

# Small enough that the WAL SQLite keeps by default (4 MiB before its first checkpoint) fills
# it, large enough for figrelay's WAL (1 MiB) plus the headroom its recovery probe waits for.
SMALL_FS = "3m"


# --- fixtures and helpers ----------------------------------------------------------------------


def _mount_tmpfs(folder: Path, size: str) -> str | None:
    """Mount a tmpfs on ``folder``; the reason why not, or None."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount/umount are not installed"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        return f"mounting a tmpfs is not permitted here (needs root): {done.stderr.strip() or done.returncode}"
    return None


def _unmount(folder: Path) -> None:
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # a process we killed may still hold it


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs for state_dir. Requested before ``daemon_factory`` so that it is
    unmounted after the daemons are gone."""
    folder = tmp_path / "small-fs"
    folder.mkdir()
    why_not = _mount_tmpfs(folder, SMALL_FS)
    if why_not is not None:
        pytest.skip(why_not)
    try:
        yield folder
    finally:
        _unmount(folder)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte with a filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def chattr(flag: str, path: Path) -> str | None:
    """``chattr flag path``; the reason why not, or None."""
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    return None if done.returncode == 0 else f"chattr {flag} is not possible here: {done.stderr.strip()}"


class Gate:
    """A receiver answer that waits while the gate is closed: deliveries hang in flight without
    failing, so the dispatcher writes nothing to the outbox meanwhile."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, request: Any) -> None:
        await self.open.wait()


def relay_config(receiver: Receiver, state_dir: Path | str = "./state", hooks: Iterable[str] = ("SettingValueChanged",)) -> str:
    hook_lines = "\n".join(f"  - {{event: {h}, client: siem}}" for h in hooks)
    # a long attempt timeout: a delivery held at the gate must not time out into a retry write
    delivery = FAST_DELIVERY.replace("attempt_timeout: 5s", "attempt_timeout: 300s")
    return f"""listen: 127.0.0.1:0
state_dir: {state_dir}
{delivery}
clients:
  - name: siem
    type: http
    base_uri: {receiver.url}/fig
hooks:
{hook_lines}
"""


def change(tag: str, size: int = 0) -> bytes:
    return event("SettingValueChanged", ChangeMessage=tag + " " + "x" * size)


def received_tags(receiver: Receiver) -> set[str]:
    return {r.json["ChangeMessage"].split(" ", 1)[0] for r in receiver.requests if r.path.endswith("/SettingValueChanged")}


class Run(Daemon):
    """``figrelay run`` with extra command-line arguments (conftest's Daemon takes none, so its
    start is repeated here with them)."""

    def __init__(self, config_path: Path, *args: str) -> None:
        super().__init__(config_path)
        self.args = list(args)

    async def start(self, expect_ready: bool = True) -> Daemon:
        mark = len(self.lines)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "figrelay", "run", "--config", str(self.config_path), "--log-level", "debug", *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        if expect_ready:
            self.url = (await self.wait_for_log(r"listening on (http://\S+)", start=mark)).group(1)
            await self.wait_for_log(r"ready in", start=mark)
        return self


# --- one poisoned event costs no other ---------------------------------------------------------


async def test_a_poisoned_event_in_a_burst_costs_no_other_event(daemon_factory, receiver):
    """A ClientStatusChanged whose ClientName holds a lone surrogate used to fail the group
    commit it shared with the other requests: most of a burst was answered 503. (The event
    parser may replace the surrogate before it reaches the outbox; either way no other event
    may pay for it.)"""
    d = await daemon_factory(relay_config(receiver, hooks=("SettingValueChanged", "ClientStatusChanged")))
    poison = event("ClientStatusChanged").replace(b'"ClientName":"OrdersApi"', b'"ClientName":"\\ud800"')
    assert b'"\\ud800"' in poison
    expected: set[str] = set()
    for burst in range(5):
        bodies: list[tuple[str, bytes]] = []
        for i in range(50):
            tag = f"b{burst}e{i}"
            if i % 2:
                bodies.append(("SettingValueChanged", change(tag)))
            else:  # a new run session each: a session write in the same transaction
                bodies.append(("ClientStatusChanged", event("ClientStatusChanged", Hostname=tag)))
            expected.add(tag)
        bodies.insert(25, ("ClientStatusChanged", poison))
        answers = await asyncio.gather(*(d.post(route, body) for route, body in bodies))
        poisoned = answers.pop(25)
        assert poisoned[0] in (200, 400, 503), (poisoned, d.log[-3000:])  # stored with U+FFFD, refused as invalid, or refused alone
        refused = [(route, a) for (route, _), a in zip(bodies[:25] + bodies[26:], answers, strict=True) if a[0] != 200]
        assert refused == [], f"burst {burst}: {len(refused)} of 50 legitimate events refused, e.g. {refused[:2]}"

    def delivered() -> set[str]:
        tags = received_tags(receiver)
        tags |= {r.json["Hostname"] for r in receiver.requests if r.path.endswith("/ClientStatusChanged") and r.json["ClientName"] == "OrdersApi"}
        return tags

    await wait_until(lambda: delivered() >= expected, timeout=30, what="every legitimate event delivered")
    assert "Traceback" not in d.log


# --- a full state filesystem -------------------------------------------------------------------


async def post_until_refused(d: Daemon, prefix: str, accepted: set[str], limit: int = 5000) -> tuple[int, Any]:
    """Post events until one is refused; its (status, body)."""
    for i in range(limit):
        tag = f"{prefix}{i}"
        status, body = await d.post("SettingValueChanged", change(tag, 500))
        if status == 200:
            accepted.add(tag)
            continue
        return status, body
    raise AssertionError(f"{limit} events fitted on a full {SMALL_FS} filesystem")


async def assert_refused_and_not_ready(d: Daemon, accepted: set[str]) -> None:
    """The intake refuses and /readyz agrees. While the disk is full, the background probe may
    truncate the WAL and so free a little space, in which one more event can honestly be stored
    (answered 200, and recorded in ``accepted``): then fill that too and look again."""
    for attempt in range(20):
        status, body = await post_until_refused(d, f"r{attempt}-", accepted)
        assert status == 503 and body["error"] == "storage_unavailable", (status, body)
        status, ready, _ = await d.request("GET", "/readyz")
        if status == 200:
            continue  # a write got in between and succeeded: the outbox is writable again, for now
        assert status == 503 and ready["status"] == "not_ready" and ready["outbox_writable"] is False, ready
        assert "full" in ready["outbox_error"] and ready["outbox_unwritable_since"], ready
        return
    raise AssertionError("/readyz kept saying ready while the intake refused events")


async def wait_ready(d: Daemon, timeout: float = 30.0) -> None:
    last: list[Any] = []

    async def poll() -> None:
        while True:
            status, body, _ = await d.request("GET", "/readyz")
            last[:] = [status, body]
            if status == 200:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"/readyz not ready {timeout}s after space was freed: {last}\n{d.log[-3000:]}") from None


async def test_a_full_state_filesystem_refuses_honestly_and_recovers_by_itself(small_fs, daemon_factory, receiver):
    gate = Gate()
    receiver.responder = gate
    d = await daemon_factory(relay_config(receiver, small_fs / "state"))
    accepted: set[str] = set()

    # Events that are delivered at once leave almost nothing in the store, but every write goes
    # through the WAL first. SQLite's default WAL (4 MiB before a checkpoint) used to fill this
    # filesystem by itself, after which nothing could ever be written again.
    for chunk in range(15):
        tags = [f"a{chunk}-{i}" for i in range(10)]
        answers = await asyncio.gather(*(d.post("SettingValueChanged", change(tag, 3000)) for tag in tags))
        assert [a[0] for a in answers] == [200] * 10, answers
        accepted.update(tags)
        await wait_until(lambda: received_tags(receiver) >= accepted, timeout=30, what="the chunk delivered")

    # Now fill the filesystem; deliveries hang at the gate, so the store grows until it is full.
    gate.open.clear()
    filler = fill(small_fs)
    status, body = await post_until_refused(d, "b", accepted)
    assert status == 503 and body["error"] == "storage_unavailable", (status, body)
    await assert_refused_and_not_ready(d, accepted)
    await d.wait_for_log(r"the outbox .* cannot be written: database or disk is full")

    # Space returns: the daemon notices by itself, without a restart or a request.
    filler.unlink()
    await wait_ready(d)
    answers = await asyncio.gather(*(d.post("SettingValueChanged", change(f"c{i}", 500)) for i in range(20)))
    assert [a[0] for a in answers] == [200] * 20, answers
    accepted.update(f"c{i}" for i in range(20))

    gate.open.set()
    await wait_until(lambda: received_tags(receiver) >= accepted, timeout=30, what="every accepted event delivered")
    assert received_tags(receiver) == accepted, "an event answered 503 was delivered: it had been stored after all"
    await d.wait_for_log(r"the outbox .* takes writes again")


async def test_a_restart_on_a_full_state_filesystem_comes_up_and_recovers(small_fs, daemon_factory, receiver):
    gate = Gate()
    receiver.responder = gate
    d = await daemon_factory(relay_config(receiver, small_fs / "state"))
    accepted: set[str] = set()
    gate.open.clear()
    filler = fill(small_fs)
    await post_until_refused(d, "b", accepted)
    assert await d.stop() == 0

    # Still full: it starts, says it is not ready, refuses events honestly.
    mark = len(d.lines)
    await d.start()
    await d.wait_for_log(r"the outbox .* cannot be written: database or disk is full.* Starting anyway", start=mark)
    await assert_refused_and_not_ready(d, accepted)

    filler.unlink()
    await wait_ready(d)
    status, _ = await d.post("SettingValueChanged", change("after"))
    assert status == 200
    accepted.add("after")
    gate.open.set()
    await wait_until(lambda: received_tags(receiver) >= accepted, timeout=30, what="every accepted event delivered")
    assert received_tags(receiver) == accepted


async def test_the_outbox_recovers_from_a_full_disk_without_a_restart(small_fs):
    box = Outbox(small_fs / "state" / "outbox.sqlite3")
    await box.open()
    try:
        filler = fill(small_fs)
        stored = 0
        with pytest.raises(OutboxError, match="database or disk is full"):
            for stored in range(10_000):
                await box.accept([_delivery(stored)])
        assert not box.health.writable and "full" in (box.health.error or "")
        filler.unlink()
        await wait_until(lambda: box.health.writable, timeout=30, what="the outbox writable again")
        # the probe waited for room for a WAL's worth: a heartbeat alone proves little
        assert os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize >= RECOVERY_HEADROOM
        await box.accept([_delivery(stored + 1)])
        assert len(await box.pending_schedule()) == stored + 1  # every accepted one, none refused
    finally:
        await box.close()


def _delivery(i: int) -> NewDelivery:
    return NewDelivery(f"d{i}", "siem", "SecurityEvent", b"x" * 2000, 0, float(i))


# --- a store it cannot use ---------------------------------------------------------------------


def _store_dir(d: Daemon) -> Path:
    return d.config_path.parent / "state"


def _cannot_start_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "cannot start" in line]


async def test_an_unwritable_store_refuses_to_start_with_one_clear_line(daemon_factory, receiver):
    d = await daemon_factory(relay_config(receiver))
    assert (await d.post("SettingValueChanged", change("first")))[0] == 200
    assert await d.stop() == 0
    db = _store_dir(d) / "outbox.sqlite3"
    # As root, file permissions do not stop a write; the immutable attribute does.
    why_not = chattr("+i", db)
    if why_not is not None:
        pytest.skip(why_not)
    try:
        mark = len(d.lines)
        await d.start(expect_ready=False)
        assert await d.wait() == 1
    finally:
        chattr("-i", db)
    lines = d.lines[mark:]
    assert _cannot_start_lines(lines) == [
        f"figrelay: cannot start: cannot write the outbox {db}: opening {db.name} for writing fails: Operation not permitted (EPERM); "
        f"figrelay runs as user root (uid 0): make state_dir ({db.parent}) and the files in it writable by user root (uid 0) "
        "(owner and permissions, no immutable attribute, no read-only mount), or set state_dir to a folder it can write "
        f"(check state_dir in {d.config_path})"
    ]
    assert not any("Traceback" in line or "ready in" in line or "listening on" in line for line in lines), "\n".join(lines)


async def test_an_outbox_truncated_to_nothing_refuses_to_start_unless_accepted(daemon_factory, receiver):
    gate = Gate()
    receiver.responder = gate
    gate.open.clear()  # the deliveries stay pending
    d = await daemon_factory(relay_config(receiver))
    for i in range(20):
        assert (await d.post("SettingValueChanged", change(f"p{i}")))[0] == 200
    assert await d.stop() == 0
    state = _store_dir(d)
    marker = json.loads((state / "outbox.marker").read_text())
    db = state / "outbox.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn:  # closed: an open reader would hold the file
        assert conn.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'").fetchone() == (20,)
    os.truncate(db, 0)

    mark = len(d.lines)
    await d.start(expect_ready=False)
    assert await d.wait() == 1
    lines = d.lines[mark:]
    [line] = _cannot_start_lines(lines)
    assert f"the outbox {db} is empty (0 bytes), but the marker {state / 'outbox.marker'} shows" in line
    assert marker["store_id"] in line and "pending" in line and "figrelay run --accept-empty-state" in line
    assert not any("Traceback" in line or "ready in" in line for line in lines), "\n".join(lines)
    assert db.stat().st_size == 0, "a refused start leaves the evidence alone"

    gate.open.set()
    fresh = Run(d.config_path, "--accept-empty-state")
    try:
        await fresh.start()
        await fresh.wait_for_log(r"--accept-empty-state: using the outbox .* it is empty \(0 bytes\)")
        assert (await fresh.post("SettingValueChanged", change("fresh")))[0] == 200
        await wait_until(lambda: "fresh" in received_tags(receiver), what="a new event delivered")
        assert await fresh.stop() == 0
    finally:
        await fresh.close()
    renewed = json.loads((state / "outbox.marker").read_text())
    assert renewed["store_id"] != marker["store_id"]
    # from now on an ordinary start
    await d.start()
    assert (await d.post("SettingValueChanged", change("later")))[0] == 200


async def test_a_missing_outbox_with_a_marker_refuses_to_start(daemon_factory, receiver):
    d = await daemon_factory(relay_config(receiver))
    assert await d.stop() == 0
    state = _store_dir(d)
    for name in ("outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm"):
        (state / name).unlink(missing_ok=True)
    mark = len(d.lines)
    await d.start(expect_ready=False)
    assert await d.wait() == 1
    [line] = _cannot_start_lines(d.lines[mark:])
    assert "is missing" in line and "--accept-empty-state" in line
    assert not (state / "outbox.sqlite3").exists(), "a refused start does not create an empty store"


async def test_an_outbox_that_cannot_be_written_is_refused_by_open(tmp_path):
    db = tmp_path / "state" / "outbox.sqlite3"
    box = Outbox(db)
    await box.open()
    await box.close()
    why_not = chattr("+i", db)
    if why_not is not None:
        pytest.skip(why_not)
    try:
        box = Outbox(db)
        with pytest.raises(OutboxError) as caught:
            await box.open()
        await box.close()
    finally:
        chattr("-i", db)
    assert not isinstance(caught.value, StoreLostError)
    message = str(caught.value)
    assert message.startswith(f"cannot write the outbox {db}: opening outbox.sqlite3 for writing fails: Operation not permitted (EPERM)")
    assert "\n" not in message

