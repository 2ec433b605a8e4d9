"""figrelay's ``email`` client type: sends each event (or a coalesced burst, as one digest) as a
plain-text and HTML mail over SMTP, with aiosmtplib.

    clients:
      - name: ops-mail
        type: email
        host: smtp.example.com
        security: starttls            # starttls (port 587) | tls (port 465) | none (port 25)
        username: figrelay            # username and password: both or neither
        password: ${SMTP_PASSWORD}
        from: Fig <fig@example.com>   # a bare address or "Name <address>"
        to: [ops@example.com]         # a list, or one address
        cc: []
        bcc: [audit@example.com]      # in the envelope only, never in a header
        subject: "[Fig] {{ message.title }}"   # optional Jinja template
        ca_file: /etc/ssl/private-ca.pem       # optional CA bundle to trust
        timeout: 30s                  # for a whole send, connecting included
        keepalive: 30s                # how long an idle connection stays open for the next mail

Security is never weakened behind the user's back: ``starttls`` refuses to send when the server
does not offer STARTTLS, certificates are always verified, and credentials are refused with
``security: none``. One SMTP connection per client is kept open for ``keepalive`` after a send
and reused, so a burst does not open a connection per mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import html
import re
import ssl
from collections.abc import Callable
from dataclasses import replace
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, Literal

import aiosmtplib
from pydantic import ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from figrelay.delivery import ClientContext, ClientOptions, ClientType, Delivered, Delivery, Failed, Outcome, Retry, body_excerpt, check_ca_file
from figrelay.durations import Duration, Timeout
from figrelay.hookspecs import hookimpl
from figrelay.messages import Message, describe
from figrelay.templates import TemplateError, check_template, render_template

FIGRELAY_PLUGIN_API = 1  # the figrelay plugin API versions this plugin works with (docs/plugins.md)

DELIVERY_ID_HEADER = "X-Figrelay-Delivery"
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
MAX_SUBJECT = 250
QUIT_TIMEOUT = 5.0
TEST_BANNER = "TEST: sent from Fig's Test button. No action needed."

Security = Literal["starttls", "tls", "none"]

# --- addresses --------------------------------------------------------------------------------

_NOT_IN_ADDRESS = frozenset('<>()[]\\,;:"')
_NAMED_SENDER = re.compile(r"(?P<name>[^<>]*)<(?P<address>[^<>]*)>")


def check_address(value: str) -> str:
    """A bare address such as ``ops@example.com``, stripped; ValueError saying what is wrong.

    Strict on purpose: no display names, comments, lists or line breaks, so an address can never
    smuggle a header or an extra recipient into the mail.
    """
    address = value.strip(" ")  # surrounding spaces only: a line break anywhere is an error
    if not address:
        raise ValueError("an address is empty")
    if "," in address or ";" in address:
        raise ValueError(f"{address!r} holds several addresses: give them as a list, e.g. [ops@example.com, dev@example.com]")
    if " " in address or not address.isprintable():
        raise ValueError(f"{value!r} is not one email address: it holds a space or a line break (give several addresses as a list)")
    bad = sorted(set(address) & _NOT_IN_ADDRESS)
    if bad:
        raise ValueError(f"{address!r} is not a plain email address: it must not contain {' '.join(bad)} (give several addresses as a list)")
    if address.count("@") != 1:
        raise ValueError(f"{address!r} is not an email address: it needs exactly one @, like ops@example.com")
    local, _, domain = address.partition("@")
    if not local or not domain or domain.startswith((".", "-")) or domain.endswith(".") or ".." in domain:
        raise ValueError(f"{address!r} is not an email address like ops@example.com")
    try:
        Address(addr_spec=address)
    except Exception as exc:
        raise ValueError(f"{address!r} is not an email address figrelay can send to: {exc}") from None
    return address


def parse_sender(value: str) -> tuple[str, str]:
    """``(display name, address)`` from ``ops@example.com`` or ``Fig Alerts <ops@example.com>``."""
    text = value.strip(" ")
    named = _NAMED_SENDER.fullmatch(text)
    if named is None:
        return "", check_address(text)
    name = named["name"].strip(" ")
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = name[1:-1].strip(" ")
    if not name.isprintable():
        raise ValueError("the sender's display name must not hold a line break or control character")
    return name, check_address(named["address"])


# --- options ----------------------------------------------------------------------------------


class EmailOptions(ClientOptions):
    model_config = ConfigDict(populate_by_name=True)

    host: str
    """The SMTP server's host name or IP address."""
    port: int | None = Field(default=None, ge=1, le=65535)
    """Defaults by ``security``: 587 for starttls, 465 for tls, 25 for none."""
    security: Security = "starttls"
    """``starttls`` (upgrade a plain connection, refusing to send without it), ``tls`` (implicit TLS,
    port 465) or ``none``."""
    username: str | None = None
    """The SMTP login; set with ``password``, or leave both out."""
    password: SecretStr | None = None
    """The SMTP password (a credential: ``${SMTP_PASSWORD}``)."""
    from_: str = Field(alias="from")
    """The sender: ``fig@example.com`` or ``Fig Alerts <fig@example.com>``."""
    to: tuple[str, ...]
    """The recipients: one address, or a list of them."""
    cc: tuple[str, ...] = ()
    """Recipients shown in the Cc header."""
    bcc: tuple[str, ...] = ()
    """Recipients who get the mail without appearing in any header."""
    ca_file: str | None = None
    """A PEM bundle of certificate authorities to trust instead of the system's."""
    subject: str | None = None
    """A Jinja template for the subject; by default ``[Fig] <title>`` (``[Fig][TEST] ...`` for tests)."""
    timeout: Timeout = 30.0
    """For a whole send: connecting, TLS, login and the mail transaction."""
    keepalive: Duration = 30.0
    """How long an idle connection stays open for the next mail (0: close after each)."""

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if not v or not v.isprintable() or " " in v:
            raise ValueError("must be the SMTP server's host name or IP address, e.g. smtp.example.com")
        if "/" in v or "@" in v:
            raise ValueError("must be a bare host name such as smtp.example.com, not a URL")
        if v.count(":") == 1:
            raise ValueError("must not include the port: set port: separately")
        return v

    # one address alone is taken too, as `figrelay schema` tells an editor
    @field_validator("to", "cc", "bcc", mode="before", json_schema_input_type=str | tuple[str, ...])
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_address(a) for a in v)

    @field_validator("to")
    @classmethod
    def _some_recipient(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one address")
        return v

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str) -> str:
        parse_sender(v)
        return v.strip(" ")

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or not v.isprintable()):
            raise ValueError("must not be empty or hold a line break")
        return v

    @field_validator("password")
    @classmethod
    def _password(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            raise ValueError("must not be empty")
        return v

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else check_ca_file(v, info)

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.strip():
                raise ValueError("must not be empty; leave it out for the default subject")
            check_template(v)
        return v

    @field_validator("keepalive")
    @classmethod
    def _keepalive(cls, v: float) -> float:
        if v > 600:
            raise ValueError("must be at most 10m (servers drop idle connections after a few minutes anyway)")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> EmailOptions:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        if self.username is not None and self.security == "none":
            raise ValueError("username and password with security: none would send the password in clear; use security: starttls or tls")
        return self

    @property
    def smtp_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.security]


