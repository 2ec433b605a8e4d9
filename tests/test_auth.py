"""Unit tests for figrelay.auth: Fig's "Authorization: Secret <secret>" with a plain secret or with
Fig's hashed secret (bcrypt over base64(SHA-384(secret))), and the cache of verified secrets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import bcrypt
import pytest

import figrelay.auth
from figrelay.auth import SecretChecker, fig_prehash, presented_secret, verify_hashed_secret

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
        ("abc", "abc"),
        ("Bearer x y z", "z"),
        ("", None),
        (None, None),
        ("   ", None),
    ],
)
def test_presented_secret_is_the_last_word(header: str | None, expected: str | None) -> None:
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
