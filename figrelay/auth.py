"""Checks Fig's ``Authorization: Secret <secret>`` header against the configured secret.

Fig's web app shows the admin a *hashed* secret: BCrypt.Net-Next's EnhancedHashPassword, which
runs bcrypt over base64(SHA-384(secret)). bcrypt at cost 11 costs a tenth of a second or more, so:

- outcomes are remembered: the verified secret (as its SHA-256, compared in constant time) and
  the last few hundred wrong ones, so a repeated secret never runs bcrypt again;
- bcrypt runs in worker threads (it releases the GIL), never on the event loop;
- the checks take turns between peers (PeerScheduler): a flood of wrong secrets from one address
  queues behind itself, so Fig's request from another address waits for at most about one check,
  well inside Fig's 10-second timeout. A peer with too many checks waiting is refused at once.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import os
import re
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import bcrypt

__all__ = [
    "EXPECTED_HEADER",
    "AuthOutcome",
    "AuthVerdict",
    "PeerBusy",
    "PeerScheduler",
    "SecretChecker",
    "fig_prehash",
    "presented_secret",
    "verify_hashed_secret",
]

EXPECTED_HEADER = "Authorization: Secret <secret>"

# RFC 7235: the scheme is case-insensitive and separated from its credentials by spaces; the
# secret itself is one token. Anything else (Bearer, Basic, several words) is not Fig's header.
_SECRET_HEADER = re.compile(r"Secret[ \t]+(\S+)", re.IGNORECASE)


def fig_prehash(secret: str) -> bytes:
    """The password bcrypt sees in Fig's enhanced hashing: base64(SHA-384(utf8(secret)))."""
    return base64.b64encode(hashlib.sha384(secret.encode("utf-8")).digest())


def verify_hashed_secret(secret: str, hashed_secret: str) -> bool:
    """Blocking: True when ``secret`` matches Fig's hashed secret."""
    try:
        return bcrypt.checkpw(fig_prehash(secret), hashed_secret.strip().encode("ascii"))
    except ValueError:
        return False


def presented_secret(header: str | None) -> str | None:
    """The secret in an ``Authorization: Secret <secret>`` header, or None for any other form.

    The scheme is compared case-insensitively and surrounding whitespace is ignored. A header
    that is not valid UTF-8 (aiohttp hands its bytes on as surrogate escapes) carries no secret.
    """
    if not header:
        return None
    m = _SECRET_HEADER.fullmatch(header.strip())
    if m is None:
        return None
    secret = m.group(1)
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return secret


class AuthOutcome(enum.Enum):
    ACCEPTED = "accepted"
    MISSING = "missing"
    MALFORMED = "malformed"
    WRONG = "wrong"
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """The answer to one request's Authorization header; ``message`` says what to fix."""

    outcome: AuthOutcome
    message: str = ""
    retry_after: int | None = None
    """Seconds to wait, for BUSY (answered 429): the peer has too many checks waiting."""

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.ACCEPTED


_ACCEPTED = AuthVerdict(AuthOutcome.ACCEPTED)
_MISSING = AuthVerdict(AuthOutcome.MISSING, f"the request has no Authorization header; send '{EXPECTED_HEADER}' with the secret of the Fig web hook client")
_MALFORMED = AuthVerdict(
    AuthOutcome.MALFORMED,
    f"the Authorization header is not of the form '{EXPECTED_HEADER}' (the scheme Secret, one space, the secret as one UTF-8 word); "
    "use the secret of the Fig web hook client",
)
_WRONG = AuthVerdict(AuthOutcome.WRONG, f"wrong secret in '{EXPECTED_HEADER}'; use the secret of the Fig web hook client")


# --- taking turns between peers -------------------------------------------------------------------

_Job = TypeVar("_Job")


class PeerBusy(Exception):
    """A peer already has as many checks waiting as it may; refuse its request without checking."""

    def __init__(self, peer: str, waiting: int, retry_after: int = 1) -> None:
        super().__init__(f"{peer} has {waiting} secret checks waiting")
        self.peer = peer
        self.waiting = waiting
        self.retry_after = retry_after


@dataclass(slots=True)
class _Waiting(Generic[_Job]):
    job: _Job
    result: asyncio.Future[bool]