# --- rendering --------------------------------------------------------------------------------


def default_subject(message: Message) -> str:
    if message.is_test:
        return f"[Fig][TEST] {message.title.removeprefix('[Test] ')}"
    return f"[Fig] {message.title}"


def _one_line(text: str, limit: int = MAX_SUBJECT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _web_link(url: str | None) -> str | None:
    """The link if it is one a mail client should open (http or https)."""
    if url and url.lower().startswith(("https://", "http://")) and url.isprintable():
        return url
    return None


def render_text(message: Message, delivery_id: str = "") -> str:
    """The plain-text part."""
    lines: list[str] = []
    if message.is_test:
        lines += [f"*** {TEST_BANNER} ***", ""]
    lines += [f"{message.severity.emoji} {message.title}", f"Severity: {message.severity.value}", ""]
    if message.items:
        for item in message.items:  # every one: a mail has room for a burst of any size
            lines.append(f"- {item.severity.emoji} {item.title}")
            lines += [f"  {line}" for line in item.text.splitlines() if line.strip()]
        lines.append("")
    elif message.text:
        lines += [message.text, ""]
    if message.facts:
        width = min(max(len(f.title) for f in message.facts), 24)
        lines += [f"{f.title + ':':<{width + 1}} {f.value}" for f in message.facts]
        lines.append("")
    link = _web_link(message.link)
    if link:
        lines += [f"{message.link_label}: {link}", ""]
    lines += ["-- ", "Sent by figrelay" + (f" (delivery {delivery_id})" if delivery_id else "")]
    return "\n".join(lines) + "\n"


_FONT = "font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;"
_CELL = "padding:6px 12px 6px 0;border-top:1px solid #EEEEEE;vertical-align:top;word-break:break-word;overflow-wrap:anywhere;"


def _html_text(text: str) -> str:
    return html.escape(text).replace("\n", "<br>\n")


def render_html(message: Message, delivery_id: str = "") -> str:
    """The HTML part: tables and inline styles only, since mail clients ignore <style>."""
    e = html.escape
    colour = message.severity.colour
    rows: list[str] = []
    if message.is_test:
        rows.append(
            '<tr><td style="background:#FFF4CE;color:#5C4400;padding:10px 20px;font-weight:bold;border-bottom:1px solid #E8D48A;">'
            f"{e(TEST_BANNER)}</td></tr>"
        )
    rows.append(f'<tr><td style="background:{colour};height:6px;line-height:6px;font-size:6px;">&nbsp;</td></tr>')
    rows.append(
        '<tr><td style="padding:16px 20px 4px 20px;">'
        f'<div style="font-size:12px;font-weight:bold;text-transform:uppercase;letter-spacing:0.05em;color:#616061;">'
        f'<span style="display:inline-block;width:10px;height:10px;background:{colour};border-radius:2px;"></span> '
        f"{e(message.severity.value)}</div>"
        f'<h1 style="margin:6px 0 0 0;font-size:20px;line-height:1.3;font-weight:bold;color:#1D1C1D;">'
        f"{message.severity.emoji} {e(message.title)}</h1></td></tr>"
    )
    if message.items:
        items = []
        for item in message.items:
            text = f'<div style="color:#454245;margin-top:2px;">{_html_text(item.text)}</div>' if item.text else ""
            items.append(f'<tr><td style="{_CELL}"><div style="font-weight:bold;">{item.severity.emoji} {e(item.title)}</div>{text}</td></tr>')
        rows.append(
            '<tr><td style="padding:12px 20px;">'
            '<table role="presentation" cellpadding="0" cellspacing="0" style="border-collapse:collapse;width:100%;font-size:14px;">'
            + "".join(items)
            + "</table></td></tr>"
        )
    elif message.text:
        rows.append(f'<tr><td style="padding:12px 20px;font-size:15px;line-height:1.5;color:#1D1C1D;">{_html_text(message.text)}</td></tr>')
    if message.facts:
        facts = "".join(
            f'<tr><td style="{_CELL}color:#616061;white-space:nowrap;width:1%;">{e(f.title)}</td>'
            f'<td style="{_CELL}color:#1D1C1D;">{_html_text(f.value)}</td></tr>'
            for f in message.facts
        )
        rows.append(
            '<tr><td style="padding:4px 20px 12px 20px;">'
            f'<table role="presentation" cellpadding="0" cellspacing="0" style="border-collapse:collapse;width:100%;font-size:14px;">{facts}</table>'
            "</td></tr>"
        )
    link = _web_link(message.link)
    if link:
        rows.append(
            '<tr><td style="padding:8px 20px 20px 20px;">'
            f'<a href="{e(link)}" style="display:inline-block;background:#1264A3;color:#FFFFFF;text-decoration:none;font-weight:bold;'
            f'padding:10px 18px;border-radius:4px;">{e(message.link_label)}</a></td></tr>'
        )
    footer = "Sent by figrelay" + (f" (delivery {e(delivery_id)})" if delivery_id else "")
    rows.append(f'<tr><td style="padding:12px 20px;border-top:1px solid #EEEEEE;font-size:12px;color:#868686;">{footer}</td></tr>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(message.title)}</title></head>\n"
        f'<body style="margin:0;padding:0;background:#F4F5F7;{_FONT}">\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="background:#F4F5F7;"><tr><td align="center" style="padding:16px;">\n'
        '<table role="presentation" width="600" cellpadding="0" cellspacing="0" '
        f'style="width:100%;max-width:600px;table-layout:fixed;word-break:break-word;overflow-wrap:anywhere;background:#FFFFFF;'
        f'border:1px solid #DDDDDD;border-collapse:collapse;{_FONT}font-size:14px;color:#1D1C1D;">\n'
        + "\n".join(rows)
        + "\n</table>\n</td></tr></table>\n</body></html>\n"
    )


# --- outcomes ---------------------------------------------------------------------------------


class StartTlsNotOffered(aiosmtplib.SMTPException):
    """The server's EHLO lists no STARTTLS, and ``security: starttls`` never falls back to clear."""


class AuthNotOffered(aiosmtplib.SMTPException):
    """A username is configured but the server's EHLO lists no AUTH."""


def _ssl_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind an exception, if any (aiosmtplib wraps them in SMTPConnectError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _response(code: int, message: str) -> str:
    return f"{code} {body_excerpt(message)}".strip()


def outcome_for_error(exc: Exception, where: str, step: str, security: str = "starttls") -> Outcome:
    """The outcome of an SMTP exception by DELIVERY.md's rules: 4xx retried, 5xx permanent,
    network trouble and timeouts retried, a configuration mismatch (no STARTTLS, a certificate
    that does not verify) permanent."""
    if isinstance(exc, StartTlsNotOffered):
        return Failed(
            f"{where} does not offer STARTTLS, and security: starttls never sends mail in clear; set security: tls "
            "(usually port 465) if the server speaks TLS from the start, or security: none if it really has no TLS"
        )
    if isinstance(exc, AuthNotOffered):
        after = "TLS" if security != "none" else "EHLO"
        return Failed(f"{where} does not offer AUTH after {after}, but a username is set; check the server, or remove username and password")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = ", ".join(f"{r.recipient} ({_response(r.code, r.message)})" for r in exc.recipients)
        if any(400 <= r.code < 500 for r in exc.recipients):
            return Retry(f"{where} refused every recipient for now: {refused}")
        return Failed(f"{where} refused every recipient: {refused}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            what = "refused the login"
        elif isinstance(exc, aiosmtplib.SMTPSenderRefused):
            what = f"refused the sender {exc.sender}"
        else:
            what = "answered"
        reason = f"{where} {what}: {_response(exc.code, exc.message)} (while {step})"
        return Failed(reason, status=exc.code) if exc.code >= 500 else Retry(reason, status=exc.code)
    tls = _ssl_error(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return Failed(
            f"the TLS certificate of {where} does not verify: {tls.verify_message or tls.reason} (while {step}); "
            "if the server uses a private certificate authority, point ca_file at its PEM bundle"
        )
    if tls is not None and not isinstance(tls, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return Failed(f"TLS with {where} failed: {tls.reason or tls} (while {step}); check that security: {security} and the port match the server")
    if isinstance(exc, TimeoutError):
        return Retry(f"{where} timed out (while {step}): {exc}".rstrip(": "))
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return Failed(f"{where} cannot take this mail: {exc}")
    if isinstance(exc, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError)):
        return Retry(f"cannot reach {where} (while {step}): {exc}")
    if isinstance(exc, ValueError):
        return Failed(f"cannot send to {where}: {exc}")
    return Retry(f"{where}: {type(exc).__name__}: {exc} (while {step})")


# --- the target -------------------------------------------------------------------------------


class EmailTarget:
    def __init__(self, context: ClientContext) -> None:
        options: EmailOptions = context.options
        self._options = options
        self._log = context.logger
        self._where = f"{options.host}:{options.smtp_port}"
        self._sender_name, self._sender = parse_sender(options.from_)
        self._msgid_domain = _msgid_domain(self._sender)
        # Envelope recipients: bcc appear here and nowhere else.
        self._recipients: list[str] = []
        for address in (*options.to, *options.cc, *options.bcc):
            if address.lower() not in (r.lower() for r in self._recipients):
                self._recipients.append(address)
        self._password = options.password.get_secret_value() if options.password is not None else None
        # One SMTP object for the target's life: it reconnects with the same settings, and keeps
        # the local host name it looked up once.
        self._smtp = aiosmtplib.SMTP(
            hostname=options.host,
            port=options.smtp_port,
            use_tls=options.security == "tls",
            start_tls=False,  # STARTTLS is run by _connect, which refuses to go on without it
            validate_certs=True,
            cert_bundle=options.ca_file,
            timeout=options.timeout,
        )
        self._lock = asyncio.Lock()
        self._step = "connecting"
        self._generation = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self.connections = 0
        """How many SMTP connections this target has opened."""

    # composing

    def subject(self, delivery: Delivery, message: Message) -> str:
        subject = default_subject(message)
        if self._options.subject is not None:
            try:
                subject = render_template(self._options.subject, delivery.event, message) or subject
            except TemplateError as exc:
                self._log.warning("email subject template failed on a %s event, using the default subject: %s", delivery.route, exc)
        return _one_line(subject)

    def compose(self, delivery: Delivery) -> EmailMessage:
        message = delivery.message or describe(delivery.event, delivery.minimum)
        options = self._options
        mail = EmailMessage()
        mail["From"] = Address(display_name=self._sender_name, addr_spec=self._sender)
        mail["To"] = tuple(Address(addr_spec=a) for a in options.to)
        if options.cc:
            mail["Cc"] = tuple(Address(addr_spec=a) for a in options.cc)
        mail["Subject"] = self.subject(delivery, message)
        mail["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = email.utils.make_msgid(domain=self._msgid_domain)
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
        mail[DELIVERY_ID_HEADER] = delivery.id
        mail["X-Figrelay-Event"] = message.event or delivery.route
        mail["X-Figrelay-Severity"] = message.severity.value
        mail.set_content(render_text(message, delivery.id), cte="quoted-printable")
        mail.add_alternative(render_html(message, delivery.id), subtype="html", cte="quoted-printable")
        return mail

    # sending

    async def deliver(self, delivery: Delivery) -> Outcome:
        mail = self.compose(delivery)
        async with self._lock:
            self._cancel_idle_timer()
            self._generation += 1
            budget = asyncio.timeout(self._options.timeout)
            try:
                async with budget:
                    refused = await self._send(mail)
            except BaseException as exc:
                # Whatever went wrong, the connection's state is unknown: never reuse it.
                self._smtp.close()
                if not isinstance(exc, Exception):
                    raise
                if isinstance(exc, TimeoutError) and budget.expired():
                    outcome: Outcome = Retry(f"{self._where} did not finish within {self._options.timeout:g}s (while {self._step}){self._silence_hint()}")
                else:
                    outcome = outcome_for_error(exc, self._where, self._step, self._options.security)
                return self._scrub(outcome)
            await self._keep_or_quit()
        if refused:
            listed = ", ".join(f"{address} ({_response(r.code, r.message)})" for address, r in refused.items())
            return self._scrub(Delivered(f"delivered via {self._where}; refused: {listed}"))
        return Delivered(f"delivered via {self._where}")

    async def _send(self, mail: EmailMessage) -> dict[str, aiosmtplib.SMTPResponse]:
        smtp = self._smtp
        if smtp.is_connected:
            # Probe a reused connection before the transaction: a server may have dropped it while
            # idle, and only a failure before MAIL is safe to repeat on a fresh connection.
            self._step = "checking the open connection"
            try:
                await smtp.noop()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
        if not smtp.is_connected:
            await self._connect()
        self._step = "sending"
        refused, _ = await smtp.send_message(mail, sender=self._sender, recipients=self._recipients)
        return refused

    async def _connect(self) -> None:
        smtp = self._smtp
        self._step = "connecting"
        self.connections += 1
        await smtp.connect()
        if self._options.security == "starttls":
            self._step = "starting TLS"
            await smtp.ehlo()
            if not smtp.supports_extension("starttls"):
                raise StartTlsNotOffered("the server does not offer STARTTLS")
            await smtp.starttls()
        if self._options.username is not None and self._password is not None:
            self._step = "logging in"
            if smtp.last_ehlo_response is None:
                await smtp.ehlo()
            if not smtp.supports_extension("auth"):
                raise AuthNotOffered("the server does not offer AUTH")
            await smtp.login(self._options.username, self._password)

    def _silence_hint(self) -> str:
        if self._step == "connecting" and self._options.security != "tls":
            return "; a port that expects TLS from the start (usually 465) stays silent like this: then set security: tls"
        return ""

    def _scrub(self, outcome: Outcome) -> Outcome:
        """The outcome with the password blanked out, should a server ever echo it."""
        if not self._password:
            return outcome
        if isinstance(outcome, Delivered):
            return replace(outcome, detail=outcome.detail.replace(self._password, "***"))
        return replace(outcome, reason=outcome.reason.replace(self._password, "***"))

    # keeping the connection

    async def _keep_or_quit(self) -> None:
        """Keep the connection for the next mail, or say goodbye now (keepalive 0). Lock held."""
        if not self._smtp.is_connected:
            return
        if self._options.keepalive <= 0:
            await self._quit()
            return
        self._idle_timer = asyncio.get_running_loop().call_later(self._options.keepalive, self._idle_expired, self._generation)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_expired(self, generation: int) -> None:
        self._idle_timer = None
        if generation == self._generation:
            task = asyncio.get_running_loop().create_task(self._quit_if_idle(generation))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    async def _quit_if_idle(self, generation: int) -> None:
        async with self._lock:
            if generation == self._generation:  # no send since the timer was set
                await self._quit()

    async def _quit(self) -> None:
        """QUIT politely, briefly; close in any case. Lock held."""
        if self._smtp.is_connected:
            try:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(min(QUIT_TIMEOUT, self._options.timeout)):
                        await self._smtp.quit()
            finally:
                self._smtp.close()

    @property
    def connected(self) -> bool:
        return self._smtp.is_connected

    async def aclose(self) -> None:
        self._cancel_idle_timer()
        self._generation += 1
        async with self._lock:
            await self._quit()
        if self._closers:
            await asyncio.gather(*self._closers, return_exceptions=True)


def _msgid_domain(address: str) -> str:
    domain = address.rpartition("@")[2]
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return "figrelay.invalid"


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(
        ClientType(
            name="email",
            options=EmailOptions,
            open=EmailTarget,
            description="send each event as a plain-text and HTML mail over SMTP",
            renders_messages=True,
            default_min_interval=0.0,
            default_coalesce=30.0,
        )
    )
