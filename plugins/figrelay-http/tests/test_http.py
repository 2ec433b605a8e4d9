"""The http client type against a real local receiver."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError

import figrelay_http
from figrelay.config import parse_config
from figrelay.delivery import ClientContext, Delivered, Delivery, Failed, Retry
from figrelay.events import parse_event_body
from figrelay.plugins import load_plugins
from figrelay.testing import http_receiver
from figrelay_http import DELIVERY_ID_HEADER, HttpOptions, HttpTarget, is_secret_header, standard_webhooks_headers

BODY = (
    b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Timeout","RetryCount"],"Username":"admin",'
    b'"Link":"http://localhost:5050/","ChangeMessage":"Increase timeout for peak","IsTest":false}'
)


def delivery(attempt: int = 1) -> Delivery:
    return Delivery("d" * 32, "siem", parse_event_body("SettingValueChanged", BODY), BODY, attempt, 0.0)


async def target(**options) -> tuple[HttpTarget, aiohttp.ClientSession]:
    http = aiohttp.ClientSession()
    context = ClientContext("siem", HttpOptions(**options), http, logging.getLogger("test"), Path("."))
    return HttpTarget(context), http


async def send(url: str, **options):
    t, http = await target(base_uri=url, **options)
    try:
        return await t.deliver(delivery())
    finally:
        await http.close()


async def test_posts_fig_wire_format_to_base_uri_plus_route():
    async with http_receiver() as rec:
        outcome = await send(rec.url + "/fig", secret="s3cret", headers={"X-Team": "platform"})
        assert outcome == Delivered("HTTP 200", status=200)
        [got] = rec.requests
        assert got.path == "/fig/SettingValueChanged"  # no trailing slash given: treated as if present
        assert got.body == BODY
        assert got.headers["Content-Type"] == "application/json; charset=utf-8"
        assert got.headers["Authorization"] == "Secret s3cret"
        assert got.headers["X-Team"] == "platform"
        assert got.headers[DELIVERY_ID_HEADER] == "d" * 32


async def test_no_authorization_without_secret():
    async with http_receiver() as rec:
        await send(rec.url + "/")
        assert "Authorization" not in rec.requests[0].headers


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_retryable_statuses(status):
    async with http_receiver() as rec:
        rec.responder = lambda r: web.Response(status=status, text="later", headers={"Retry-After": "7"})
        outcome = await send(rec.url)
        assert isinstance(outcome, Retry) and outcome.retry_after == 7.0
        assert f"HTTP {status}: later" == outcome.reason


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 413, 422, 301, 302])
async def test_permanent_statuses_and_redirects_not_followed(status):
    async with http_receiver() as rec:
        rec.responder = lambda r: web.Response(status=status, text="nope", headers={"Location": rec.url + "/elsewhere"})
        outcome = await send(rec.url)
        assert isinstance(outcome, Failed) and outcome.reason.startswith(f"HTTP {status}")
        assert rec.paths() == ["/SettingValueChanged"]


async def test_any_2xx_is_success():
    async with http_receiver() as rec:
        rec.responder = lambda r: web.Response(status=202)
        assert isinstance(await send(rec.url), Delivered)


async def test_connection_refused_is_retryable():
    async with http_receiver() as rec:
        url = rec.url
    outcome = await send(url)
    assert isinstance(outcome, Retry) and "cannot reach" in outcome.reason


async def test_timeout_is_retryable():
    gate = asyncio.Event()

    async def slow(request):
        await gate.wait()
        return web.Response()

    async with http_receiver() as rec:
        rec.responder = slow
        outcome = await send(rec.url, timeout="0.2s")
        gate.set()
    assert isinstance(outcome, Retry) and "within 0.2s" in outcome.reason


async def test_standard_webhooks_signature():
    key = base64.b64encode(b"0123456789abcdef").decode()
    async with http_receiver() as rec:
        await send(rec.url, signing_secret=f"whsec_{key}")
        headers = rec.requests[0].headers
    assert headers["webhook-id"] == "d" * 32
    signed = f"{'d' * 32}.{headers['webhook-timestamp']}.".encode() + BODY
    expected = base64.b64encode(hmac.new(b"0123456789abcdef", signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert standard_webhooks_headers(b"k", "id", b"{}", now=lambda: 1700000000)["webhook-timestamp"] == "1700000000"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"base_uri": "ftp://x/"}, "http:// or https://"),
        ({"base_uri": "https://x/?a=1"}, "query"),
        ({"base_uri": "https://x/", "headers": {"Authorization": "x"}}, "set 'secret' instead"),
        ({"base_uri": "https://x/", "headers": {"Content-Type": "x"}}, "set by figrelay"),
        ({"base_uri": "https://x/", "timeout": "0s"}, "more than 0"),
        ({"base_uri": "https://x/", "signing_secret": "whsec_***"}, "base64"),
        ({"base_uri": "https://x/", "secert": "x"}, "Extra inputs"),
    ],
)
def test_options_are_validated(options, message):
    with pytest.raises(ValidationError) as info:
        HttpOptions(**options)
    assert message in str(info.value)


# --- which header values are credentials ----------------------------------------------------------


def test_header_values_are_secret_by_name_or_by_mark_and_plain_otherwise():
    options = HttpOptions(
        base_uri="https://x/",
        headers={
            "X-Team": "platform", "X-Api-Key": "key-value-1", "X-Auth-Token": "token-value-2", "Cookie": "session=3",
            "Proxy-Authorization": "Basic dXNlcjpwdw==", "X-Client-Secret": "secret-value-4", "x-tenant": "tenant-value-5",
        },
        secret_headers=["X-Tenant"],  # case-insensitive, as header names are
    )
    plain = {name for name, value in options.headers.items() if isinstance(value, str)}
    assert plain == {"X-Team"}
    assert all(isinstance(options.headers[n], SecretStr) for n in options.headers if n != "X-Team")
    assert "key-value-1" not in repr(options) and "tenant-value-5" not in repr(options) and "platform" in repr(options)
    assert options.header_values()["X-Api-Key"] == "key-value-1"
    for name in ("Authorization", "proxy-authorization", "COOKIE", "X-Access-Token", "Api-Key", "X-Webhook-Secret", "X-Password"):
        assert is_secret_header(name), name
    for name in ("X-Team", "X-Keyboard", "Monkey", "X-Tokens", "Accept"):
        assert not is_secret_header(name), name


def test_secret_config_values_are_collected_but_plain_header_values_are_not(tmp_path: Path):
    registry = load_plugins([("http", figrelay_http)], entry_points=False)
    text = """
