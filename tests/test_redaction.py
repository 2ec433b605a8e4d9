"""Secrets masked exactly: every configured credential, in every form a target may echo it (plain,
URL-encoded, JSON-escaped, cut short), and nothing else: plain header values, client names and
public parts of a credential URL stay readable, in the log and in the commands' output."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from conftest import event, wait_until
from figrelay.config import load_config
from figrelay.logs import REDACTED, RedactSecrets, secret_parts
from figrelay.plugins import load_plugins
from figrelay.testing import Received
from test_e2e import daemon_config, outbox_rows

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"

TOKEN = "xoxb-1234-5678-botsecrettoken"
SLACK_URL = "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/XXXXslackpathYYYY1234"
SIG = "AbCdEfGh/IjKl+MnOp=="
TEAMS_URL = (
    "https://prod-01.westeurope.logic.azure.com:443/workflows/0123456789abcdef0123456789abcdef/triggers/manual/paths/invoke"
    f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={quote(SIG, safe='')}"
)


@pytest.fixture
def redactor() -> Iterator[RedactSecrets]:
    r = RedactSecrets()
    r.update([TOKEN, SLACK_URL, TEAMS_URL, "pass word 42", "päss-wörd-€9", "abcd"])
    yield r


def json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1].replace("/", "\\/")


def every_char_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


# --- every form of a credential ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        lambda s: s,
        lambda s: quote(s, safe=""),
        lambda s: quote(s, safe="/"),
        lambda s: quote_plus(s),
        json_escaped,
        lambda s: json.dumps(s, ensure_ascii=True)[1:-1],
        every_char_escaped,
        lambda s: every_char_escaped(s).upper().replace("\\U", "\\u"),
    ],
    ids=["plain", "url", "url-keep-slash", "form", "json", "json-ascii", "json-every-char", "json-upper-hex"],
)
@pytest.mark.parametrize("secret", [TOKEN, "pass word 42", "päss-wörd-€9", "XXXXslackpathYYYY1234", SIG])
def test_a_credential_is_masked_in_every_encoding(redactor: RedactSecrets, secret: str, form) -> None:
    text = f"HTTP 400: bad request {form(secret)} (end)"
    assert redactor.redact(text) == f"HTTP 400: bad request {REDACTED} (end)"


def test_lower_case_percent_hex_is_the_same_credential(redactor: RedactSecrets) -> None:
    shown = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(TOKEN + "/", safe=""))
    assert redactor.redact(f"x {shown} y") == f"x {REDACTED}%2f y"


def test_mixed_encodings_within_one_credential(redactor: RedactSecrets) -> None:
    mixed = "xoxb%2D1234\\u002d5678-bot" + "secrettoken"
    assert redactor.redact(f'{{"echo": "{mixed}"}}') == f'{{"echo": "{REDACTED}"}}'


@pytest.mark.parametrize("cut", [8, 9, 15, len(TOKEN) - 1])
@pytest.mark.parametrize("after", ["", "…", "...", '"}', " | next"])
def test_a_credential_cut_short_is_masked_from_8_characters_on(redactor: RedactSecrets, cut: int, after: str) -> None:
    assert redactor.redact(f"Authorization: Bearer {TOKEN[:cut]}{after}") == f"Authorization: Bearer {REDACTED}{after}"
    assert redactor.redact(f"Bearer {quote(TOKEN[:cut], safe='')}{after}") == f"Bearer {REDACTED}{after}"


def test_fewer_than_8_characters_of_a_credential_are_not_a_credential(redactor: RedactSecrets) -> None:
    assert redactor.redact(f"Bearer {TOKEN[:7]}…") == f"Bearer {TOKEN[:7]}…"


def test_two_credentials_with_the_same_start_are_each_masked_whole() -> None:
    r = RedactSecrets()
    r.update(["shared-start-ONE-aaaa", "shared-start-TWO-bbbbbbbb"])
    assert r.redact("a shared-start-ONE-aaaa b shared-start-TWO-bbbbbbbb c") == f"a {REDACTED} b {REDACTED} c"


def test_a_control_character_in_a_credential_is_masked_as_the_log_escapes_it() -> None:
    r = RedactSecrets()
    r.update(["tab\there-secret"])
    assert r.redact("echo tab\\there-secret") == f"echo {REDACTED}"


# --- credential URLs: their secret parts, not their public ones ------------------------------------


def test_a_slack_webhook_url_is_masked_by_its_path_and_keeps_its_host(redactor: RedactSecrets) -> None:
    path = SLACK_URL.split(".com/", 1)[1]
    assert redactor.redact(f"POST {SLACK_URL}") == f"POST https://hooks.slack.com/{REDACTED}"
    assert redactor.redact(f"POST /{path} HTTP/1.1") == f"POST /{REDACTED} HTTP/1.1"
    assert redactor.redact("url=" + quote(SLACK_URL, safe="")) == f"url=https%3A%2F%2Fhooks.slack.com%2F{REDACTED}"
    # cut short inside the path: the key-like segments go, the public words stay
    cut = redactor.redact("POST /services/T0123ABCD/B0456EFGH/XXXXslackpa…")
    assert cut == f"POST /services/{REDACTED}/{REDACTED}/{REDACTED}…"
    plain = "no route /services/ on hooks.slack.com; see https://api.slack.com/messaging/webhooks"
    assert redactor.redact(plain) == plain


def test_a_teams_workflow_url_is_masked_by_its_signature_and_ids(redactor: RedactSecrets) -> None:
    masked = redactor.redact(f"cannot reach {TEAMS_URL}: refused")
    assert SIG not in masked and quote(SIG, safe="") not in masked and "0123456789abcdef" not in masked
    assert masked.startswith("cannot reach https://prod-01.westeurope.logic.azure.com:443/")
    for text in (f"sig={SIG}", f"sig%3D{quote(SIG, safe='')}", json_escaped(f'"sig": "{SIG}"'), f"sig={SIG[:10]}…"):
        assert SIG[:8] not in redactor.redact(text) and quote(SIG, safe="")[:8] not in redactor.redact(text), text
    plain = "workflows triggers manual paths invoke api-version=2016-06-01 sp=/triggers/manual/run"
    assert redactor.redact(plain) == plain


def test_secret_parts_of_urls() -> None:
    assert {p.text for p in secret_parts("https://user:hunter2-password@example.com/fig/")} == {"hunter2-password"}
    assert secret_parts("https://siem.example.com/fig/") == []  # nothing secret in it: nothing to mask
    assert {p.text for p in secret_parts("https://x.example.com/api?code=AbC123xyz&lang=en")} == {"AbC123xyz", "code=AbC123xyz&lang=en"}


# --- nothing but credentials ------------------------------------------------------------------------


def test_short_credentials_are_masked_only_as_whole_words(redactor: RedactSecrets) -> None:
    assert redactor.redact("password abcd, abcdef, xabcd, abcd") == f"password {REDACTED}, abcdef, xabcd, {REDACTED}"
    # a word in an encoded text: after an escape, not after a letter
    assert redactor.redact("q=x%20abcd%26y") == f"q=x%20{REDACTED}%26y"
    assert redactor.redact('"pw":"\\u0020abcd"') == f'"pw":"\\u0020{REDACTED}"'


def test_credentials_under_4_characters_are_not_masked_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    r = RedactSecrets()
    with caplog.at_level(logging.WARNING, logger="figrelay.logs"):
        r.update(["ab", "long-enough-secret"])
        r.update(["ab", "long-enough-secret"])  # a reload with the same file: said once
    assert r.redact("ab cab long-enough-secret") == f"ab cab {REDACTED}"
    assert [rec.getMessage() for rec in caplog.records] == [
        "a configured credential has only 2 characters: figrelay masks credentials of 4 characters or more in its logs "
        "and outputs, so this one is not; use a longer secret"
    ]


def example_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """config.example.yaml with its commented http client in use."""
    monkeypatch.setenv("SIEM_SECRET", "siem-secret-value-1")
    monkeypatch.setenv("SIEM_SIGNING_KEY", "whsec_c2lnbmluZy1rZXk=")
    monkeypatch.setenv("SIEM_AUTH", "siem-auth-value-2")
    block = re.search(r"(?ms)^  # - name: siem\n.*?(?=^\s*$)", EXAMPLE.read_text()).group(0)  # type: ignore[union-attr]
    client = re.sub(r"(?m)^  # (- |  )", r"  \1", block).replace("name: siem", "name: platform-teams")
    client = "\n".join(line for line in client.splitlines() if "ca_file" not in line)
    path = tmp_path / "figrelay.yaml"
    path.write_text(f"clients:\n{client}\nhooks:\n  - {{event: SettingValueChanged, client: platform-teams}}\n")
    return load_config(path, load_plugins())


def test_the_examples_plain_header_is_no_secret_and_its_credentials_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = example_config(tmp_path, monkeypatch)
    assert config.clients["platform-teams"].options.header_values() == {"X-Team": "platform", "X-Auth": "siem-auth-value-2"}
    assert config.secrets == {"siem-secret-value-1", "whsec_c2lnbmluZy1rZXk=", "siem-auth-value-2"}
    r = RedactSecrets()
    r.update(config.secrets)
    line = "delivery 6f0c: SettingValueChanged to platform-teams failed: HTTP 400: X-Team: platform X-Auth: siem-auth-value-2"
    assert r.redact(line) == f"delivery 6f0c: SettingValueChanged to platform-teams failed: HTTP 400: X-Team: platform X-Auth: {REDACTED}"


# --- the real daemon: names and plain headers stay readable ------------------------------------------


async def test_client_names_and_plain_headers_are_not_masked_in_logs_or_command_output(daemon_factory, receiver_factory) -> None:
    receiver = await receiver_factory()

    def refuse(request: Received) -> web.Response:  # echoes the headers back, as a proxy's error page may
        echoed = " ".join(f"{k}: {v}" for k, v in request.headers.items() if k.startswith("X-") and k != "X-Figrelay-Delivery")
        return web.Response(status=400, text=f"rejected {echoed}")

    receiver.responder = refuse
    clients = f"""  - name: platform-teams
    type: http
    base_uri: {receiver.url}/fig/
    secret: downstream-secret-1
    headers: {{X-Team: platform, X-Api-Key: api-key-value-2, X-Auth: auth-value-3}}
    secret_headers: [X-Auth]"""
    d = await daemon_factory(daemon_config(clients, "  - {event: SettingValueChanged, client: platform-teams}", "  secret: intake-secret-4"))
    status, _ = await d.post("SettingValueChanged", event("SettingValueChanged"), {"Authorization": "Secret intake-secret-4"})
    assert status == 200
    await wait_until(lambda: len(outbox_rows(d.config_path.parent, "dead")) == 1, what="the dead letter")
    await d.wait_for_log(r"to platform-teams failed for good")
    await d.stop()
    outputs = {"log": d.log, "dead letter": str(outbox_rows(d.config_path.parent, "dead"))}
    for args in (["deliveries"], ["test", "platform-teams"]):
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "figrelay", *args, "--config", str(d.config_path)], capture_output=True, text=True, timeout=120,
        )
        outputs[" ".join(args)] = result.stdout + result.stderr
    for where, text in outputs.items():
        assert "***-teams" not in text and "X-Team: ***" not in text, f"{where}: a plain value was masked:\n{text}"
        assert "X-Team: platform" in text, f"{where}: the plain header is not shown:\n{text}"
        assert "X-Api-Key: ***" in text and "X-Auth: ***" in text, f"{where}: a secret header is not masked:\n{text}"
        for secret in ("downstream-secret-1", "api-key-value-2", "auth-value-3", "intake-secret-4"):
            assert secret not in text, f"{where}: {secret} leaked"
    for where in ("log", "deliveries", "test platform-teams"):
        assert "platform-teams" in outputs[where], f"{where}: the client name is not shown:\n{outputs[where]}"
