"""config.example.yaml runs as shipped, and each commented example in it is valid too."""

from __future__ import annotations

import re
from pathlib import Path

from figrelay.config import load_config
from figrelay.plugins import load_plugins

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


def uncommented_examples(text: str) -> str:
    """The example with its commented client and hook examples uncommented: the commented lines
    that start a list item or continue one (tests/test_schema.py validates them too)."""
    return re.sub(r"(?m)^  # (- |  )", r"  \1", text)


def storage_forms(text: str) -> list[str]:
    """The two commented forms of ``storage:``: the URL alone, and the mapping with a lease."""
    one_line = re.search(r"(?m)^#   (storage: postgresql://\S+)$", text)
    mapping = re.search(r"(?m)^#   storage:\n((?:#     .*\n)+)", text)
    assert one_line and mapping, "config.example.yaml shows storage: in both forms"
    return [one_line.group(1), "storage:\n" + re.sub(r"(?m)^#   ", "", mapping.group(1))]


def test_example_as_shipped_is_valid_and_relays_to_the_log_client():
    config = load_config(EXAMPLE, load_plugins())
    assert [c.type for c in config.clients.values()] == ["log"]
    assert {h.event for h in config.hooks} == {
        "ClientStatusChanged", "SettingValueChanged", "NewClientRegistration", "UpdatedClientRegistration",
        "MinRunSessions", "HealthStatusChanged", "SecurityEvent",
    }


def test_every_commented_example_is_valid_once_uncommented(tmp_path, monkeypatch):
    monkeypatch.setenv("SIEM_SECRET", "siem-secret")
    monkeypatch.setenv("SIEM_SIGNING_KEY", "whsec_c2lnbmluZy1rZXk=")
    monkeypatch.setenv("SIEM_AUTH", "siem-auth-value")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/XXXX")
    monkeypatch.setenv("TEAMS_WORKFLOW_URL", "https://prod-00.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=x")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", "0123456789abcdef0123456789abcdef")
    text = uncommented_examples(EXAMPLE.read_text())
    text = text.replace("ca_file: /etc/ssl/private-ca.pem", "ca_file: " + str(tmp_path / "ca.pem"))
    uncommented = tmp_path / "all.yaml"
    uncommented.write_text(text)
    _self_signed(tmp_path / "ca.pem")
    config = load_config(uncommented, load_plugins())
    assert {c.type for c in config.clients.values()} == {"log", "http", "slack", "teams", "email", "pagerduty"}
    assert config.clients["ops-slack"].templates is not None and config.clients["ops-slack"].coalesce == 10


def _self_signed(path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_the_commented_storage_examples_are_valid(tmp_path, monkeypatch):
    """Both forms of ``storage:`` shown in the example: the URL alone, and the mapping with a lease."""
    monkeypatch.setenv("PGPASSWORD", "pg-secret")
    text = EXAMPLE.read_text()
    for i, form in enumerate(storage_forms(text)):
        path = tmp_path / f"storage{i}.yaml"
        path.write_text(text.replace("state_dir: ./state\n", "state_dir: ./state\n" + form + "\n", 1))
        config = load_config(path, load_plugins())
        assert config.storage is not None and config.storage.target.hosts == ("db.example.com",)
        assert config.storage.target.option("sslmode") == "verify-full"
        assert "pg-secret" in config.secrets, "the database password is masked like every credential"
    assert config.storage.lease == 15
