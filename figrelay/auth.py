"""Checks Fig's ``Authorization: Secret <secret>`` header against the configured secret.

Fig's web app shows the admin a *hashed* secret: BCrypt.Net-Next's EnhancedHashPassword, which
runs bcrypt over base64(SHA-384(secret)). bcrypt at cost 11 costs tens of milliseconds, so a
verified secret is remembered (as its SHA-256, compared in constant time) and bcrypt only ever
runs in a worker thread, one check at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections import OrderedDict

import bcrypt


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
    """The secret in an Authorization header: its last space-separated word, as Fig's receivers take it."""
    if not header:
        return None
    words = header.split()
    return words[-1] if words else None


class SecretChecker:
    """Answers whether a request's Authorization header carries the intake secret."""

    _REMEMBER_WRONG = 256

    def __init__(self, secret: str | None = None, hashed_secret: str | None = None) -> None:
        self._plain = secret.encode("utf-8") if secret is not None else None
        self._hashed = hashed_secret.strip() if hashed_secret is not None else None
        self._verified: bytes | None = None
        self._wrong: OrderedDict[bytes, None] = OrderedDict()
        self._bcrypt_lock = asyncio.Lock()

    @property
    def required(self) -> bool:
        return self._plain is not None or self._hashed is not None

    def same_as(self, secret: str | None, hashed_secret: str | None) -> bool:
        """True when built from these settings (so a reload can keep this checker and its cache)."""
        plain = secret.encode("utf-8") if secret is not None else None
        hashed = hashed_secret.strip() if hashed_secret is not None else None
        return plain == self._plain and hashed == self._hashed

    async def check(self, header: str | None) -> bool:
        if not self.required:
            return True
        secret = presented_secret(header)
        if secret is None:
            return False
        if self._plain is not None:
            return hmac.compare_digest(secret.encode("utf-8"), self._plain)
        assert self._hashed is not None
        digest = hashlib.sha256(secret.encode("utf-8")).digest()
        if self._verified is not None and hmac.compare_digest(digest, self._verified):
            return True
        if digest in self._wrong:
            return False
        async with self._bcrypt_lock:  # one bcrypt at a time: a flood of wrong secrets costs one core at most
            if self._verified is not None and hmac.compare_digest(digest, self._verified):
                return True
            if digest in self._wrong:
                return False
            ok = await asyncio.to_thread(verify_hashed_secret, secret, self._hashed)
        if ok:
            self._verified = digest
        else:
            self._wrong[digest] = None
            while len(self._wrong) > self._REMEMBER_WRONG:
                self._wrong.popitem(last=False)
        return ok