class PeerScheduler(Generic[_Job]):
    """Runs expensive checks ``workers`` at a time, taking turns between peers.

    Round-robin: a peer whose check finishes goes to the back of the line, behind every other peer
    that is waiting. Each peer has at most one check running and ``max_waiting`` waiting, so one
    peer's flood delays another peer by at most about one check (when ``workers`` is 1; with two
    workers and one flooding peer, not at all). ``run`` is the check itself, injectable for tests.
    """

    def __init__(self, run: Callable[[_Job], Awaitable[bool]], workers: int = 2, max_waiting: int = 8) -> None:
        self._run = run
        self._workers = max(1, workers)
        self._max_waiting = max(1, max_waiting)
        self._waiting: dict[str, deque[_Waiting[_Job]]] = {}
        self._turns: deque[str] = deque()  # peers with a check waiting and none running, in turn order
        self._running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def waiting(self, peer: str) -> int:
        return len(self._waiting.get(peer, ()))

    async def submit(self, peer: str, job: _Job) -> bool:
        """The check's result, once it has had its turn; raise PeerBusy when the peer's line is full."""
        line = self._waiting.get(peer)
        if line is not None and len(line) >= self._max_waiting:
            raise PeerBusy(peer, len(line))
        if line is None:
            line = self._waiting[peer] = deque()
        waiting = _Waiting(job, asyncio.get_running_loop().create_future())
        line.append(waiting)
        if len(line) == 1 and peer not in self._running:
            self._turns.append(peer)
        self._start_next()
        return await waiting.result

    def _start_next(self) -> None:
        while len(self._running) < self._workers and self._turns:
            peer = self._turns.popleft()
            line = self._waiting[peer]
            while line and line[0].result.done():  # its requester went away before its turn
                line.popleft()
            if not line:
                del self._waiting[peer]
                continue
            waiting = line.popleft()
            self._running.add(peer)
            task = asyncio.get_running_loop().create_task(self._check(peer, waiting))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _check(self, peer: str, waiting: _Waiting[_Job]) -> None:
        try:
            ok = await self._run(waiting.job)
        except BaseException as exc:
            if not waiting.result.done():
                if isinstance(exc, asyncio.CancelledError):
                    waiting.result.cancel()
                else:
                    waiting.result.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not waiting.result.done():
                waiting.result.set_result(ok)
        finally:
            self._running.discard(peer)
            if self._waiting.get(peer):
                self._turns.append(peer)  # the back of the line: every other waiting peer goes first
            else:
                self._waiting.pop(peer, None)
            self._start_next()


# --- the checker ----------------------------------------------------------------------------------


def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


async def _bcrypt_in_thread(job: tuple[str, str]) -> bool:
    secret, hashed = job
    return await asyncio.to_thread(verify_hashed_secret, secret, hashed)


class SecretChecker:
    """Answers whether a request's Authorization header carries the intake secret."""

    _REMEMBER_WRONG = 256
    MAX_WAITING_PER_PEER = 8

    def __init__(self, secret: str | None = None, hashed_secret: str | None = None, workers: int | None = None) -> None:
        self._plain = secret.encode("utf-8") if secret is not None else None
        self._hashed = hashed_secret.strip() if hashed_secret is not None else None
        self._verified: bytes | None = None
        self._wrong: OrderedDict[bytes, None] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}
        self._scheduler: PeerScheduler[tuple[str, str]] = PeerScheduler(
            _bcrypt_in_thread, workers or _default_workers(), self.MAX_WAITING_PER_PEER
        )

    @property
    def required(self) -> bool:
        return self._plain is not None or self._hashed is not None

    def same_as(self, secret: str | None, hashed_secret: str | None) -> bool:
        """True when built from these settings (so a reload can keep this checker and its cache)."""
        plain = secret.encode("utf-8") if secret is not None else None
        hashed = hashed_secret.strip() if hashed_secret is not None else None
        return plain == self._plain and hashed == self._hashed

    async def check(self, header: str | None, peer: str = "") -> bool:
        """True when ``header`` carries the secret (or none is required)."""
        return (await self.verify(header, peer)).ok

    async def verify(self, header: str | None, peer: str = "") -> AuthVerdict:
        """The verdict on ``header`` sent by ``peer`` (an address: checks take turns between peers)."""
        if not self.required:
            return _ACCEPTED
        if header is None or not header.strip():
            return _MISSING
        secret = presented_secret(header)
        if secret is None:
            return _MALFORMED
        if self._plain is not None:
            return _ACCEPTED if hmac.compare_digest(secret.encode("utf-8"), self._plain) else _WRONG
        try:
            ok = await self._hashed_check(secret, peer)
        except PeerBusy as busy:
            return AuthVerdict(
                AuthOutcome.BUSY,
                f"too many secret checks from {peer or 'this peer'} are waiting ({busy.waiting}); retry after {busy.retry_after}s, "
                f"and check that the sender uses the secret of the Fig web hook client in '{EXPECTED_HEADER}'",
                busy.retry_after,
            )
        return _ACCEPTED if ok else _WRONG

    async def _hashed_check(self, secret: str, peer: str) -> bool:
        digest = hashlib.sha256(secret.encode("utf-8")).digest()
        if self._verified is not None and hmac.compare_digest(digest, self._verified):
            return True
        if digest in self._wrong:
            return False
        pending = self._in_flight.get(digest)
        if pending is None:
            # one bcrypt per distinct secret: requests presenting it meanwhile share the result, and
            # the check completes (and is remembered) even if its first requester goes away
            pending = asyncio.ensure_future(self._bcrypt(digest, secret, peer))
            self._in_flight[digest] = pending
            pending.add_done_callback(lambda _: self._in_flight.pop(digest, None))
        return await asyncio.shield(pending)

    async def _bcrypt(self, digest: bytes, secret: str, peer: str) -> bool:
        assert self._hashed is not None
        ok = await self._scheduler.submit(peer, (secret, self._hashed))
        if ok:
            self._verified = digest
        else:
            self._wrong[digest] = None
            while len(self._wrong) > self._REMEMBER_WRONG:
                self._wrong.popitem(last=False)
        return ok
