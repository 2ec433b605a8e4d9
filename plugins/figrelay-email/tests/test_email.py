"""The email client type against real local SMTP servers (aiosmtpd, in a thread)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email
import email.policy
import email.utils
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import ValidationError

from figrelay.delivery import ClientContext, Delivered, Delivery, Failed, Retry
from figrelay.messages import Fact, Message, Severity, describe, digest
from figrelay.samples import sample_events, test_button_events
from figrelay_email import (
    DELIVERY_ID_HEADER,
    TEST_BANNER,
    EmailOptions,
    EmailTarget,
    check_address,
    figrelay_client_types,
    outcome_for_error,
    render_html,
    render_text,
)

USER, PASSWORD = "figrelay", "pa55-w0rd-never-shown"
FROM = "fig@alerts.example.com"


# --- a recording SMTP server --------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    peer: Any
    tls: bool
    login: bytes | None

    @property
    def mail(self) -> EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)  # type: ignore[return-value]

    def part(self, subtype: str) -> str:
        body = self.mail.get_body(preferencelist=(subtype,))
        assert body is not None and body.get_content_type() == f"text/{subtype}"
        return body.get_content()


class Recorder:
    """An aiosmtpd handler recording each accepted mail; its replies are programmable."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.refuse: dict[str, str] = {}
        self.data_reply: str | None = None
        self.noop_reply: str | None = None
        self.logins: list[LoginPassword] = []
        self.auth_reply: str | None = None
        self.delay = 0.0  # seconds the server dawdles before answering RCPT and DATA
        self.quits = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await asyncio.sleep(self.delay)
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay)
        if self.data_reply:
            return self.data_reply
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, session.peer, tls, session.auth_data.login if session.auth_data else None))
        return "250 2.0.0 queued"

    async def handle_NOOP(self, server, session, envelope, arg):
        if self.noop_reply:
            server.loop.call_soon(server.transport.close)
            return self.noop_reply
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        self.logins.append(auth_data)
        ok = isinstance(auth_data, LoginPassword) and auth_data == (USER.encode(), PASSWORD.encode())
        return AuthResult(success=ok, handled=False, auth_data=auth_data, message=None if ok else self.auth_reply)


