"""The figrelay command line."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from figrelay import cli
from figrelay.config import load_config
from figrelay.plugins import load_plugins

REPO = Path(__file__).resolve().parent.parent


def figrelay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "figrelay", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_check_accepts_the_example_config():
    result = figrelay("check", "--config", str(REPO / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK ") and "1 client, 8 hooks" in result.stdout
    assert result.stderr == "", "no warning for the relative ./state of a checkout"


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


# --- state_dir: figrelay check warns when figrelay could not write it ----------------------------


def _config_with_state_dir(tmp_path: Path, state_dir: str) -> Path:
    config = tmp_path / "figrelay.yaml"
    config.write_text(
        f"state_dir: {state_dir}\nclients:\n  - {{name: console, type: log}}\nhooks:\n  - {{event: SecurityEvent, client: console}}\n"
    )
    return config


def test_check_warns_when_state_dir_cannot_be_created(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = figrelay("check", "--config", str(_config_with_state_dir(tmp_path, "./a-file/state")))
    assert result.returncode == 0 and result.stdout.startswith("OK "), "a warning, not a problem"
    assert f"warning: state_dir {tmp_path / 'a-file' / 'state'} cannot be created: {tmp_path / 'a-file'} is not a directory" in result.stderr

    result = figrelay("check", "--config", str(_config_with_state_dir(tmp_path, "./a-file")))
    assert result.returncode == 0 and f"warning: state_dir {tmp_path / 'a-file'} is not a directory" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_check_warns_when_state_dir_is_not_writable(tmp_path):
    locked = tmp_path / "locked"
    (locked / "state").mkdir(parents=True)
    locked.chmod(0o500)
    (locked / "state").chmod(0o500)
    try:
        result = figrelay("check", "--config", str(_config_with_state_dir(tmp_path, "./locked/state")))
        assert result.returncode == 0 and f"warning: state_dir {locked / 'state'} is not writable by user" in result.stderr
        result = figrelay("check", "--config", str(_config_with_state_dir(tmp_path, "./locked/new/state")))
        assert result.returncode == 0 and f"does not exist and cannot be created: {locked} is not writable by user" in result.stderr
    finally:
        (locked / "state").chmod(0o700)
        locked.chmod(0o700)


def test_state_dir_outside_the_units_state_directory_is_a_warning_for_a_server_config(tmp_path, monkeypatch):
    # The unit's layout, moved into tmp_path: /etc/figrelay holds the config, /var/lib/figrelay is
    # the one folder ProtectSystem=strict leaves writable. Root can create /etc/figrelay/state from
    # a shell, but the service could not.
    etc, var_lib = tmp_path / "etc" / "figrelay", tmp_path / "var" / "lib" / "figrelay"
    etc.mkdir(parents=True)
    monkeypatch.setattr(cli, "UNIT_CONFIG_DIR", etc)
    monkeypatch.setattr(cli, "UNIT_STATE_DIR", var_lib)
    [warning] = cli.state_dir_warnings(etc / "state", etc / "config.yaml")
    assert f"state_dir {etc / 'state'} is outside {var_lib}" in warning and "ProtectSystem=strict" in warning
    assert "state_dir: ${STATE_DIRECTORY:-" in warning
    assert cli.state_dir_warnings(var_lib, etc / "config.yaml") == []
    assert cli.state_dir_warnings(tmp_path / "dev" / "state", tmp_path / "dev" / "config.yaml") == [], "a checkout is not the unit's layout"


# --- the README's server install works as written -----------------------------------------------


def _section(doc: Path, heading: str) -> str:
    text = doc.read_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def _shell_lines(section: str) -> list[str]:
    """The commands of the ```sh blocks in a section, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _pip_installed_dirs(lines: list[str], checkout: str) -> set[Path]:
    """The folders of this repository that the `pip install` lines install (parsed, not run)."""
    installed: set[Path] = set()
    for line in lines:
        words = shlex.split(line.split("#", 1)[0])
        if "pip" not in " ".join(words) or "install" not in words:
            continue
        for word in words[words.index("install") + 1 :]:
            if not word.startswith("-"):
                installed.add((REPO / (word.removeprefix(checkout).lstrip("/") or ".")).resolve())
    return installed


def _plugin_dirs_by_type() -> dict[str, Path]:
    """Each built-in client type and the plugin folder (distribution) that provides it."""
    dirs: dict[str, Path] = {}
    for pyproject in REPO.glob("plugins/*/pyproject.toml"):
        for client_type in tomllib.loads(pyproject.read_text())["project"]["entry-points"]["figrelay"]:
            dirs[client_type] = pyproject.parent.resolve()
    return dirs


def _types_in(config_text: str) -> set[str]:
    return set(re.findall(r"(?m)^\s*(?:- )?type: (\w+)", config_text))


EXAMPLE_TEXT = (REPO / "config.example.yaml").read_text()
EXAMPLE_TYPES_WHEN_UNCOMMENTED = _types_in(re.sub(r"(?m)^  # (- |  )", r"  \1", EXAMPLE_TEXT))


def test_readme_server_install_installs_every_plugin_the_example_config_needs():
    lines = _shell_lines(_section(REPO / "README.md", "## Installing on a server"))
    installed = _pip_installed_dirs(lines, "./")
    assert REPO.resolve() in installed, "the core itself"
    providers = _plugin_dirs_by_type()
    assert _types_in(EXAMPLE_TEXT) == {"log"}
    for client_type in sorted(EXAMPLE_TYPES_WHEN_UNCOMMENTED):  # what it uses, and what its commented examples use
        assert providers[client_type] in installed, f"the README's server install does not install {providers[client_type].name} (type {client_type})"


def test_operations_guide_install_installs_what_its_configuration_uses():
    doc = REPO / "docs" / "operations.md"
    installed = _pip_installed_dirs(_shell_lines(_section(doc, "## 1. Install")), "./figrelay")
    assert REPO.resolve() in installed
    providers = _plugin_dirs_by_type()
    config = re.search(r"```yaml\n(.*?)```", _section(doc, "## 2. Configure"), re.S)
    assert config is not None
    for client_type in sorted(_types_in(config.group(1)) | EXAMPLE_TYPES_WHEN_UNCOMMENTED):
        assert providers[client_type] in installed, f"docs/operations.md's install does not install {providers[client_type].name}"


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
def test_readme_server_install_points_state_dir_at_the_units_state_directory(tmp_path, monkeypatch):
    """The README's config steps (install, then its sed line, run on a copy) give a configuration
    whose state_dir is the unit's StateDirectory, which is all ProtectSystem=strict leaves writable."""
    [edit] = [line for line in _shell_lines(_section(REPO / "README.md", "## Installing on a server")) if "state_dir" in line]
    config = tmp_path / "config.yaml"
    shutil.copy(REPO / "config.example.yaml", config)
    subprocess.run(["sh", "-c", edit.removeprefix("sudo ").replace("/etc/figrelay/config.yaml", str(config))], check=True, timeout=60)
    assert "state_dir: ${STATE_DIRECTORY:-/var/lib/figrelay}" in config.read_text()
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert load_config(config, load_plugins()).state_dir == Path("/var/lib/figrelay")
    unit = (REPO / "systemd" / "figrelay.service").read_text()
    assert re.search(r"(?m)^StateDirectory=figrelay$", unit) and re.search(r"(?m)^ProtectSystem=strict$", unit)


# --- output into a pipe that closed (figrelay plugins | head) ------------------------------------


def figrelay_into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run figrelay with its stdout a pipe whose reader has gone: every write to it fails (EPIPE),
    whatever the timing, as after `| head` has read its lines."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "figrelay", *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
        )
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_every_command_quietly(tmp_path):
    example = str(REPO / "config.example.yaml")
    for args in (("plugins",), ("check", "--config", example), ("matches", "--client-name", "OrdersApi", "--config", example)):
        result = figrelay_into_closed_pipe(*args)
        assert result.stderr == "", f"figrelay {' '.join(args)}: {result.stderr}"
        assert result.returncode == 128 + signal.SIGPIPE, "the status of a process that SIGPIPE ended, as for cat or grep"
    for args in (("--help",), ("deliveries", "--help")):  # argparse drops what it cannot write, and exits 0
        result = figrelay_into_closed_pipe(*args)
        assert result.stderr == "" and result.returncode in (0, 128 + signal.SIGPIPE), result


def test_plugins_help_and_check_help_have_examples():
    for command in ("plugins", "check", "run"):
        out = figrelay(command, "--help").stdout
        assert "examples:" in out and f"figrelay {command}" in out.split("examples:")[1]


def test_retry_or_purge_of_a_pending_id_says_it_is_still_pending():
    import dataclasses
    import time

    from figrelay.commands import _not_a_dead_letter
    from figrelay.storage import StoredDelivery

    row = StoredDelivery("6f0c" * 8, "siem", "SecurityEvent", b"{}", 0, time.time() - 60, 3, time.time() + 30, "pending", "HTTP 503", None)
    why = _not_a_dead_letter(row.id, row, "retry")
    assert why.startswith("still pending, not a dead letter (to siem, 3 attempts so far, next try in ") and "nothing to retry" in why
    assert "1 attempt so far" in _not_a_dead_letter(row.id, dataclasses.replace(row, attempts=1), "purge")
