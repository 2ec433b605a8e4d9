"""The http client type's body templates, url and content_type, against a real local receiver:
JSON of the user's making, checked at load and before each send; Fig's body untouched without."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

import figrelay_http
from figrelay.config import ConfigError, parse_config
from figrelay.delivery import ClientContext, ClientType, Delivered, Delivery, Failed
from figrelay.events import parse_event_body
from figrelay.messages import describe
from figrelay.plugins import load_plugins
from figrelay.testing import http_receiver
from figrelay_http import (
    BODY_CONTENT_TYPE,
    DELIVERY_ID_HEADER,
    FIG_CONTENT_TYPE,
    HttpOptions,
    HttpTarget,
    check_body_template,
    json_problem,
)

SETTING_CHANGED = (
    b'{"ClientName":"OrdersApi","Instance":null,"UpdatedSettings":["Timeout","RetryCount"],"Username":"admin",'
    b'"Link":"http://localhost:5050/","ChangeMessage":"Increase timeout for peak","IsTest":false}'
)
HEALTH = (
    b'{"ClientName":"OrdersApi","Instance":null,"Hostname":"orders-host-1","IpAddress":"10.0.0.12","Status":1,"FigVersion":"2.1.0",'
    b'"ApplicationVersion":"1.4.2","HealthDetails":{"Status":1,"Components":[{"Name":"Database","Status":1,"Message":"CPU high"}]},'
    b'"Link":"http://localhost:5050/clients","IsTest":false}'
)
BELOW = b'{"ClientName":"OrdersApi","Instance":null,"RunSessions":1,"RunSessionsEvent":0,"Link":"http://localhost:5050/clients","IsTest":false}'
CREATED_AT = 1748781296.789  # 2025-06-01T12:34:56.789Z


def delivery(route: str = "SettingValueChanged", body: bytes = SETTING_CHANGED, minimum: int | None = None) -> Delivery:
    return Delivery("d" * 32, "chat", parse_event_body(route, body), body, 1, CREATED_AT, minimum=minimum)


async def send(options: dict, the_delivery: Delivery | None = None, responder=None):
    """Deliver once through a real target to a real receiver; (outcome, requests received)."""
    async with http_receiver() as rec, aiohttp.ClientSession() as http:
        if responder is not None:
            rec.responder = responder
        resolved = {k: (v.replace("RECEIVER", rec.url) if isinstance(v, str) else v) for k, v in options.items()}
        target = HttpTarget(ClientContext("chat", HttpOptions(**resolved), http, logging.getLogger("test"), Path(".")))
        outcome = await target.deliver(the_delivery or delivery())
        return outcome, rec.requests


# --- sending ---------------------------------------------------------------------------------------


async def test_body_template_is_posted_as_json_to_url_as_given():
    outcome, [got] = await send({"url": "RECEIVER/api/webhooks/123/tok?key=k&token=t%3D", "body": '{"content": {{ message.title|tojson }}}'})
    assert outcome == Delivered("HTTP 200", status=200)
    assert got.path == "/api/webhooks/123/tok"  # nothing appended
    assert got.query == {"key": "k", "token": "t="}
    assert got.json == {"content": "OrdersApi: 2 settings changed"}
    assert got.headers["Content-Type"] == BODY_CONTENT_TYPE == "application/json"
    assert got.headers[DELIVERY_ID_HEADER] == "d" * 32


async def test_body_with_base_uri_still_gets_the_route_appended():
    _, [got] = await send({"base_uri": "RECEIVER/in/", "body": "{{ route|tojson }}"})
    assert (got.path, got.json) == ("/in/SettingValueChanged", "SettingValueChanged")


async def test_without_body_the_event_goes_byte_for_byte_even_to_a_url():
    odd = '{"ClientName":"Größe \\"Ä\\"","Instance":null,"UpdatedSettings":["✓"],"Username":null,"Link":null,"ChangeMessage":null,"IsTest":false}'
    body = odd.encode()
    _, [got] = await send({"url": "RECEIVER/one/place"}, delivery(body=body))
    assert got.body == body
    assert got.headers["Content-Type"] == FIG_CONTENT_TYPE
    assert got.path == "/one/place"


async def test_content_type_is_sent_as_configured_with_or_without_body():
    _, [got] = await send({"url": "RECEIVER/", "body": "{}", "content_type": "application/cloudevents+json; charset=utf-8"})
    assert got.headers["Content-Type"] == "application/cloudevents+json; charset=utf-8"
    _, [got] = await send({"url": "RECEIVER/", "content_type": "application/vnd.fig+json"})
    assert got.headers["Content-Type"] == "application/vnd.fig+json" and got.body == SETTING_CHANGED


async def test_the_context_is_the_title_and_text_templates_plus_delivery():
    body = """{
      "client": {{ ClientName|tojson }}, "settings": {{ UpdatedSettings|tojson }}, "by": {{ event.Username|tojson }},
      "route": {{ route|tojson }}, "severity": {{ severity|tojson }}, "test": {{ is_test|tojson }},
      "title": {{ message.title|tojson }}, "text": {{ message.text|tojson }}, "summary": {{ message.summary|tojson }},
      "link": {{ message.link|tojson }}, "facts": {{ message.facts|map(attribute="title")|list|tojson }},
      "delivery": {{ delivery|tojson }}, "event": {{ event|tojson }}
    }"""
    _, [got] = await send({"url": "RECEIVER/", "body": body})
    sent = got.json
    assert sent.pop("event") == json.loads(SETTING_CHANGED)
    message = describe(parse_event_body("SettingValueChanged", SETTING_CHANGED))
    assert sent == {
        "client": "OrdersApi", "settings": ["Timeout", "RetryCount"], "by": "admin", "route": "SettingValueChanged", "severity": "info",
        "test": False, "title": message.title, "text": message.text, "summary": message.summary, "link": "http://localhost:5050/",
        "facts": ["Settings", "Changed by", "Reason"],
        "delivery": {"id": "d" * 32, "client": "chat", "created_at": "2025-06-01T12:34:56.789Z"},
    }


async def test_the_message_knows_the_hooks_minimum_as_for_the_message_types():
    _, [got] = await send({"url": "RECEIVER/", "body": "{{ message.text|tojson }}"}, delivery("MinRunSessions", BELOW, minimum=2))
    assert got.json == "Only 1 run session left (minimum 2)."


async def test_text_beyond_ascii_is_sent_as_utf8():
    _, [got] = await send({"url": "RECEIVER/", "body": '{"a": "{{ severity }} ✓ Größe", "b": {{ message.summary|tojson }}}'})
    assert got.body.decode("utf-8").startswith('{"a": "info ✓ Größe"')
    assert got.json["b"].startswith("\N{INFORMATION SOURCE}")


async def test_the_signature_covers_the_body_sent():
    key = base64.b64encode(b"0123456789abcdef").decode()
    _, [got] = await send({"url": "RECEIVER/", "body": '{"t": {{ message.title|tojson }}}', "signing_secret": f"whsec_{key}"})
    signed = f"{'d' * 32}.{got.headers['webhook-timestamp']}.".encode() + got.body
    expected = base64.b64encode(hmac.new(b"0123456789abcdef", signed, hashlib.sha256).digest()).decode()
    assert got.headers["webhook-signature"] == f"v1,{expected}"


async def test_answers_are_classified_as_for_fig_format():
    from aiohttp import web

    outcome, _ = await send({"url": "RECEIVER/", "body": "{}"}, responder=lambda r: web.Response(status=400, text='{"content": ["Must be 2000 or fewer in length."]}'))
    assert isinstance(outcome, Failed) and outcome.reason.startswith("HTTP 400: ") and "2000 or fewer" in outcome.reason


# --- failures at send time: dead letters, not retries -------------------------------------------------


async def test_a_field_the_event_lacks_fails_the_delivery_with_a_hint_and_sends_nothing():
    outcome, requests = await send({"url": "RECEIVER/", "body": '{"s": {{ UpdatedSettings|tojson }}}'}, delivery("HealthStatusChanged", HEALTH))
    assert requests == []
    assert isinstance(outcome, Failed)
    assert outcome.reason == (
        "the body template failed on this HealthStatusChanged event: UndefinedError: 'UpdatedSettings' is undefined "
        "(HealthStatusChanged events have no UpdatedSettings: guard it with {% if UpdatedSettings is defined %}…{% endif %}, "
        "or send this client only the event types that have it)"
    )


async def test_invalid_json_at_send_time_fails_with_where_and_an_excerpt():
    # the samples pass the check; a quote in a real client's name does not
    body = '{"client": "{{ ClientName }}", "route": {{ route|tojson }}}'
    check_body_template(body)
    quoted = SETTING_CHANGED.replace(b'"OrdersApi"', b'"Orders \\"Api\\""')
    outcome, requests = await send({"url": "RECEIVER/", "body": body}, delivery(body=quoted))
    assert requests == []
    assert isinstance(outcome, Failed)
    assert outcome.reason == (
        "the body template made invalid JSON from this SettingValueChanged event: Expecting ',' delimiter at line 1, column 21: "
        '{"client": "Orders "<here>Api"", "route": "SettingValueC…; put each text through |tojson, e.g. {"content": {{ message.text|tojson }}}'
    )


def test_json_problems_say_where():
    assert json_problem('{"a": 1}') is None
    assert json_problem("  \n ") == "the template rendered nothing, and a body must be JSON"
    assert json_problem('{"a": NaN}') == "NaN is not JSON (JSON has no NaN or Infinity)"
    assert json_problem('{\n  "a": 1,\n  "b": \n}') == 'Expecting value at line 4, column 1: {\\n  "a": 1,\\n  "b": \\n<here>}'
    long = '{"text": "' + "x" * 100 + '" "y": 1}'
    assert json_problem(long) == "Expecting ',' delimiter at line 1, column 113: …xxxxxxxxxxxxxxxxxxxxxxxxxxxx\" <here>\"y\": 1}"
    assert json_problem('{"a": "line\nbreak"}') == (
        'Invalid control character (a line break or tab inside a string) at line 1, column 12: {"a": "line<here>\\nbreak"}'
    )


# --- checked at load ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"a": {{ message.title }', "bad template: template syntax error on its line 1: unexpected '}'"),
        ('{\n"a": {{ message.title|tojsn }}}', "bad template: template syntax error on its line 2: No filter named 'tojsn'."),
        ('{"a": {{ ClientNme|tojson }}}', "bad template: fails on a sample ClientStatusChanged event: UndefinedError: 'ClientNme' is undefined"),
        ('{"a": {{ message.titel|tojson }}}', "has no attribute 'titel'"),
        ('{"a": {{ message|tojson }}}', "a Message cannot be written as JSON; give tojson texts, numbers, lists or mappings (message.title, not message)"),
        # a filter in a branch is only found when the branch runs
        ('{% if is_test %}{{ x|nofilter }}{% endif %}{}', "fails on a sample ClientStatusChanged event: TemplateRuntimeError: No filter named 'nofilter' found."),
        ('{"text": "{{ message.text }}"}', "makes invalid JSON from a sample SettingValueChanged event: Invalid control character"),
        ("", "makes invalid JSON from a sample ClientStatusChanged event: the template rendered nothing"),
        (
            '{"s": {{ UpdatedSettings|tojson }}, "h": {{ HealthDetails|tojson }}}',
            "fails on a sample of every event type (on a ClientStatusChanged event: UndefinedError: 'UpdatedSettings' is undefined): "
            "it names HealthDetails, UpdatedSettings, which no one event type has all of; guard the fields of each type, "
            "e.g. {% if HealthDetails is defined %}…{% endif %}",
        ),
    ],
)
def test_a_bad_body_is_an_options_error(body, message):
    with pytest.raises(ValidationError) as info:
        HttpOptions(url="https://discord.com/api/webhooks/1/tok", body=body)
    [error] = info.value.errors()
    assert error["loc"] == ("body",)
    assert message in error["msg"], error["msg"]


@pytest.mark.parametrize(
    "body",
    [
        '{"settings": {{ UpdatedSettings|tojson }}}',  # SettingValueChanged only: its hooks may send nothing else
        '{"settings": {{ event.UpdatedSettings|tojson }}, "also": {{ event["ChangeMessage"]|tojson }}}',
        '{"s": {% if UpdatedSettings is defined %}{{ UpdatedSettings|tojson }}{% else %}null{% endif %}}',
        '{"a": {{ message.title|truncate(10, true, "…", 0)|tojson }}, "n": [1, 2.5, true, null]}',
        '[{{ delivery.id|tojson }}, {{ delivery.created_at|tojson }}]',
    ],
)
def test_good_bodies_pass(body):
    assert HttpOptions(url="https://x.example.com/hook", body=body).body == body


def test_bad_body_is_reported_with_file_line_and_key(tmp_path: Path):
    registry = load_plugins([("http", figrelay_http)], entry_points=False)
    text = """