clients:
  - name: platform-teams
    type: http
    base_uri: https://siem.example.com/fig/
    secret: client-secret-1
    headers: {X-Team: platform, X-Api-Key: api-key-value-2, X-Tenant: tenant-value-3}
    secret_headers: [X-Tenant]
hooks:
  - {event: SettingValueChanged, client: platform-teams}
"""
    config = parse_config(text, tmp_path / "figrelay.yaml", registry)
    assert config.secrets == frozenset({"client-secret-1", "api-key-value-2", "tenant-value-3"})


async def test_secret_header_values_are_sent_as_configured():
    async with http_receiver() as rec:
        await send(rec.url, headers={"X-Team": "platform", "X-Api-Key": "k-123", "X-Tenant": "t-456"}, secret_headers=["X-Tenant"])
        headers = rec.requests[0].headers
    assert (headers["X-Team"], headers["X-Api-Key"], headers["X-Tenant"]) == ("platform", "k-123", "t-456")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"headers": {"X-Team": "a"}, "secret_headers": ["X-Tenant"]}, "secret_headers names X-Tenant, which is not in headers (headers: X-Team)"),
        ({"secret_headers": ["X Tenant"]}, "is not a header name"),
        ({"headers": {"X-Team": 7}}, "valid string"),
    ],
)
def test_secret_headers_are_validated(options, message):
    with pytest.raises(ValidationError) as info:
        HttpOptions(base_uri="https://x/", **options)
    assert message in str(info.value)
