"""``figrelay new-plugin``: the plugin it writes installs, lints clean, loads in figrelay and
passes its own tests against a real daemon, as generated; bad names and used folders are refused
with a message that says what to do; docs/plugins.md shows its output as it is.

The generated plugin is installed into a private folder (``pip install --target``) and reached
through PYTHONPATH by the subprocesses only, so the daemons of the rest of the suite never load
it. ``--no-build-isolation --no-index``: no download, so it works offline, with the setuptools of
this environment (requirements-dev.txt)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from figrelay import PLUGIN_API
from figrelay.scaffold import FILES, ScaffoldError, plugin_names, render_plugin


def figrelay(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "figrelay", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120
    )


def install_privately(folder: Path, site: Path) -> None:
    """``pip install`` the plugin in ``folder`` into ``site`` alone, offline."""
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--no-cache-dir",
         "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr


def docs_output() -> str:
    """The output docs/plugins.md shows for `figrelay new-plugin pager`."""
    text = (REPO / "docs" / "plugins.md").read_text()
    section = text[text.index("## Starting a plugin") :]
    return re.search(r"```sh\nfigrelay new-plugin pager\n```\n\n```text\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_a_generated_plugin_installs_loads_and_passes_its_own_tests(tmp_path: Path) -> None:
    made = figrelay("new-plugin", "pager", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout == docs_output(), "docs/plugins.md (Starting a plugin) shows another output: copy this one there"
    folder = tmp_path / "figrelay-pager"
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert written == sorted([".gitignore", "README.md", "figrelay_pager.py", "pyproject.toml", "tests/test_pager.py"])
    module = (folder / "figrelay_pager.py").read_text()
    assert f"FIGRELAY_PLUGIN_API = {PLUGIN_API}\n" in module
    assert "{{" not in "".join(p.read_text() for p in folder.rglob("*") if p.is_file())

    # lint clean under figrelay's own rules (a plugin author's first `ruff check` finds nothing)
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--line-length", "160", "--select", "F,E,W,B,I,UP,RUF,ASYNC", "."],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    site = tmp_path / "site"
    install_privately(folder, site)
    private = {"PYTHONPATH": str(site)}

    listed = figrelay("plugins", cwd=tmp_path, env=private)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("pager ")]
    assert row.split()[1:4] == ["figrelay-pager", "0.1.0", str(PLUGIN_API)], row
    assert "pager: POST each event as JSON to an HTTP endpoint, with a bearer token" in listed.stdout

    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=folder, capture_output=True, text=True, timeout=600,
        env={**os.environ, **private},
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"^5 passed", tests.stdout, re.M), tests.stdout


def test_the_folder_can_be_chosen_and_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    made = figrelay("new-plugin", "ops_chat", "--dir", "empty", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "Wrote the figrelay plugin 'ops_chat' (distribution figrelay-ops-chat) in empty:" in made.stdout
    assert "class OpsChatOptions(ClientOptions):" in (tmp_path / "empty" / "figrelay_ops_chat.py").read_text()
    assert (tmp_path / "empty" / "tests" / "test_ops_chat.py").is_file()
    again = figrelay("new-plugin", "ops_chat", "--dir", "empty", cwd=tmp_path)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr == (
        "figrelay new-plugin: empty is not empty; figrelay new-plugin writes only into a new or empty folder: give another with --dir PATH\n"
    )
    (tmp_path / "a-file").write_text("x")
    assert "a-file is a file, not a folder" in figrelay("new-plugin", "x", "--dir", "a-file", cwd=tmp_path).stderr


@pytest.mark.parametrize(
    "name, hint",
    [("Pager", "perhaps 'pager'"), ("pager-duty", "perhaps 'pager_duty'"), ("figrelay-pager", "perhaps 'pager'"), ("pager__x", "perhaps 'pager_x'"),
     ("_pager", "perhaps 'pager'"), ("x" * 33, f"perhaps {'x' * 32!r}"), ("", "")],
)  # fmt: skip
def test_an_invalid_name_is_refused_saying_what_names_are_valid(name: str, hint: str) -> None:
    with pytest.raises(ScaffoldError) as refused:
        plugin_names(name)
    message = str(refused.value)
    assert message.startswith(f"{name!r} is not a valid plugin name: a plugin name is a lower-case letter followed by lower-case letters, digits")
    assert message.endswith(hint) if hint else "perhaps" not in message


def test_the_name_of_an_installed_plugin_or_client_type_is_refused(tmp_path: Path) -> None:
    refused = figrelay("new-plugin", "slack", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("figrelay new-plugin: 'slack' is already a client type of an installed plugin (figrelay-slack ")
    assert "choose another name" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_every_file_is_rendered_with_every_placeholder_filled() -> None:
    files = render_plugin(plugin_names("ops_chat"))
    assert set(files) == {p.format(module="figrelay_ops_chat", name="ops_chat") for p in FILES}
    assert 'ops_chat = "figrelay_ops_chat"' in files["pyproject.toml"] and 'name = "figrelay-ops-chat"' in files["pyproject.toml"]
    assert "token: ${OPS_CHAT_TOKEN}" in files["README.md"]
    assert not any("{{" in text for text in files.values())


def test_the_guides_smallest_plugin_installs_and_loads_as_shown(tmp_path: Path) -> None:
    # docs/plugins.md "The smallest plugin": its pyproject.toml and module, taken from the markdown,
    # build and install offline, and figrelay lists the type and accepts the guide's client
    text = (REPO / "docs" / "plugins.md").read_text()
    section = text[text.index("## The smallest plugin") : text.index("## The plugin API reference")]
    toml, module, yaml = (re.search(rf"```{kind}\n(.*?)```", section, re.S).group(1) for kind in ("toml", "python", "yaml"))  # type: ignore[union-attr]
    assert "[build-system]" in toml, "without it, pip falls back to setuptools' legacy build, and other tools refuse the project"
    folder = tmp_path / "figrelay-pager"
    folder.mkdir()
    (folder / "pyproject.toml").write_text(toml)
    (folder / "figrelay_pager.py").write_text(module)
    site = tmp_path / "site"
    install_privately(folder, site)
    private = {"PYTHONPATH": str(site), "PAGER_KEY": "0123456789abcdef0123456789abcdef"}
    listed = figrelay("plugins", cwd=tmp_path, env=private)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("pager ")]
    assert row.split()[1:4] == ["figrelay-pager", "0.1.0", str(PLUGIN_API)], row
    config = tmp_path / "figrelay.yaml"
    config.write_text(f"listen: 127.0.0.1:0\nstate_dir: ./state\n{yaml}hooks:\n  - {{event: SecurityEvent, client: oncall}}\n")
    checked = figrelay("check", "--config", str(config), cwd=tmp_path, env=private)
    assert checked.returncode == 0, checked.stdout + checked.stderr
