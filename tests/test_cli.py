"""The figrelay command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def figrelay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "figrelay", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_check_accepts_the_example_config():
    result = figrelay("check", "--config", str(REPO / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK ") and "1 clients, 8 hooks" in result.stdout


def test_check_reports_every_problem_with_file_line_and_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "listen: 0.0.0.0:8970\n"
        "clients:\n"
        "  - name: a\n"
        "    type: htp\n"
        "  - name: b\n"
        "    type: http\n"
        "    base_uri: https://x/\n"
        "    secret: ${NOT_SET_ANYWHERE}\n"
        "hooks:\n"
        "  - {event: SettingValueChange, client: b}\n"
        "  - {event: MinRunSessions, client: c, min_sessions: 0}\n"
        "  - {event: SecurityEvent, client: b, client_regex: '(unclosed'}\n"
    )
    result = figrelay("check", "--config", str(config))
    assert result.returncode == 1
    err = result.stderr
    expected = [
        f"{config}:4: clients[0].type: unknown client type 'htp'; did you mean 'http'?",
        f"{config}:8: clients[1].secret: environment variable NOT_SET_ANYWHERE is not set",
        f"{config}:10: hooks[0].event: unknown event 'SettingValueChange'; did you mean 'SettingValueChanged'?",
        f"{config}:11: hooks[1].client: no client is named 'c'",
        f"{config}:11: hooks[1].min_sessions: must be at least 1, got 0",
        f"{config}:12: hooks[2].client_regex: invalid regular expression '(unclosed': missing ) at position 9",
        f"{config}:1: listen: no secret is configured but figrelay listens on 0.0.0.0:8970",
    ]
    for line in expected:
        assert line in err, f"missing {line!r} in:\n{err}"
    assert "7 problems" in err


def test_check_names_an_unreadable_file(tmp_path):
    result = figrelay("check", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert f"{tmp_path / 'missing.yaml'}: cannot read the configuration: No such file or directory" in result.stderr


def test_config_from_environment_and_usage_errors(tmp_path):
    assert figrelay("check").returncode == 2
    assert "--config" in figrelay("check").stderr
    result = figrelay("check", env={"FIGRELAY_CONFIG": str(REPO / "config.example.yaml")})
    assert result.returncode == 0
    assert figrelay("--help").returncode == 0
    assert figrelay("--version").stdout.startswith("figrelay ")


def test_plugins_lists_types():
    result = figrelay("plugins")
    assert result.returncode == 0
    assert "figrelay-http" in result.stdout and "http: POST each event" in result.stdout
