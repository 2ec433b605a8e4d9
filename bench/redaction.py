"""Redaction cost: microseconds per log line for figrelay's redactor, with the credentials of a
busy configuration (an intake secret, http, Slack webhook and bot, Teams, SMTP), on lines that
hold no secret (the common case) and on lines that echo one.

    .venv/bin/python bench/redaction.py [--lines 20000]

Every log line and every stored delivery error passes through it, so a line without a secret
should cost a few microseconds, about as much as formatting the line.
"""

from __future__ import annotations

import argparse
import time
from urllib.parse import quote

from figrelay.logs import RedactSecrets

SECRETS = [
    "d21b0b4b-b978-4048-85be-eb73e057f6fb",
    "$2a$11$3xvQfzPYHvedNwRz.DWX8ecezdoiarEEuvAjL9BxBiUiPZ9BC/oYC",
    "http-downstream-secret",
    "whsec_c2lnbmluZy1rZXktZm9yLXRlc3Rz",
    "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/XXXXslackpathYYYYzzzz1234",
    "xoxb-1234-5678-botsecrettoken",
    "https://prod-01.westeurope.logic.azure.com:443/workflows/0123456789abcdef0123456789abcdef/triggers/manual/paths/invoke"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcde",
    "smtp-PASS-word-9",
]

LINES = {
    "accepted": "accepted SettingValueChanged for OrdersApi: delivery 6f0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e to platform-teams",
    "delivered": "delivery 6f0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e: SettingValueChanged to ops-slack delivered (HTTP 200 ok, attempt 1)",
    "escapes": 'refused POST /x%20y from 10.0.0.1: 400 invalid_event: {"a": "b\\\\n\\\\u00e9 50% + more"} \\x1b[31m',
    "echoed token": "delivery 6f0c: failed: HTTP 400: bad request Authorization: Bearer xoxb-1234-5678-botsecr…",
    "echoed URL": "HTTP 404: no route " + quote("/services/T0123ABCD/B0123ABCD/XXXXslackpathYYYYzzzz1234", safe=""),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20000)
    args = parser.parse_args()
    redactor = RedactSecrets()
    started = time.perf_counter()
    redactor.update(SECRETS)
    print(f"compiling {len(SECRETS)} credentials: {(time.perf_counter() - started) * 1000:.1f} ms")
    for name, line in LINES.items():
        started = time.perf_counter()
        for _ in range(args.lines):
            redactor.redact(line)
        per_line = (time.perf_counter() - started) / args.lines * 1e6
        print(f"{name:14} {per_line:6.2f} µs per line ({len(line)} characters) -> {redactor.redact(line)}")


if __name__ == "__main__":
    main()
