"""Unit tests for figrelay.auth: Fig's "Authorization: Secret <secret>" with a plain secret or with
Fig's hashed secret (bcrypt over base64(SHA-384(secret))), and the cache of verified secrets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import aiohttp
import bcrypt
import pytest

import figrelay.auth
from conftest import event, wait_until
from figrelay.auth import AuthOutcome, PeerBusy, PeerScheduler, SecretChecker, fig_prehash, presented_secret, verify_hashed_secret
from test_e2e import daemon_config

FIG_SECRET = "d21b0b4b-b978-4048-85be-eb73e057f6fb"
FIG_HASH = "$2a$11$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC"


@pytest.fixture(scope="module")
def fast_hash() -> tuple[str, str]:
    """A cheap ($2b$, cost 4) hash of a secret, made the way FIG.md describes."""
    secret = "0f3c2a8e-6a55-4f0e-9d1e-3b7f7a2c9e11"
    hashed = bcrypt.hashpw(fig_prehash(secret), bcrypt.gensalt(4)).decode()
    assert hashed.startswith("$2b$04$") and len(hashed) == 60
    return secret, hashed


@pytest.fixture
def count_bcrypt(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    real = figrelay.auth.verify_hashed_secret

    def counting(secret: str, hashed_secret: str) -> bool:
        calls.append((secret, hashed_secret))
        return real(secret, hashed_secret)

    monkeypatch.setattr(figrelay.auth, "verify_hashed_secret", counting)
    return calls


# --- the pieces ---------------------------------------------------------------------------------


def test_fig_prehash_is_base64_of_sha384() -> None:
    pre = fig_prehash(FIG_SECRET)
    assert pre == base64.b64encode(hashlib.sha384(FIG_SECRET.encode()).digest())
    assert len(pre) == 64
    assert fig_prehash("ü") == base64.b64encode(hashlib.sha384("ü".encode()).digest())


def test_verify_hashed_secret_known_good_pair() -> None:
    assert verify_hashed_secret(FIG_SECRET, FIG_HASH) is True
    assert verify_hashed_secret(FIG_SECRET, "  " + FIG_HASH + "\n") is True


def test_verify_hashed_secret_rejects(fast_hash: tuple[str, str]) -> None:
    secret, hashed = fast_hash
    assert verify_hashed_secret(secret, hashed) is True
    assert verify_hashed_secret(secret.upper(), hashed) is False
    assert verify_hashed_secret(secret + " ", hashed) is False
    assert verify_hashed_secret("", hashed) is False
    # the plain secret given to bcrypt directly (not Fig's enhanced hashing) does not verify
    plain_hash = bcrypt.hashpw(secret.encode(), bcrypt.gensalt(4)).decode()
    assert verify_hashed_secret(secret, plain_hash) is False


@pytest.mark.parametrize("bad", ["", "not-a-hash", "$2a$11$short", "$2a$11$" + "é" * 53])
def test_verify_hashed_secret_with_a_malformed_hash_is_false(bad: str) -> None:
    assert verify_hashed_secret(FIG_SECRET, bad) is False


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Secret abc", "abc"),
        ("Secret  abc ", "abc"),
        ("  Secret\tabc\r\n", "abc"),
        ("secret abc", "abc"),
        ("SECRET abc", "abc"),
        ("Secret pässwörd", "pässwörd"),
        ("", None),
        (None, None),
        ("   ", None),
        ("abc", None),
        ("Secret", None),
        ("Secret ", None),
        ("Bearer abc", None),
        ("Basic abc", None),
        ("Bearer x y z", None),
        ("a b c abc", None),
        ("Secret a b", None),
        ("Secretabc", None),
        ("XSecret abc", None),
        ("Secret \udcff\udcfe", None),  # bytes that are not UTF-8, as aiohttp hands them on
    ],
)
def test_presented_secret_is_exactly_the_secret_scheme(header: str | None, expected: str | None) -> None:
    assert presented_secret(header) == expected


# --- plain secret --------------------------------------------------------------------------------


async def test_plain_secret() -> None:
    checker = SecretChecker(secret=FIG_SECRET)
    assert checker.required
    assert await checker.check(f"Secret {FIG_SECRET}") is True
    assert await checker.check(f"Secret {FIG_SECRET}x") is False
    assert await checker.check(f"Secret {FIG_SECRET.upper()}") is False
    assert await checker.check("Secret ") is False
    assert await checker.check("Secret") is False
    assert await checker.check("") is False
    assert await checker.check(None) is False


async def test_plain_secret_never_runs_bcrypt(count_bcrypt: list[Any]) -> None:
    checker = SecretChecker(secret="plain")
    assert await checker.check("Secret plain")
    assert not await checker.check("Secret other")
    assert count_bcrypt == []


async def test_plain_secret_non_ascii() -> None:
    checker = SecretChecker(secret="pässwörd")
    assert await checker.check("Secret pässwörd") is True
    assert await checker.check("Secret passwort") is False


async def test_no_secret_configured_accepts_everything() -> None:
    checker = SecretChecker()
    assert not checker.required
    assert await checker.check(None) is True
    assert await checker.check("Secret anything") is True


# --- hashed secret ------------------------------------------------------------------------------


async def test_hashed_secret_known_good_pair() -> None:
    checker = SecretChecker(hashed_secret=FIG_HASH)
    assert checker.required
    assert await checker.check(f"Secret {FIG_SECRET}") is True
    assert await checker.check(f"Secret {FIG_SECRET}") is True


async def test_hashed_secret_wrong_and_missing(fast_hash: tuple[str, str]) -> None:
    secret, hashed = fast_hash
    checker = SecretChecker(hashed_secret=hashed)
    assert await checker.check("Secret wrong-secret") is False
    assert await checker.check(f"Secret {secret[:-1]}") is False
    assert await checker.check(None) is False
    assert await checker.check("") is False
    assert await checker.check(f"Secret {secret}") is True


async def test_2b_hash_made_with_fig_prehash_verifies(fast_hash: tuple[str, str]) -> None:
    secret, hashed = fast_hash
    checker = SecretChecker(hashed_secret=hashed)
    assert await checker.check(f"Secret {secret}") is True


async def test_hashed_secret_with_surrounding_whitespace(fast_hash: tuple[str, str]) -> None:
    secret, hashed = fast_hash
    checker = SecretChecker(hashed_secret=f"  {hashed}\n")
    assert await checker.check(f"Secret {secret}") is True


async def test_verified_secret_is_not_checked_with_bcrypt_again(fast_hash: tuple[str, str], count_bcrypt: list[Any]) -> None:
    secret, hashed = fast_hash
    checker = SecretChecker(hashed_secret=hashed)
    assert await checker.check(f"Secret {secret}") is True
    assert len(count_bcrypt) == 1
    assert count_bcrypt[0] == (secret, hashed)
    for _ in range(5):
        assert await checker.check(f"Secret {secret}") is True
    assert len(count_bcrypt) == 1
    # a wrong secret still gets checked (and refused), and the verified one stays cached
    assert await checker.check("Secret nope") is False
    assert len(count_bcrypt) == 2
    assert await checker.check(f"Secret {secret}") is True
    assert len(count_bcrypt) == 2


async def test_wrong_secret_is_remembered(fast_hash: tuple[str, str], count_bcrypt: list[Any]) -> None:
    _, hashed = fast_hash
    checker = SecretChecker(hashed_secret=hashed)
    for _ in range(4):
        assert await checker.check("Secret wrong") is False
    assert len(count_bcrypt) == 1


async def test_concurrent_checks_run_bcrypt_once(fast_hash: tuple[str, str], count_bcrypt: list[Any]) -> None:
    secret, hashed = fast_hash
    checker = SecretChecker(hashed_secret=hashed)
    results = await asyncio.gather(*(checker.check(f"Secret {secret}") for _ in range(10)))
    assert results == [True] * 10
    assert len(count_bcrypt) == 1


async def test_checkers_do_not_share_a_cache(fast_hash: tuple[str, str], count_bcrypt: list[Any]) -> None:
    secret, hashed = fast_hash
    assert await SecretChecker(hashed_secret=hashed).check(f"Secret {secret}")
    assert await SecretChecker(hashed_secret=hashed).check(f"Secret {secret}")
    assert len(count_bcrypt) == 2


async def test_verified_secret_of_another_hash_is_refused(fast_hash: tuple[str, str]) -> None:
    secret, _ = fast_hash
    checker = SecretChecker(hashed_secret=FIG_HASH)
    assert await checker.check(f"Secret {FIG_SECRET}") is True
    # the cache is of the verified secret only
    assert await checker.check(f"Secret {secret}") is False


def test_same_as() -> None:
    checker = SecretChecker(hashed_secret=FIG_HASH)
    assert checker.same_as(None, FIG_HASH)
    assert checker.same_as(None, FIG_HASH + "\n")
    assert not checker.same_as(FIG_SECRET, None)
    assert not checker.same_as(None, None)
    plain = SecretChecker(secret="abc")
    assert plain.same_as("abc", None)
    assert not plain.same_as("abd", None)
    assert SecretChecker().same_as(None, None)


# --- the header's form ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "Basic", "a b c", "Token"])
async def test_only_the_secret_scheme_is_accepted(scheme: str) -> None:
    checker = SecretChecker(secret=FIG_SECRET)
    verdict = await checker.verify(f"{scheme} {FIG_SECRET}")
    assert verdict.outcome is AuthOutcome.MALFORMED
    assert "'Authorization: Secret <secret>'" in verdict.message
    assert await checker.check(f"secret {FIG_SECRET}") is True  # the scheme is case-insensitive (RFC 7235)
    assert await checker.check(f"  Secret   {FIG_SECRET}  ") is True


async def test_verdicts_say_what_to_fix(fast_hash: tuple[str, str]) -> None:
    secret, hashed = fast_hash
    checker = SecretChecker(hashed_secret=hashed)
    missing, malformed, wrong, ok = [
        await checker.verify(h) for h in (None, f"Bearer {secret}", "Secret wrong", f"Secret {secret}")
    ]
    assert (missing.outcome, malformed.outcome, wrong.outcome, ok.outcome) == (
        AuthOutcome.MISSING, AuthOutcome.MALFORMED, AuthOutcome.WRONG, AuthOutcome.ACCEPTED,
    )
    assert ok.ok and not wrong.ok
    assert "no Authorization header" in missing.message
    assert "wrong secret" in wrong.message
    assert all(secret not in v.message for v in (missing, malformed, wrong))


@pytest.mark.parametrize("hashed", [False, True])
async def test_a_header_that_is_not_utf8_is_refused_not_a_crash(hashed: bool, fast_hash: tuple[str, str]) -> None:
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: b"Secret \xff" arrives as "Secret \udcff"
    secret, hash_ = fast_hash
    checker = SecretChecker(hashed_secret=hash_) if hashed else SecretChecker(secret=secret)
    header = b"Secret \xff\xfe".decode("utf-8", "surrogateescape")
    verdict = await checker.verify(header)
    assert verdict.outcome is AuthOutcome.MALFORMED


# --- the scheduler: fair turns between peers (a fake check, driven step by step) -------------------


class FakeChecks:
    """A check per job that finishes only when the test says so; records the order checks start."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}

    def _gate(self, job: str) -> asyncio.Event:
        return self._gates.setdefault(job, asyncio.Event())

    async def run(self, job: str) -> bool:
        self.started.append(job)
        await self._gate(job).wait()
        if job.startswith("boom"):
            raise RuntimeError(f"check {job} failed")
        return job.endswith("ok")

    def finish(self, job: str) -> None:
        self._gate(job).set()


