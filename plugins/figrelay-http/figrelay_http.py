"""figrelay's ``http`` client type: forwards each event to another web hook receiver exactly as Fig
would have sent it, so an integration written for Fig accepts it unchanged; or, with a ``body``
template, sends JSON of the user's making, so any JSON receiver (Discord, Google Chat, an internal
API) can be reached without writing Python.

    clients:
      - name: siem
        type: http
        base_uri: https://siem.example.com/fig/   # events go to <base_uri><Route>
        secret: ${SIEM_SECRET}                     # sent as "Authorization: Secret <secret>"
        headers: {X-Team: platform, X-Api-Key: ${SIEM_KEY}}   # optional extra headers
        secret_headers: [X-Tenant]                 # more headers whose values are credentials
        timeout: 10s
        signing_secret: whsec_...                  # optional Standard Webhooks signature
      - name: discord
        type: http
        url: ${DISCORD_WEBHOOK_URL}                # every event goes to this one address
        body: '{"content": {{ message.summary|tojson }}}'   # Jinja2, like Slack's text; must make JSON

Each event goes alone (``max_batch=1``): a ``coalesce:`` on an http client only delays sends, so a
body always stands for exactly one event.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import re
import ssl
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from urllib.parse import urlsplit

import aiohttp
from jinja2 import meta, nodes
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from figrelay.delivery import (
    ClientContext,
    ClientOptions,
    ClientType,
    Delivery,
    Failed,
    Outcome,
    Retry,
    check_ca_file,
    outcome_for_status,
    redact_url,
)
from figrelay.durations import Timeout
from figrelay.events import FigEvent
from figrelay.hookspecs import hookimpl
from figrelay.messages import Message, describe
from figrelay.samples import sample_events, test_button_events
from figrelay.templates import TemplateError, compile_template, render_template

FIGRELAY_PLUGIN_API = 1  # the figrelay plugin API versions this plugin works with (docs/plugins.md)

DELIVERY_ID_HEADER = "X-Figrelay-Delivery"
MAX_ERROR_BODY = 1024
FIG_CONTENT_TYPE = "application/json; charset=utf-8"
"""The Content-Type of an event forwarded in Fig's wire format, as Fig sends it."""
BODY_CONTENT_TYPE = "application/json"
"""The Content-Type of a body made by a ``body`` template, unless ``content_type`` says otherwise."""

SECRET_HEADER_NAMES = re.compile(r"(?i)authorization|proxy-authorization|cookie|.*-token|.*-key|.*secret.*|.*password.*")
"""Headers whose value is a credential by their name alone: masked in every log line and output.
Any other header's value is plain text (``X-Team: platform``) unless ``secret_headers`` names it."""


def is_secret_header(name: str, marked: Collection[str] = ()) -> bool:
    """True when a header's value is a credential: by its name, or because the user marked it
    (``marked`` holds lower-case names)."""
    return SECRET_HEADER_NAMES.fullmatch(name.strip()) is not None or name.strip().lower() in marked


