"""Unit tests for figrelay.sizes (byte sizes in configuration) and the ``journal:`` key that uses
them: values, defaults, and errors that name the file, the line, the key and the allowed forms."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel, ValidationError
from test_config import BASE, REPO, Loader, assert_problem, cfg, registry  # noqa: F401  (fixtures)

from figrelay.config import JournalSettings
from figrelay.sizes import FORMS, Size, format_size, parse_size


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        (4096.0, 4096),
        ("256MB", 256_000_000),
        ("256 MB", 256_000_000),
        ("256mb", 256_000_000),
        ("1GB", 1_000_000_000),
        ("1.5GB", 1_500_000_000),
        ("1.1MB", 1_100_000),
        ("512MiB", 512 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("0.5KiB", 512),
        ("10kB", 10_000),
        ("1TB", 10**12),
        ("100B", 100),
        ("0", 0),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("256M", "ambiguous: write 256MB for powers of 1000 or 256MiB for powers of 1024"),
        ("1g", "ambiguous: write 1GB for powers of 1000 or 1GiB for powers of 1024"),
        ("1XB", "unknown unit 'XB'"),
        ("256 megabytes", "unknown unit"),
        ("-1GB", "must not be negative"),
        (-5, "must not be negative"),
        ("1.5B", "not a whole number of bytes"),
        (1.5, "not a whole number of bytes"),
        ("", "is not a size"),
        ("MB", "is not a size"),
        ("1e6", "is not a size"),
        (True, "must be a size, not true"),
        (None, "must be a size"),
        ([1], "must be a size"),
        (float("nan"), "must be a size, not nan"),
        (float("inf"), "must be a size, not inf"),
    ],
)
def test_parse_size_errors_say_what_and_how(value: object, says: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_size(value)
    assert says in str(err.value)
    if "ambiguous" not in says:
        assert FORMS in str(err.value)  # the allowed forms, every time


@pytest.mark.parametrize(
    ("size", "text"),
    [(256_000_000, "256MB"), (512 * 1024**2, "512MiB"), (1_500_000_000, "1.5GB"), (1024, "1KiB"), (1000, "1kB"), (17, "17B"), (0, "0B")],
)
def test_format_size_writes_what_parses_back(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size


def test_format_size_of_a_measure_rounds_to_three_digits() -> None:
    assert [format_size(n, exact=False) for n in (999, 12_345_678, 999_999, 1_234_567_890_123)] == ["999B", "12.3MB", "1MB", "1.23TB"]


def test_size_as_pydantic_field() -> None:
    class M(BaseModel):
        limit: Size = 1000

    assert M().limit == 1000
    assert M(limit="1MiB").limit == 1024**2  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        M(limit="lots")  # type: ignore[arg-type]


# --- journal: in the configuration -----------------------------------------------------------------


def test_journal_defaults(cfg: Loader) -> None:  # noqa: F811
    journal = cfg.load(BASE).journal
    assert journal == JournalSettings()
    assert (journal.enabled, journal.retention, journal.max_bytes) == (True, 7 * 86400, 256_000_000)


def test_journal_settings(cfg: Loader) -> None:  # noqa: F811
    journal = cfg.load(BASE + "journal:\n  enabled: false\n  retention: 36h\n  max_bytes: 1GiB\n").journal
    assert (journal.enabled, journal.retention, journal.max_bytes) == (False, 36 * 3600, 1024**3)
    assert cfg.load(BASE + "journal:\n  max_bytes: 2000000000\n").journal.max_bytes == 2_000_000_000
    assert cfg.load(BASE + "journal: {enabled: false}\n").journal.enabled is False
    with pytest.raises(ValidationError):  # frozen, like the rest of the configuration
        journal.enabled = True  # type: ignore[misc]


def test_a_bad_journal_size_names_file_line_key_and_the_forms(cfg: Loader) -> None:  # noqa: F811
    text = BASE + "journal:\n  retention: 7d\n  max_bytes: 256 XB\n"
    p = cfg.problem(text, "journal.max_bytes")
    assert_problem(p, 9, "journal.max_bytes", "'256 XB' has an unknown unit 'XB'", "256MB, 1GB or 512MiB", "KiB, MiB, GiB, TiB")


def test_a_bare_small_number_is_taken_for_bytes_and_refused_with_a_hint(cfg: Loader) -> None:  # noqa: F811
    p = cfg.problem(BASE + "journal:\n  max_bytes: 256\n", "journal.max_bytes")
    assert_problem(p, 8, "journal.max_bytes", "is 256 bytes", "at least 1MB", "Did you mean 256MB?", "journal.enabled: false")


def test_journal_errors_are_reported_together(cfg: Loader) -> None:  # noqa: F811
    err = cfg.error(BASE + "journal:\n  enabled: maybe\n  retention: 0\n  max_bytes: 1G\n  keep: all\n")
    found = {p.key: p for p in err.problems}
    assert_problem(found["journal.enabled"], 8, "journal.enabled", "boolean")
    assert_problem(found["journal.retention"], 9, "journal.retention", "must be more than 0", "journal.enabled: false")
    assert_problem(found["journal.max_bytes"], 10, "journal.max_bytes", "ambiguous", "1GB", "1GiB")
    assert_problem(found["journal.keep"], 11, "journal.keep", "unknown key 'keep'", "allowed: enabled, max_bytes, retention")


def test_every_size_unit_is_accepted_and_documented() -> None:
    from figrelay.sizes import UNITS

    shown = ("B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB")
    assert {u.lower() for u in shown} == set(UNITS)
    for doc in (REPO / "README.md", REPO / "config.example.yaml"):
        text = doc.read_text()
        start = text.index("Sizes")
        described = text[start : text.index("\n", text.index("TiB", start))]
        for unit in shown:
            assert re.search(rf"(?<![A-Za-z]){unit}(?![A-Za-z])", described), f"{doc.name} does not show the size unit {unit!r}: {described!r}"
        assert "1000" in described and "1024" in described, f"{doc.name} does not say which units are powers of 1000 and of 1024"