async def settle(condition: Any = lambda: False, turns: int = 50) -> None:
    """Let the event loop run ``turns`` rounds, or until ``condition`` holds (no wall clock)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)


def submit_all(scheduler: PeerScheduler[str], peer: str, jobs: list[str]) -> list[asyncio.Task[bool]]:
    return [asyncio.ensure_future(scheduler.submit(peer, job)) for job in jobs]


async def test_scheduler_takes_turns_between_peers() -> None:
    fake = FakeChecks()
    scheduler: PeerScheduler[str] = PeerScheduler(fake.run, workers=1, max_waiting=8)
    flood = submit_all(scheduler, "10.0.0.2", [f"a{i}" for i in range(6)])
    await settle(lambda: fake.started == ["a0"])
    fig = submit_all(scheduler, "10.0.0.1", ["fig-ok"])
    await settle()
    assert fake.started == ["a0"]  # one worker, busy with the flood's first check
    fake.finish("a0")
    await settle(lambda: len(fake.started) == 2)
    assert fake.started == ["a0", "fig-ok"], "the other peer goes next, before the flood's 5 waiting checks"
    fake.finish("fig-ok")
    assert await fig[0] is True
    for i in range(1, 6):
        fake.finish(f"a{i}")
    assert await asyncio.gather(*flood) == [False] * 6
    assert fake.started == ["a0", "fig-ok", "a1", "a2", "a3", "a4", "a5"]


async def test_scheduler_round_robin_over_three_peers() -> None:
    fake = FakeChecks()
    scheduler: PeerScheduler[str] = PeerScheduler(fake.run, workers=1, max_waiting=8)
    tasks = submit_all(scheduler, "a", ["a0", "a1", "a2"]) + submit_all(scheduler, "b", ["b0", "b1"]) + submit_all(scheduler, "c", ["c0"])
    for expected in ["a0", "b0", "c0", "a1", "b1", "a2"]:
        await settle(lambda expected=expected: fake.started[-1:] == [expected])
        assert fake.started[-1] == expected
        fake.finish(expected)
    await asyncio.gather(*tasks)


async def test_scheduler_runs_one_check_per_peer_and_another_peer_on_the_second_worker() -> None:
    fake = FakeChecks()
    scheduler: PeerScheduler[str] = PeerScheduler(fake.run, workers=2, max_waiting=8)
    flood = submit_all(scheduler, "10.0.0.2", ["a0", "a1", "a2"])
    await settle()
    assert fake.started == ["a0"], "a peer never has two checks running"
    fig = submit_all(scheduler, "10.0.0.1", ["fig-ok"])
    await settle(lambda: "fig-ok" in fake.started)
    assert fake.started == ["a0", "fig-ok"], "the second worker takes the other peer at once"
    fake.finish("fig-ok")
    assert await fig[0] is True
    assert scheduler.waiting("10.0.0.2") == 2
    for job in ("a0", "a1", "a2"):
        fake.finish(job)
    await asyncio.gather(*flood)


async def test_scheduler_refuses_a_peer_whose_line_is_full_and_only_that_peer() -> None:
    fake = FakeChecks()
    scheduler: PeerScheduler[str] = PeerScheduler(fake.run, workers=1, max_waiting=3)
    admitted = submit_all(scheduler, "a", ["a0", "a1", "a2", "a3"])  # one running, three waiting
    await settle(lambda: fake.started == ["a0"])
    with pytest.raises(PeerBusy) as refused:
        await scheduler.submit("a", "a4")
    assert refused.value.waiting == 3 and refused.value.retry_after >= 1
    other = submit_all(scheduler, "b", ["b-ok"])
    await settle()
    assert not other[0].done()  # admitted: it waits for its turn
    for job in ("a0", "b-ok", "a1", "a2", "a3"):
        await settle(lambda job=job: fake.started[-1:] == [job])
        fake.finish(job)
    assert await other[0] is True
    await asyncio.gather(*admitted)
    assert scheduler.waiting("a") == 0
    fake.finish("a4")  # a refused job never ran
    assert "a4" not in fake.started


async def test_scheduler_skips_a_check_whose_requester_left_and_passes_on_errors() -> None:
    fake = FakeChecks()
    scheduler: PeerScheduler[str] = PeerScheduler(fake.run, workers=1)
    first = submit_all(scheduler, "a", ["a0"])
    await settle(lambda: fake.started == ["a0"])
    gone, failing = submit_all(scheduler, "a", ["a1"])[0], submit_all(scheduler, "b", ["boom"])[0]
    await settle()
    gone.cancel()
    fake.finish("a0")
    await settle(lambda: fake.started[-1:] == ["boom"])
    assert fake.started == ["a0", "boom"], "the cancelled check was skipped"
    fake.finish("boom")
    with pytest.raises(RuntimeError, match="check boom failed"):
        await failing
    assert await first[0] is False


async def test_checker_answers_busy_when_one_peer_has_too_many_checks_waiting(monkeypatch: pytest.MonkeyPatch, fast_hash: tuple[str, str]) -> None:
    secret, hashed = fast_hash
    fake = FakeChecks()

    async def fake_bcrypt(job: tuple[str, str]) -> bool:
        await fake.run(job[0])
        return job[0] == secret

    monkeypatch.setattr(figrelay.auth, "_bcrypt_in_thread", fake_bcrypt)
    checker = SecretChecker(hashed_secret=hashed, workers=1)
    waiting = SecretChecker.MAX_WAITING_PER_PEER
    flood = [asyncio.ensure_future(checker.verify(f"Secret wrong{i}", "10.0.0.2")) for i in range(waiting + 1)]
    await settle(lambda: fake.started == ["wrong0"])
    busy = await checker.verify("Secret wrong-more", "10.0.0.2")
    assert busy.outcome is AuthOutcome.BUSY and busy.retry_after == 1
    assert "10.0.0.2" in busy.message and "retry after 1s" in busy.message
    # the same secret again shares the check in flight instead of queueing another
    again = asyncio.ensure_future(checker.verify("Secret wrong1", "10.0.0.2"))
    fig = asyncio.ensure_future(checker.verify(f"Secret {secret}", "10.0.0.1"))
    await settle()  # both reach the scheduler
    fake.finish("wrong0")
    await settle(lambda: fake.started[-1:] == [secret])
    assert fake.started == ["wrong0", secret], "Fig's peer is next, ahead of the flood's 8 waiting checks"
    fake.finish(secret)
    assert (await fig).ok
    for i in range(1, waiting + 1):
        fake.finish(f"wrong{i}")
    assert [v.outcome for v in await asyncio.gather(*flood, again)] == [AuthOutcome.WRONG] * (waiting + 2)
    assert fake.started.count("wrong1") == 1
    # remembered: neither the right nor a known wrong secret runs a check again
    assert (await checker.verify(f"Secret {secret}", "10.0.0.3")).ok
    assert (await checker.verify("Secret wrong3", "10.0.0.3")).outcome is AuthOutcome.WRONG
    assert len(fake.started) == waiting + 2


# --- a real daemon under a flood of wrong secrets ------------------------------------------------


async def test_flood_of_wrong_secrets_does_not_delay_fig_from_another_address(daemon_factory: Any) -> None:
    """100 distinct wrong secrets in flight from 127.0.0.2, then Fig's secret from 127.0.0.1: Fig's
    request is checked next, ahead of the flood's queued checks, and the flood is refused (401)
    or, beyond what may wait, turned away unchecked (429)."""
    d = await daemon_factory(daemon_config("  - name: sink\n    type: log", "  - {event: SecurityEvent, client: sink}", f'  hashed_secret: "{FIG_HASH}"'))
    answered: list[tuple[str, int]] = []
    refusals: list[tuple[int, dict[str, Any], str | None]] = []
    body = event("SecurityEvent")

    async def post(session: aiohttp.ClientSession, who: str, secret: str) -> None:
        headers = {"Authorization": f"Secret {secret}", "Content-Type": "application/json"}
        async with session.post(d.url + "/SecurityEvent", data=body, headers=headers) as resp:
            payload = await resp.json()
            answered.append((who, resp.status))
            if who == "flood":
                refusals.append((resp.status, payload, resp.headers.get("Retry-After")))

    flooder = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
    async with aiohttp.ClientSession(connector=flooder) as flood_session, aiohttp.ClientSession() as fig_session:
        flood = [asyncio.ensure_future(post(flood_session, "flood", f"wrong-{i:03d}")) for i in range(100)]
        # the flood's line is full once the first request is turned away unchecked
        await wait_until(lambda: any(status == 429 for _, status in answered), timeout=30, what="the flood to fill its line")
        checked_before = sum(1 for who, status in answered if status == 401)
        await post(fig_session, "fig", FIG_SECRET)
        fig_at = answered.index(("fig", 200))
        await asyncio.gather(*flood)

    checked = [i for i, (who, status) in enumerate(answered) if who == "flood" and status == 401]
    checked_after_fig = [i for i in checked if i > fig_at]
    assert len(answered) == 101
    assert {status for status, _, _ in refusals} == {401, 429}
    assert all(p["error"] in ("unauthorized", "too_many_secret_checks") and p["message"] for _, p, _ in refusals)
    assert all(retry == "1" for status, _, retry in refusals if status == 429)
    # Fig was checked ahead of the flood's queue: its line held 8 waiting checks when Fig's
    # request came, and most of them were answered after Fig's (one at a time, FIFO, would have
    # answered every one of them first)
    assert len(checked) - checked_before >= SecretChecker.MAX_WAITING_PER_PEER
    assert len(checked_after_fig) >= SecretChecker.MAX_WAITING_PER_PEER // 2, (checked_before, fig_at, checked)
    status, _, _ = await d.request("GET", "/healthz")
    assert status == 200
