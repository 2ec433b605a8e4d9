"""figrelay's ``http`` client type: forwards each event to another web hook receiver exactly as Fig
would have sent it, so an integration written for Fig accepts it unchanged.

    clients:
      - name: siem
        type: http
        base_uri: https://siem.example.com/fig/   # events go to <base_uri><Route>
        secret: ${SIEM_SECRET}                     # sent as "Authorization: Secret <secret>"
        headers: {X-Team: platform, X-Api-Key: ${SIEM_KEY}}   # optional extra headers
        secret_headers: [X-Tenant]                 # more headers whose values are credentials
        timeout: 10s
        signing_secret: whsec_...                  # optional Standard Webhooks signature
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Callable, Collection
from urllib.parse import urlsplit

import aiohttp
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from figrelay.delivery import (
    ClientContext,
    ClientOptions,
    ClientType,
    Delivery,
    Outcome,
    Retry,
    outcome_for_status,
    redact_url,
)
from figrelay.durations import Timeout
from figrelay.hookspecs import hookimpl

DELIVERY_ID_HEADER = "X-Figrelay-Delivery"
MAX_ERROR_BODY = 1024

SECRET_HEADER_NAMES = re.compile(r"(?i)authorization|proxy-authorization|cookie|.*-token|.*-key|.*secret.*|.*password.*")
"""Headers whose value is a credential by their name alone: masked in every log line and output.
Any other header's value is plain text (``X-Team: platform``) unless ``secret_headers`` names it."""


def is_secret_header(name: str, marked: Collection[str] = ()) -> bool:
    """True when a header's value is a credential: by its name, or because the user marked it
    (``marked`` holds lower-case names)."""
    return SECRET_HEADER_NAMES.fullmatch(name.strip()) is not None or name.strip().lower() in marked


class HttpOptions(ClientOptions):
    base_uri: str
    """Where the receiver lives; the event's route (e.g. ``SettingValueChanged``) is appended."""
    secret: SecretStr | None = None
    """Sent as ``Authorization: Secret <secret>``, the way Fig authenticates itself."""
    secret_headers: tuple[str, ...] = ()
    """Names of headers in ``headers`` whose values are credentials although their names do not
    say so (Authorization, Proxy-Authorization, Cookie, *-Token, *-Key, *Secret*, *Password* do)."""
    headers: dict[str, str | SecretStr] = Field(default_factory=dict)
    """Extra headers. The values of secret ones (see ``secret_headers``) are held as SecretStr, so
    they are masked in logs and outputs and kept out of reprs; the others stay readable."""
    timeout: Timeout = 10.0
    signing_secret: SecretStr | None = None
    """A ``whsec_``-prefixed base64 key: adds Standard Webhooks ``webhook-*`` signature headers."""
    ca_file: str | None = None
    """A PEM bundle to trust instead of the system's certificate authorities."""

    @field_validator("base_uri")
    @classmethod
    def _base_uri(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://receiver.example.com/fig/")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment: the event's route is appended to it")
        return v if v.endswith("/") else v + "/"

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
        self._base_headers = {"Content-Type": "application/json; charset=utf-8", **options.header_values()}
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
        self._where = redact_url(options.base_uri)

    async def deliver(self, delivery: Delivery) -> Outcome:
        url = self._options.base_uri + delivery.route
        headers = dict(self._base_headers)
        headers[DELIVERY_ID_HEADER] = delivery.id
        if self._signing_key is not None:
            headers.update(standard_webhooks_headers(self._signing_key, delivery.id, delivery.body))
        try:
            async with self._http.post(
                url, data=delivery.body, headers=headers, timeout=self._timeout, allow_redirects=False, ssl=self._ssl
            ) as response:
                body = await response.content.read(MAX_ERROR_BODY) if response.status >= 300 else b""
                return outcome_for_status(response.status, response.headers, body)
        except TimeoutError:
            return Retry(f"no answer from {self._where} within {self._options.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Retry(f"cannot reach {self._where}: {type(exc).__name__}: {exc}".replace(self._options.base_uri, self._where))

    async def aclose(self) -> None:
        return None


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(
        ClientType(
            name="http",
            options=HttpOptions,
            open=HttpTarget,
            description="POST each event to <base_uri><Route> in Fig's own wire format",
            # no secret_options: credentials are SecretStr (secret, signing_secret, the values of
            # secret headers), and a plain header such as X-Team: platform stays readable
        )
    )