clients:
  - name: chat
    type: http
    url: https://chat.example.com/hook
    body: |
      {
        "text": {{ message.text|tojson }},
        "who": {{ Usernme|tojson }}
      }
hooks:
  - {event: SettingValueChanged, client: chat}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, tmp_path / "figrelay.yaml", registry)
    [problem] = info.value.problems
    assert (problem.line, problem.key) == (6, "clients[0].body")
    assert problem.message == "bad template: fails on a sample ClientStatusChanged event: UndefinedError: 'Usernme' is undefined"
    assert str(problem).startswith(f"{tmp_path / 'figrelay.yaml'}:6: clients[0].body: bad template")


@pytest.mark.parametrize(
    "options, key, message",
    [
        ({}, "base_uri", "is required: where the receiver lives"),
        ({"base_uri": "https://x/", "url": "https://y/"}, "url", "set either base_uri (the event's route is appended) or url (used as it is), not both"),
        ({"url": "ftp://discord.com/api/webhooks/1/tok-secret"}, "url", "must be an http:// or https:// URL with a host"),
        ({"url": "https://discord.com:port/api/webhooks/1/tok-secret"}, "url", "is not a valid URL"),
        ({"url": "https://x/hook#frag"}, "url", "must not have a #fragment"),
        ({"url": "https://x/", "content_type": "json"}, "content_type", "is not a media type"),
        ({"url": "https://x/", "content_type": "application/json\r\nX-Evil: 1"}, "content_type", "is not a media type"),
        ({"url": "https://x/", "headers": {"content-type": "text/plain"}}, "headers", "choose it with the content_type option"),
    ],
)
def test_options_are_validated(options, key, message):
    with pytest.raises(ValidationError) as info:
        HttpOptions(**options)
    [error] = info.value.errors()
    assert error["loc"] == (key,)
    assert message in error["msg"]
    assert "tok-secret" not in error["msg"], "the URL is a credential: messages never repeat it"


