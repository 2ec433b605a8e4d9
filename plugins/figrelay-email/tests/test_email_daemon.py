"""The email client type inside a real figrelay daemon, through figrelay's test kit
(figrelay.testing's fixtures), sending to a real SMTP server (aiosmtpd, as in test_email.py) that
requires STARTTLS and a login: a mail for a Fig event, a 4xx answer retried, refused recipients
kept as a dead letter, and the SMTP password never in the log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_email import FROM, PASSWORD, USER, CountingController, Recorder, Tls, smtp_server, tls  # noqa: F401 (tls: its fixture)

from figrelay.testing import figrelay_config


@pytest.fixture
def smtp(request: pytest.FixtureRequest) -> Iterator[tuple[CountingController, Recorder, Tls]]:
    """A real SMTP server on loopback that requires STARTTLS and a login; the certificate to trust."""
    certificate: Tls = request.getfixturevalue("tls")
    options = {"require_starttls": True, "auth": True, "auth_require_tls": True, "auth_required": True}
    with smtp_server(tls_context=certificate.server_context(), **options) as (controller, recorder):
        yield controller, recorder, certificate


def config(controller: CountingController, certificate: Tls) -> str:
    client = {
        "name": "ops-mail", "type": "email", "host": controller.hostname, "port": controller.port, "security": "starttls",
        "ca_file": str(certificate.cert), "username": USER, "password": PASSWORD, "from": FROM, "to": ["ops@example.com"], "coalesce": 0,
        "timeout": "5s",
    }  # fmt: skip
    return figrelay_config(clients=[client], hooks=[{"event": "SettingValueChanged", "client": "ops-mail"}])


async def test_a_fig_event_becomes_a_mail_and_a_4xx_is_retried(figrelay_daemon, fig_sender, smtp):
    controller, recorder, certificate = smtp
    recorder.data_reply = "451 4.3.0 mailbox busy, try again"
    daemon = await figrelay_daemon(config(controller, certificate))
    sent = await fig_sender(daemon).send("SettingValueChanged", ClientName="PaymentsApi")
    [retried] = await daemon.wait_for_deliveries(1, state="pending", where=lambda d: d.attempts >= 1)
    recorder.data_reply = None  # the server takes mail again
    [delivery] = await daemon.wait_for_deliveries(1)
    assert delivery.delivery_id == retried.delivery_id == sent.delivery_ids[0]
    outcomes = [(a.outcome, a.status) for a in daemon.state.attempts(delivery.delivery_id)]
    assert outcomes[0] == ("retry", 451) and outcomes[-1][0] == "delivered"
    [mail] = recorder.messages
    assert mail.tls and mail.mail_from == FROM and mail.rcpt_tos == ["ops@example.com"] and mail.login == USER.encode()
    assert "PaymentsApi: 2 settings changed" in str(mail.mail["Subject"])
    assert "Increase timeout for peak" in mail.part("plain")
    assert PASSWORD not in daemon.log


async def test_refused_recipients_are_a_dead_letter(figrelay_daemon, fig_sender, smtp):
    controller, recorder, certificate = smtp
    recorder.refuse["ops@example.com"] = "550 5.1.1 no such mailbox"
    daemon = await figrelay_daemon(config(controller, certificate))
    await fig_sender(daemon).send("SettingValueChanged")
    [dead] = await daemon.wait_for_deliveries(1, state="dead")
    assert dead.attempts == 1 and "no such mailbox" in (dead.last_reason or "")
    assert recorder.messages == []