class HttpOptions(ClientOptions):
    base_uri: str | None = None
    """Where the receiver lives; the event's route (e.g. ``SettingValueChanged``) is appended.
    Required unless ``url`` is set."""
    url: str | None = None
    """Instead of ``base_uri``: the one address every event is posted to, exactly as given
    (nothing appended, a query kept), e.g. a Discord or Google Chat webhook URL. A credential:
    masked in every log line and output."""
    body: str | None = None
    """A Jinja2 template (sandboxed, with the context of the ``title``/``text`` templates plus
    ``delivery``) that makes the JSON to send instead of Fig's body. Checked at load against
    sample events; an event it cannot render, or renders as invalid JSON, becomes a dead letter."""
    content_type: str | None = None
    """The Content-Type sent: ``application/json`` with a ``body``, Fig's
    ``application/json; charset=utf-8`` without."""
    secret: SecretStr | None = None
    """Sent as ``Authorization: Secret <secret>``, the way Fig authenticates itself."""
    secret_headers: tuple[str, ...] = ()
    """Names of headers in ``headers`` whose values are credentials although their names do not
    say so (Authorization, Proxy-Authorization, Cookie, *-Token, *-Key, *Secret*, *Password* do)."""
    headers: dict[str, str | SecretStr] = Field(default_factory=dict)
    """Extra headers. The values of secret ones (see ``secret_headers``) are held as SecretStr, so
    they are masked in logs and outputs and kept out of reprs; the others stay readable."""
    timeout: Timeout = 10.0
    """How long one request may take, response included (at most 10m)."""
    signing_secret: SecretStr | None = None
    """A ``whsec_``-prefixed base64 key: adds Standard Webhooks ``webhook-*`` signature headers."""
    ca_file: str | None = None
    """A PEM bundle to trust instead of the system's certificate authorities."""

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_ca_file(v, info)

    @field_validator("base_uri")
    @classmethod
    def _base_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://receiver.example.com/fig/")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment: the event's route is appended to it (url: takes an address as it is)")
        return v if v.endswith("/") else v + "/"

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        # the messages never repeat the URL: it usually holds the receiver's token
        if v is None:
            return v
        example = "e.g. https://discord.com/api/webhooks/<id>/<token>"
        try:
            parts = urlsplit(v)
            host = parts.hostname
            _ = parts.port  # raises on a port that is not a number
        except ValueError:
            raise ValueError(f"is not a valid URL; expected an http:// or https:// URL, {example}") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(f"must be an http:// or https:// URL with a host, {example}")
        if parts.fragment:
            raise ValueError("must not have a #fragment: a receiver never sees it")
        return v

    @field_validator("body")
    @classmethod
    def _body(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_body_template(v)
            except TemplateError as exc:
                raise ValueError(f"bad template: {exc}") from None
        return v

    @field_validator("content_type")
    @classmethod
    def _content_type(cls, v: str | None) -> str | None:
        if v is not None and not _MEDIA_TYPE.fullmatch(v):
            raise ValueError("is not a media type; write e.g. application/json, or application/vnd.api+json; charset=utf-8")
        return v

    @field_validator("signing_secret")
    @classmethod
    def _signing(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            try:
                base64.b64decode(v.get_secret_value().removeprefix("whsec_"), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64 (optionally prefixed with whsec_)") from None
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_header_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name (letters, digits and - only, e.g. X-Tenant)")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str | SecretStr], info: ValidationInfo) -> dict[str, str | SecretStr]:
        reserved = {"content-type", "content-length", "host", DELIVERY_ID_HEADER.lower()}
        for name in v:
            if name.lower() == "content-type":
                raise ValueError(f"header {name!r} is set by figrelay itself; choose it with the content_type option")
            if name.lower() in reserved:
                raise ValueError(f"header {name!r} is set by figrelay itself")
            if name.lower() == "authorization":
                raise ValueError("set 'secret' instead of an Authorization header")
        marked = {n.lower() for n in info.data.get("secret_headers", ())}
        return {
            name: SecretStr(_text(value)) if is_secret_header(name, marked) else _text(value)
            for name, value in v.items()
        }

    @model_validator(mode="after")
    def _one_address(self) -> HttpOptions:
        # reported at the key to fix, as a missing base_uri was before url existed
        if self.base_uri is None and self.url is None:
            raise _problem_at(
                "base_uri", "is required: where the receiver lives (events go to <base_uri><Route>), "
                "e.g. https://siem.example.com/fig/; or set url to post every event to one address"
            )
        if self.base_uri is not None and self.url is not None:
            raise _problem_at("url", "set either base_uri (the event's route is appended) or url (used as it is), not both")
        return self

    @property
    def target_url(self) -> str:
        """Where the events go, route excepted: ``url``, or ``base_uri`` (which takes the route)."""
        return self.url if self.url is not None else self.base_uri or ""

    def url_for(self, route: str) -> str:
        """The address one event of ``route`` is posted to."""
        return self.url if self.url is not None else (self.base_uri or "") + route

    @property
    def sent_content_type(self) -> str:
        if self.content_type is not None:
            return self.content_type
        return BODY_CONTENT_TYPE if self.body is not None else FIG_CONTENT_TYPE

    @model_validator(mode="after")
    def _marked_headers_exist(self) -> HttpOptions:
        names = {n.lower() for n in self.headers}
        missing = [n for n in self.secret_headers if n.lower() not in names]
        if missing:
            have = ", ".join(self.headers) or "none"
            raise ValueError(
                f"secret_headers names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not in headers "
                f"(headers: {have}); add the header to headers, or remove the name from secret_headers"
            )
        return self

    def header_values(self) -> dict[str, str]:
        """The extra headers as they are sent, secret values included."""
        return {name: _text(value) for name, value in self.headers.items()}


def _text(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\r\n]*"))*')


def _problem_at(key: str, message: str) -> ValidationError:
    """A validation error of the whole options, reported at one key (with its line)."""
    error = PydanticCustomError("http_options", message)
    return ValidationError.from_exception_data("HttpOptions", [InitErrorDetails(type=error, loc=(key,), input=None)])


# --- body templates ------------------------------------------------------------------------------

SAMPLE_DELIVERY: Mapping[str, str] = {"id": "0f8e1c2d3b4a59687766554433221100", "client": "sample-client", "created_at": "2025-06-01T12:34:56.789Z"}
"""``delivery`` when a body template is checked at load (a real one carries the delivery's own)."""

JSON_HINT = 'put each text through |tojson, e.g. {"content": {{ message.text|tojson }}}'


class BodyError(ValueError):
    """A body that cannot be sent for this event: the reason its dead letter carries."""


def delivery_names(delivery: Delivery) -> dict[str, str]:
    """``delivery`` in a body template: ``id`` (the same across retries: a receiver can drop
    duplicates by it), ``client`` (this client's name) and ``created_at`` (when figrelay accepted
    the event, ISO 8601 in UTC)."""
    created = datetime.fromtimestamp(delivery.created_at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {"id": delivery.id, "client": delivery.client, "created_at": created}


def render_body(source: str, event: FigEvent, message: Message, delivery: Mapping[str, str]) -> str:
    """The JSON text a body template makes for one event. Raises TemplateError when it does not
    render, BodyError when what it renders is not JSON."""
    text = render_template(source, event, message, {"delivery": delivery})
    problem = json_problem(text)
    if problem is not None:
        raise BodyError(problem)
    return text


def json_problem(text: str) -> str | None:
    """What makes ``text`` invalid JSON, and where (line, column and the text around it); None
    for valid JSON."""
    if not text.strip():
        return "the template rendered nothing, and a body must be JSON"

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")

    try:
        json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        what = exc.msg.removesuffix(" at")  # "Invalid control character at"
        if what == "Invalid control character":
            what += " (a line break or tab inside a string)"
        return f"{what} at line {exc.lineno}, column {exc.colno}: {_excerpt(text, exc.pos)}"
    except ValueError as exc:
        return str(exc)
    return None


def _excerpt(text: str, pos: int, width: int = 30) -> str:
    before, after = text[max(0, pos - width) : pos], text[pos : pos + width]
    shown = ("…" if pos > width else "") + before + "<here>" + after + ("…" if pos + width < len(text) else "")
    return shown.replace("\r", "\\r").replace("\n", "\\n")


def _check_events() -> list[FigEvent]:
    """A realistic event of each type and Fig's Test-button payloads (with a fixed time)."""
    return sample_events() + test_button_events(datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc))


@functools.cache
def _fig_fields() -> frozenset[str]:
    return frozenset(name for event in _check_events() for name in event.to_wire())


def _fig_fields_used(source: str) -> set[str]:
    """The Fig fields a template names, as ``{{ UpdatedSettings }}`` or ``event.UpdatedSettings``."""
    tree = compile_template(source).environment.parse(source)
    used = set(meta.find_undeclared_variables(tree))
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == "event":
            if isinstance(node, nodes.Getattr):
                used.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                used.add(node.arg.value)
    return used & _fig_fields()


def check_body_template(source: str) -> None:
    """Compile a body template and render it for a sample of each event type and each of Fig's
    Test-button payloads: each must render, as JSON. A sample that lacks a Fig field the template
    names (``UpdatedSettings`` on a HealthStatusChanged) may fail, since the client's hooks may
    never send it that type (such an event becomes a dead letter); but one sample at least must
    render. Raises TemplateError."""
    compile_template(source)
    used = _fig_fields_used(source)
    rendered = 0
    skipped: list[tuple[str, TemplateError]] = []
    for event in _check_events():
        try:
            render_body(source, event, describe(event), SAMPLE_DELIVERY)
        except TemplateError as exc:
            if used - event.to_wire().keys():
                skipped.append((event.route, exc))
                continue
            raise TemplateError(f"fails on a sample {event.route} event: {exc}") from None
        except BodyError as exc:
            raise TemplateError(f"makes invalid JSON from a sample {event.route} event: {exc}; {JSON_HINT}") from None
        rendered += 1
    if not rendered:
        route, exc = skipped[0]
        raise TemplateError(
            f"fails on a sample of every event type (on a {route} event: {exc}): it names {', '.join(sorted(used))}, which no one "
            f"event type has all of; guard the fields of each type, e.g. {{% if {min(used)} is defined %}}…{{% endif %}}"
        )


def _send_hint(error: TemplateError, route: str) -> str:
    """For a field the event lacks: how to keep such events from failing."""
    found = re.search(r"'(\w+)' is undefined|has no attribute '(\w+)'", str(error))
    name = found and (found.group(1) or found.group(2))
    if not name or name not in _fig_fields():
        return ""
    return (
        f" ({route} events have no {name}: guard it with {{% if {name} is defined %}}…{{% endif %}}, "
        "or send this client only the event types that have it)"
    )


def standard_webhooks_headers(key: bytes, delivery_id: str, body: bytes, now: Callable[[], float] = time.time) -> dict[str, str]:
    """The Standard Webhooks signature headers for one body."""
    timestamp = str(int(now()))
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {"webhook-id": delivery_id, "webhook-timestamp": timestamp, "webhook-signature": f"v1,{signature}"}


class HttpTarget:
    def __init__(self, context: ClientContext) -> None:
        options: HttpOptions = context.options
        self._options = options
        self._http = context.http
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        self._body = options.body
        self._base_headers = {"Content-Type": options.sent_content_type, **options.header_values()}
        if options.secret is not None:
            self._base_headers["Authorization"] = f"Secret {options.secret.get_secret_value()}"
        self._signing_key = (
            base64.b64decode(options.signing_secret.get_secret_value().removeprefix("whsec_"))
            if options.signing_secret is not None
            else None
        )
        self._ssl: ssl.SSLContext | bool = True
        if options.ca_file:
            self._ssl = ssl.create_default_context(cafile=options.ca_file)
        self._where = redact_url(options.target_url)

    def body_for(self, delivery: Delivery) -> bytes:
        """What is posted for one delivery: Fig's body as it came, or the body template's JSON.
        Raises BodyError with the reason the delivery cannot be sent."""
        if self._body is None:
            return delivery.body
        # the same message the message-rendering types start from
        message = delivery.message or describe(delivery.event, delivery.minimum)
        try:
            text = render_body(self._body, delivery.event, message, delivery_names(delivery))
        except TemplateError as exc:
            raise BodyError(f"the body template failed on this {delivery.route} event: {exc}{_send_hint(exc, delivery.route)}") from None
        except BodyError as exc:
            raise BodyError(f"the body template made invalid JSON from this {delivery.route} event: {exc}; {JSON_HINT}") from None
        return _utf8(text)

    async def deliver(self, delivery: Delivery) -> Outcome:
        try:
            body = self.body_for(delivery)
        except BodyError as exc:
            return Failed(str(exc))  # the same template fails the same way on every retry
        url = self._options.url_for(delivery.route)
        headers = dict(self._base_headers)
        headers[DELIVERY_ID_HEADER] = delivery.id
        if self._signing_key is not None:
            headers.update(standard_webhooks_headers(self._signing_key, delivery.id, body))
        try:
            async with self._http.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False, ssl=self._ssl
            ) as response:
                body = await response.content.read(MAX_ERROR_BODY) if response.status >= 300 else b""
                return outcome_for_status(response.status, response.headers, body)
        except TimeoutError:
            return Retry(f"no answer from {self._where} within {self._options.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Retry(f"cannot reach {self._where}: {type(exc).__name__}: {exc}".replace(self._options.target_url, self._where))

    async def aclose(self) -> None:
        return None


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the event's JSON: U+FFFD in its place, as Fig's .NET writes
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(
        ClientType(
            name="http",
            options=HttpOptions,
            open=HttpTarget,
            description="POST each event to <base_uri><Route> in Fig's own wire format, or JSON made by a body template to any receiver",
            # url carries the receiver's token (Discord, Google Chat); the other credentials are
            # SecretStr (secret, signing_secret, the values of secret headers), and a plain header
            # such as X-Team: platform stays readable
            secret_options=("url",),
            # one event per request: Fig's format has no batch, and a body renders one event
            max_batch=1,
        )
    )