class CountingController(Controller):
    """Counts the connections the server accepts (the controller's own start-up probe excluded)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._calls = 0
        self._baseline = 0

    def factory(self):
        self._calls += 1
        return super().factory()

    def start(self):
        super().start()
        self._baseline = self._calls

    @property
    def connections(self) -> int:
        return self._calls - self._baseline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def smtp_server(**kwargs: Any) -> Iterator[tuple[CountingController, Recorder]]:
    recorder = Recorder()
    if kwargs.pop("auth", False):
        kwargs["authenticator"] = recorder.authenticator
    controller = CountingController(recorder, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "figrelay test SMTP")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return Tls(folder / "cert.pem", folder / "key.pem")


# --- the client side ----------------------------------------------------------------------------


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def open_target(http) -> AsyncIterator[Callable[..., EmailTarget]]:
    targets: list[EmailTarget] = []

    def make(controller: Controller | None = None, **options: Any) -> EmailTarget:
        if controller is not None:
            options = {"host": controller.hostname, "port": controller.port, **options}
        options.setdefault("security", "none")
        options.setdefault("from", FROM)
        options.setdefault("to", ["ops@example.com"])
        options.setdefault("keepalive", "5s")
        options.setdefault("timeout", "5s")
        context = ClientContext("ops-mail", EmailOptions.model_validate(options), http, logging.getLogger("test.email"), Path("."))
        target = EmailTarget(context)
        targets.append(target)
        return target

    yield make
    for target in targets:  # tests close their targets; this is for one that failed half-way
        await target.aclose()


def delivery(event=None, *, id: str = "d" * 32, message: Message | None = None, batch: tuple[Delivery, ...] = ()) -> Delivery:
    event = event or sample_events("SettingValueChanged")[0]
    return Delivery(id, "ops-mail", event, json.dumps(event.to_wire()).encode(), 1, 0.0, message=message or describe(event), batch=batch)


async def deliver_once(target: EmailTarget, d: Delivery | None = None):
    try:
        return await target.deliver(d or delivery())
    finally:
        await target.aclose()


# --- plain delivery -----------------------------------------------------------------------------


async def test_every_sample_event_is_delivered_with_headers_and_both_parts(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server, **{"from": f"Fig Alerts <{FROM}>"}, to=["ops@example.com", "dev@example.com"],
                             cc=["lead@example.com"], bcc=["audit@example.com"])
        events = sample_events()
        for i, event in enumerate(events):
            outcome = await target.deliver(delivery(event, id=f"{i:032x}"))
            assert outcome == Delivered(f"delivered via 127.0.0.1:{server.port}")
        await target.aclose()

    assert len(rec.messages) == len(events)
    for i, (event, got) in enumerate(zip(events, rec.messages, strict=True)):
        message = describe(event)
        mail = got.mail
        assert got.mail_from == FROM
        assert got.rcpt_tos == ["ops@example.com", "dev@example.com", "lead@example.com", "audit@example.com"]
        assert mail["From"] == f"Fig Alerts <{FROM}>"
        assert mail["To"] == "ops@example.com, dev@example.com"
        assert mail["Cc"] == "lead@example.com"
        assert "Bcc" not in mail and b"audit@example.com" not in got.content  # bcc: envelope only
        assert mail["Subject"] == f"[Fig] {message.title}"
        assert abs(email.utils.parsedate_to_datetime(mail["Date"]).timestamp() - time.time()) < 60
        assert mail["Message-ID"].endswith("@alerts.example.com>")
        assert mail[DELIVERY_ID_HEADER] == f"{i:032x}"
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail["X-Figrelay-Event"] == event.route and mail["X-Figrelay-Severity"] == message.severity.value
        assert mail.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
        text, html = got.part("plain"), got.part("html")
        assert message.title in text and message.severity.emoji in text
        assert f"Open in Fig: {message.link}" in text
        import html as html_module

        assert html_module.escape(message.title) in html
        assert message.severity.colour in html
        assert f'href="{message.link}"' in html and ">Open in Fig</a>" in html
        for fact in message.facts:
            assert f"{fact.title}:" in text and fact.value in text
            assert f">{html_module.escape(fact.title)}</td>" in html
        assert "TEST" not in text and TEST_BANNER not in html
    assert len({m.mail["Message-ID"] for m in rec.messages}) == len(events)
    assert len({m.peer for m in rec.messages}) == 1 and server.connections == 1


async def test_to_as_single_string_and_duplicate_recipients_sent_once(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server, to="ops@example.com", cc=["OPS@example.com"], bcc=["ops@example.com", "audit@example.com"])
        assert isinstance(await deliver_once(target), Delivered)
    [got] = rec.messages
    assert got.rcpt_tos == ["ops@example.com", "audit@example.com"]


async def test_subject_template(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server, subject="{{ route }} ({{ severity }}): {{ message.title }}\n  in {{ ClientName|default('Fig') }}")
        await deliver_once(target)
    # .strip(): the stdlib folds a long first word onto its own line, and its parser keeps the space
    assert rec.messages[0].mail["Subject"].strip() == "SettingValueChanged (info): OrdersApi: 2 settings changed in OrdersApi"


async def test_subject_template_failing_on_a_real_event_falls_back_to_the_default(open_target, caplog):
    with smtp_server() as (server, rec):
        # Renders against every sample (each has a link) but not against a message without one.
        target = open_target(server, subject="{{ message.link.upper() }}")
        event = sample_events("SettingValueChanged")[0]
        with caplog.at_level(logging.WARNING, "test.email"):
            assert isinstance(await deliver_once(target, delivery(event, message=replace(describe(event), link=None))), Delivered)
    assert rec.messages[0].mail["Subject"] == "[Fig] OrdersApi: 2 settings changed"
    assert "subject template failed" in caplog.text


async def test_test_button_events_carry_a_visible_banner(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server)
        for event in test_button_events():
            assert isinstance(await target.deliver(delivery(event)), Delivered)
        await target.aclose()
    for event, got in zip(test_button_events(), rec.messages, strict=True):
        title = describe(event).title
        assert title.startswith("[Test] ")
        assert got.mail["Subject"] == f"[Fig][TEST] {title.removeprefix('[Test] ')}"
        assert got.part("plain").startswith(f"*** {TEST_BANNER} ***")
        assert TEST_BANNER.replace("'", "&#x27;") in got.part("html")


async def test_digest_lists_every_item(open_target):
    events = sample_events("MinRunSessions") + sample_events("HealthStatusChanged")
    deliveries = tuple(delivery(e, id=f"{i:032x}") for i, e in enumerate(events))
    folded = digest([describe(e) for e in events])
    with smtp_server() as (server, rec):
        target = open_target(server)
        assert isinstance(await deliver_once(target, replace(deliveries[-1], message=folded, batch=deliveries)), Delivered)
    [got] = rec.messages
    assert got.mail["Subject"] == f"[Fig] {folded.title}"
    assert got.mail[DELIVERY_ID_HEADER] == deliveries[-1].id
    text, html = got.part("plain"), got.part("html")
    for item in folded.items:
        assert f"- {item.severity.emoji} {item.title}" in text
        assert item.title in html
        for line in item.text.splitlines():
            assert line in text
    assert Severity.CRITICAL.colour in html  # the worst severity of the burst


def test_html_escapes_everything_and_drops_unsafe_links():
    evil = Message(
        title='<script>alert("t")</script>', text="a < b & c\nsecond line", severity=Severity.WARNING,
        facts=(Fact("<b>key</b>", '"><img src=x>'),), link="javascript:alert(1)",
    )
    html = render_html(evil, "id<1>")
    assert "<script>" not in html and "<img" not in html and "<b>key" not in html
    assert "&lt;script&gt;alert(&quot;t&quot;)&lt;/script&gt;" in html
    assert "a &lt; b &amp; c<br>" in html
    assert "javascript:" not in html and "id&lt;1&gt;" in html
    text = render_text(evil)
    assert "javascript:" not in text and "<script>" in text  # plain text needs no escaping


# --- TLS and authentication ---------------------------------------------------------------------


async def test_starttls_with_private_ca_and_auth(open_target, tls):
    with smtp_server(tls_context=tls.server_context(), require_starttls=True, auth=True, auth_require_tls=True, auth_required=True) as (server, rec):
        target = open_target(server, security="starttls", ca_file=str(tls.cert), username=USER, password=PASSWORD)
        assert isinstance(await deliver_once(target), Delivered)
    [got] = rec.messages
    assert got.tls and got.login == USER.encode()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls(open_target, tls):
    # auth_require_tls=False: aiosmtpd counts only STARTTLS as TLS, so it would hide AUTH on an implicit TLS port.
    with smtp_server(ssl_context=tls.server_context(), auth=True, auth_require_tls=False, auth_required=True) as (server, rec):
        target = open_target(server, security="tls", ca_file=str(tls.cert), username=USER, password=PASSWORD)
        assert isinstance(await deliver_once(target), Delivered)
    [got] = rec.messages
    assert got.tls and got.login == USER.encode()


async def test_starttls_required_but_not_offered_fails_and_sends_nothing_in_clear(open_target):
    # AUTH is offered in clear here, so a client falling back would show up in rec.logins.
    with smtp_server(auth=True, auth_require_tls=False) as (server, rec):
        target = open_target(server, security="starttls", username=USER, password=PASSWORD)
        outcome = await deliver_once(target)
    assert isinstance(outcome, Failed)
    assert "does not offer STARTTLS" in outcome.reason and "security: tls" in outcome.reason
    assert rec.messages == [] and rec.logins == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_certificate_that_does_not_verify_fails(open_target, tls, security):
    kwargs = {"tls_context": tls.server_context()} if security == "starttls" else {"ssl_context": tls.server_context()}
    with smtp_server(**kwargs) as (server, rec):
        target = open_target(server, security=security)  # no ca_file: the system's CAs do not know it
        outcome = await deliver_once(target)
    assert isinstance(outcome, Failed)
    assert "certificate" in outcome.reason and "does not verify" in outcome.reason and "ca_file" in outcome.reason
    assert rec.messages == []


async def test_tls_against_a_plain_server_fails_with_a_hint(open_target):
    with smtp_server() as (server, rec):
        outcome = await deliver_once(open_target(server, security="tls"))
    assert isinstance(outcome, Failed) and "check that security: tls and the port match" in outcome.reason
    assert rec.messages == []


async def test_starttls_against_an_implicit_tls_port_times_out_with_a_hint(open_target, tls):
    with smtp_server(ssl_context=tls.server_context()) as (server, _):
        outcome = await deliver_once(open_target(server, security="starttls", ca_file=str(tls.cert), timeout="0.2s"))
    assert isinstance(outcome, Retry) and "within 0.2s (while connecting)" in outcome.reason and "set security: tls" in outcome.reason


async def test_wrong_password_fails_without_showing_it(open_target, tls):
    with smtp_server(tls_context=tls.server_context(), auth=True) as (server, rec):
        target = open_target(server, security="starttls", ca_file=str(tls.cert), username=USER, password="wrong-" + PASSWORD)
        outcome = await deliver_once(target)
    assert isinstance(outcome, Failed) and "535" in outcome.reason and "login" in outcome.reason
    assert PASSWORD not in outcome.reason
    assert rec.messages == [] and rec.logins


async def test_a_server_echoing_the_password_does_not_get_it_into_the_reason(open_target, tls):
    with smtp_server(tls_context=tls.server_context(), auth=True) as (server, rec):
        rec.auth_reply = "535 5.7.8 wrong password: wrong-" + PASSWORD
        target = open_target(server, security="starttls", ca_file=str(tls.cert), username=USER, password="wrong-" + PASSWORD)
        outcome = await deliver_once(target)
    assert isinstance(outcome, Failed) and PASSWORD not in outcome.reason and "wrong password: ***" in outcome.reason


async def test_security_none_against_a_server_requiring_starttls_fails(open_target, tls):
    with smtp_server(tls_context=tls.server_context(), require_starttls=True) as (server, rec):
        outcome = await deliver_once(open_target(server, security="none"))
    assert isinstance(outcome, Failed) and "530" in outcome.reason
    assert rec.messages == []


# --- refusals and errors ------------------------------------------------------------------------


async def test_one_recipient_refused_is_delivered_with_the_refusal_noted(open_target):
    with smtp_server() as (server, rec):
        rec.refuse["bad@example.com"] = "550 5.1.1 no such user"
        target = open_target(server, to=["ops@example.com", "bad@example.com"])
        outcome = await deliver_once(target)
    assert isinstance(outcome, Delivered)
    assert outcome.detail.endswith("; refused: bad@example.com (550 5.1.1 no such user)")
    assert rec.messages[0].rcpt_tos == ["ops@example.com"]


@pytest.mark.parametrize(
    ("codes", "kind"),
    [(("550 5.1.1 no such user", "550 5.1.1 no such user"), Failed), (("451 4.3.0 try later", "451 4.3.0 try later"), Retry),
     (("550 5.1.1 no such user", "451 4.3.0 try later"), Retry)],
)
async def test_every_recipient_refused(open_target, codes, kind):
    with smtp_server() as (server, rec):
        rec.refuse.update(zip(["a@example.com", "b@example.com"], codes, strict=True))
        outcome = await deliver_once(open_target(server, to=["a@example.com", "b@example.com"]))
    assert type(outcome) is kind
    assert f"a@example.com ({codes[0]}), b@example.com ({codes[1]})" in outcome.reason
    assert rec.messages == []


@pytest.mark.parametrize(("reply", "kind"), [("421 4.3.2 shutting down", Retry), ("451 4.3.0 local error", Retry), ("554 5.6.0 rejected", Failed)])
async def test_data_refused(open_target, reply, kind):
    with smtp_server() as (server, rec):
        rec.data_reply = reply
        outcome = await deliver_once(open_target(server))
    assert type(outcome) is kind and reply in outcome.reason


async def test_a_connection_is_not_reused_after_an_error(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server)
        rec.data_reply = "554 5.6.0 rejected"
        assert isinstance(await target.deliver(delivery()), Failed)
        assert not target.connected
        rec.data_reply = None
        assert isinstance(await deliver_once(target), Delivered)
        assert server.connections == 2


async def test_connection_refused_is_retried(open_target):
    target = open_target(host="127.0.0.1", port=free_port())
    outcome = await deliver_once(target)
    assert isinstance(outcome, Retry) and "cannot reach 127.0.0.1" in outcome.reason


async def test_a_silent_server_times_out_within_the_total_timeout(open_target):
    stalled: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: stalled.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = open_target(host="127.0.0.1", port=port, timeout="0.2s")
        started = time.monotonic()
        outcome = await deliver_once(target)
        assert time.monotonic() - started < 2
    finally:
        for w in stalled:
            w.close()
        server.close()
        await server.wait_closed()
    assert isinstance(outcome, Retry) and "within 0.2s (while connecting)" in outcome.reason


async def test_the_timeout_bounds_the_whole_send_not_each_step(open_target):
    # Each answer comes within the timeout, but together they take longer.
    with smtp_server() as (server, rec):
        rec.delay = 0.15
        outcome = await deliver_once(open_target(server, timeout="0.25s"))
    assert isinstance(outcome, Retry) and "did not finish within 0.25s (while sending)" in outcome.reason


def test_outcome_rules_for_smtp_exceptions():
    import aiosmtplib

    assert isinstance(outcome_for_error(aiosmtplib.SMTPAuthenticationError(454, "4.7.0 try later"), "h:587", "logging in"), Retry)
    assert isinstance(outcome_for_error(aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad"), "h:587", "logging in"), Failed)
    assert isinstance(outcome_for_error(aiosmtplib.SMTPSenderRefused(553, "not yours", FROM), "h:587", "sending"), Failed)
    assert isinstance(outcome_for_error(aiosmtplib.SMTPConnectResponseError(421, "busy"), "h:587", "connecting"), Retry)
    assert isinstance(outcome_for_error(aiosmtplib.SMTPServerDisconnected("gone"), "h:587", "sending"), Retry)
    assert isinstance(outcome_for_error(aiosmtplib.SMTPReadTimeoutError("slow"), "h:587", "sending"), Retry)
    assert isinstance(outcome_for_error(ConnectionResetError("reset"), "h:587", "sending"), Retry)


# --- the connection -----------------------------------------------------------------------------


async def test_two_deliveries_share_one_connection(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server)
        assert isinstance(await target.deliver(delivery(id="1" * 32)), Delivered)
        assert target.connected
        assert isinstance(await target.deliver(delivery(id="2" * 32)), Delivered)
        await target.aclose()
        assert server.connections == 1
    assert len(rec.messages) == 2 and rec.messages[0].peer == rec.messages[1].peer
    assert target.connections == 1 and rec.quits == 1


async def test_concurrent_deliveries_are_serialised_on_one_connection(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server)
        outcomes = await asyncio.gather(*(target.deliver(delivery(id=f"{i:032x}")) for i in range(5)))
        await target.aclose()
        assert server.connections == 1
    assert all(isinstance(o, Delivered) for o in outcomes) and len(rec.messages) == 5


async def test_a_connection_dropped_by_the_server_is_replaced(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server)
        assert isinstance(await target.deliver(delivery(id="1" * 32)), Delivered)
        smtpd = server.smtpd
        server.loop.call_soon_threadsafe(smtpd.transport.close)
        assert isinstance(await target.deliver(delivery(id="2" * 32)), Delivered)
        await target.aclose()
        assert server.connections == 2
    assert len(rec.messages) == 2 and rec.messages[0].peer != rec.messages[1].peer


async def test_a_reused_connection_answering_421_is_replaced_transparently(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server)
        assert isinstance(await target.deliver(delivery(id="1" * 32)), Delivered)
        rec.noop_reply = "421 4.4.2 idle too long, closing"
        assert isinstance(await target.deliver(delivery(id="2" * 32)), Delivered)
        await target.aclose()
        assert server.connections == 2
    assert [m.mail[DELIVERY_ID_HEADER] for m in rec.messages] == ["1" * 32, "2" * 32]


async def test_an_idle_connection_is_closed_after_keepalive(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server, keepalive="50ms")
        assert isinstance(await target.deliver(delivery()), Delivered)
        deadline = time.monotonic() + 3
        while target.connected and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a property, with a deadline
            await asyncio.sleep(0.01)
        assert not target.connected
        assert isinstance(await target.deliver(delivery()), Delivered)  # reconnects
        await target.aclose()
        assert server.connections == 2
    assert rec.quits == 2


async def test_keepalive_zero_quits_after_each_mail(open_target):
    with smtp_server() as (server, rec):
        target = open_target(server, keepalive=0)
        assert isinstance(await target.deliver(delivery()), Delivered)
        assert not target.connected and rec.quits == 1
        await target.aclose()


# --- options ------------------------------------------------------------------------------------


def options(**overrides: Any) -> EmailOptions:
    return EmailOptions.model_validate({"host": "smtp.example.com", "from": FROM, "to": ["ops@example.com"], **overrides})


def error_of(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as info:
        options(**overrides)
    return str(info.value)


def test_defaults_and_ports():
    o = options()
    assert (o.security, o.smtp_port, o.timeout, o.keepalive, o.from_, o.to) == ("starttls", 587, 30.0, 30.0, FROM, ("ops@example.com",))
    assert options(security="tls").smtp_port == 465
    assert options(security="none").smtp_port == 25
    assert options(security="tls", port=2465).smtp_port == 2465
    assert options(to="ops@example.com").to == ("ops@example.com",)
    assert options(timeout="1m", keepalive="0s").timeout == 60.0
    assert EmailOptions(host="h", from_=FROM, to=["a@b"]).from_ == FROM  # by field name too


@pytest.mark.parametrize(
    "bad",
    ["", "ops", "ops@@example.com", "a@b@c", "ops @example.com", "ops@example.com\nBcc: x@evil.com", "ops@example.com\r\n",
     "a@example.com, b@example.com", "a@example.com;b@example.com", "Ops <ops@example.com>", "@example.com", "ops@", "ops@.example.com",
     "ops@example..com", "a..b@example.com", "ops@example.com\x00"],
)
def test_bad_addresses_are_refused(bad):
    with pytest.raises(ValueError):
        check_address(bad)
    assert "to" in error_of(to=[bad])
    assert "bcc" in error_of(bcc=bad)


@pytest.mark.parametrize("good", ["ops@example.com", "ops+fig@example.com", "o.p-s@mail.example.co.uk", "root@localhost"])
def test_good_addresses(good):
    assert options(to=[good], cc=[good]).to == (good,)


def test_sender_may_carry_a_display_name_but_no_line_break():
    assert options(**{"from": '"Fig, Alerts" <fig@example.com>'}).from_ == '"Fig, Alerts" <fig@example.com>'
    assert "from" in error_of(**{"from": "Fig\nBcc: x@evil.com <fig@example.com>"})
    assert "from" in error_of(**{"from": "Fig <fig@example.com\n>"})
    assert "from" in error_of(**{"from": "fig"})


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"to": []}, "at least one"),
        ({"username": USER}, "both username and password"),
        ({"password": PASSWORD}, "both username and password"),
        ({"username": USER, "password": PASSWORD, "security": "none"}, "in clear"),
        ({"security": "ssl"}, "security"),
        ({"subject": "{{ Nope }}"}, "subject"),
        ({"subject": "{% if %}"}, "syntax error"),
        ({"ca_file": "/nonexistent/ca.pem"}, "no such file"),
        ({"timeout": 0}, "more than 0"),
        ({"timeout": "soon"}, "not a duration"),
        ({"keepalive": "1h"}, "at most 10m"),
        ({"host": "smtp.example.com:587"}, "port"),
        ({"host": "smtps://smtp.example.com"}, "not a URL"),
        ({"port": 0}, "port"),
        ({"sender": FROM}, "Extra inputs"),
    ],
)
def test_invalid_options(overrides, needle):
    assert needle in error_of(**overrides)


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    assert "PEM" in error_of(ca_file=str(bogus))


def test_the_password_never_shows_in_errors_or_reprs():
    o = options(username=USER, password=PASSWORD)
    assert PASSWORD not in repr(o) and PASSWORD not in str(o.model_dump())
    assert PASSWORD not in error_of(username=USER, password=PASSWORD, security="none")


def test_registers_the_email_type():
    registered = []
    figrelay_client_types(registered.append)
    [client_type] = registered
    assert client_type.name == "email" and client_type.options is EmailOptions and client_type.open is EmailTarget
    assert client_type.renders_messages and client_type.default_min_interval == 0.0 and client_type.default_coalesce == 30.0