def test_missing_address_is_reported_at_base_uri_with_its_line(tmp_path: Path):
    registry = load_plugins([("http", figrelay_http)], entry_points=False)
    with pytest.raises(ConfigError) as info:
        parse_config("clients:\n  - name: chat\n    type: http\n    body: '{}'\n", tmp_path / "f.yaml", registry)
    [problem] = info.value.problems
    assert problem.key == "clients[0].base_uri" and problem.line is not None and "or set url" in problem.message


def test_url_is_a_credential_and_the_type_never_batches(tmp_path: Path):
    registry = load_plugins([("http", figrelay_http)], entry_points=False)
    text = "clients:\n  - name: chat\n    type: http\n    url: https://chat.example.com/v1/spaces/A/messages?key=K&token=T\n    coalesce: 10s\n"
    config = parse_config(text, tmp_path / "f.yaml", registry)
    assert "https://chat.example.com/v1/spaces/A/messages?key=K&token=T" in config.secrets
    assert config.clients["chat"].max_batch == 1
    registered: list[ClientType] = []
    figrelay_http.figrelay_client_types(registered.append)
    [http] = registered
    assert (http.max_batch, http.default_coalesce, http.secret_options) == (1, 0.0, ("url",))


def test_content_type_defaults():
    assert HttpOptions(base_uri="https://x/").sent_content_type == FIG_CONTENT_TYPE
    assert HttpOptions(base_uri="https://x/", body="{}").sent_content_type == BODY_CONTENT_TYPE
    assert HttpOptions(base_uri="https://x/", body="{}", content_type="text/plain; charset=utf-8").sent_content_type == "text/plain; charset=utf-8"
