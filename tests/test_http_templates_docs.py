"""docs/plugins.md's "Templates for any JSON receiver", run: each recipe, taken from the markdown
exactly as the doc shows it, sends Fig's event through a real daemon to a real local receiver,
which gets the JSON the doc shows; and the `figrelay check` output it shows is what the command
prints. Also the http type's body end to end: Fig's body stays byte-exact without one, a body that
cannot be made is a dead letter at once, and a coalescing http client still sends one event a request."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAST_DELIVERY, REPO, event, fixture_bodies, wait_until

DOC = REPO / "docs" / "plugins.md"
SECTION = "## Templates for any JSON receiver"


def section() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"docs/plugins.md has no section {SECTION!r}"
    rest = text.split(SECTION, 1)[1]
    return rest.split("\n## ", 1)[0]


def block(marker: str) -> str:
    """The fenced block right after ``<!-- marker -->`` in the section."""
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)^```", section(), re.S | re.M)
    assert found, f"docs/plugins.md has no block marked <!-- {marker} -->"
    return found.group(1)


def recipe_names() -> list[str]:
    return re.findall(r"<!-- recipe: ([\w-]+) -->", section())


def config(recipe: str) -> str:
    """The recipe as the doc shows it, in a whole configuration for a test daemon."""
    return "listen: 127.0.0.1:0\nstate_dir: ./state\n" + FAST_DELIVERY + "\n" + recipe


def test_the_section_shows_two_recipes_at_least():
    assert len(recipe_names()) >= 2, recipe_names()


@pytest.mark.parametrize("name", recipe_names())
async def test_recipe_sends_what_the_doc_shows(name, daemon_factory, receiver):
    recipe = block(f"recipe: {name}")
    [variable] = set(re.findall(r"\$\{(\w+)\}", recipe))
    [(marker, fixture)] = re.findall(rf"<!-- (recipe: {re.escape(name)} receives ([\w.]+)) -->", section())
    expected = json.loads(block(marker))
    # the receiver stands for the real service: an address with a token in its path and query
    webhook = f"{receiver.url}/webhooks/{name}/T0KEN?key=KEY&token=T0KEN"
    daemon = await daemon_factory(config(recipe), env={variable: webhook})
    status, payload = await daemon.post(fixture.split(".")[0], fixture_bodies()[fixture])
    assert status == 200 and payload["status"] == "accepted", payload
    await wait_until(lambda: len(receiver.requests) == 1, what=f"the {name} recipe's request")
    [got] = receiver.requests
    assert got.path == f"/webhooks/{name}/T0KEN", "url is used as it is: nothing appended"
    assert {k: got.query[k] for k in ("key", "token")} == {"key": "KEY", "token": "T0KEN"}
    assert got.headers["Content-Type"] == "application/json"
    assert got.json == expected
    assert "T0KEN" not in daemon.log, "the webhook URL is a credential: masked in the log"


async def test_discord_recipe_keeps_within_discords_2000_characters(daemon_factory, receiver):
    daemon = await daemon_factory(config(block("recipe: discord")), env={"DISCORD_WEBHOOK_URL": f"{receiver.url}/api/webhooks/1/t"})
    await daemon.post("SettingValueChanged", event("SettingValueChanged", ChangeMessage="@everyone " + "x" * 5000))
    await wait_until(lambda: len(receiver.requests) == 1)
    sent = receiver.requests[0].json
    assert len(sent["content"]) == 2000 and sent["content"].endswith("…")
    assert sent["allowed_mentions"] == {"parse": []}, "no @everyone ping from a change message"


async def test_google_chat_recipe_threads_by_setting_client_and_security_events_together(daemon_factory, receiver):
    url = f"{receiver.url}/v1/spaces/AAAA/messages?key=K&token=T"
    daemon = await daemon_factory(config(block("recipe: google-chat")), env={"GOOGLE_CHAT_WEBHOOK_URL": url})
    await daemon.post("SecurityEvent", fixture_bodies()["SecurityEvent"])
    await daemon.post("ClientStatusChanged", event("ClientStatusChanged", ClientName="BillingApi"))
    await wait_until(lambda: len(receiver.requests) == 2)
    assert {r.json["thread"]["threadKey"] for r in receiver.requests} == {"fig-SecurityEvent", "fig-BillingApi"}
    assert {r.query["messageReplyOption"] for r in receiver.requests} == {"REPLY_MESSAGE_FALLBACK_TO_NEW_THREAD"}


def test_the_check_output_shown_is_what_figrelay_check_prints(tmp_path: Path):
    (tmp_path / "figrelay.yaml").write_text(block("http body check: figrelay.yaml"), encoding="utf-8")
    shown = block("http body check: output").splitlines()
    assert shown[0] == "$ figrelay check --config figrelay.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "figrelay", "check", "--config", "figrelay.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == shown[1:]


# --- the http type's body, end to end ------------------------------------------------------------


def two_clients(url: str, body_hooks: str, body: str, extra: str = "") -> str:
    return config(f"""
clients:
  - name: fig-format
    type: http
    base_uri: {url}/fig/
  - name: templated
    type: http
    url: {url}/templated
    {extra}
    body: '{body}'
hooks:
  - {{event: SettingValueChanged, client: fig-format}}
{body_hooks}
""")


async def test_without_body_fig_s_bytes_go_unchanged_beside_a_templated_client(daemon_factory, receiver):
    hooks = "  - {event: SettingValueChanged, client: templated}"
    daemon = await daemon_factory(two_clients(receiver.url, hooks, '{"text": {{ message.title|tojson }}, "id": {{ delivery.id|tojson }}}'))
    sent = event("SettingValueChanged", ChangeMessage='Größe "peak" ✓\tnow', Username=None)
    status, payload = await daemon.post("SettingValueChanged", sent)
    assert status == 200
    await wait_until(lambda: len(receiver.requests) == 2)
    by_path = {r.path: r for r in receiver.requests}
    assert by_path["/fig/SettingValueChanged"].body == sent
    assert by_path["/fig/SettingValueChanged"].headers["Content-Type"] == "application/json; charset=utf-8"
    templated = by_path["/templated"]
    assert templated.json == {"text": "OrdersApi: 2 settings changed", "id": templated.headers["X-Figrelay-Delivery"]}
    assert {"id": templated.headers["X-Figrelay-Delivery"], "client": "templated", "hook": 1} in payload["deliveries"]


async def test_a_body_that_cannot_be_made_is_a_dead_letter_at_once(daemon_factory, receiver):
    hooks = "  - {event: HealthStatusChanged, client: templated}\n  - {event: SettingValueChanged, client: templated}"
    daemon = await daemon_factory(two_clients(receiver.url, hooks, '{"client": "{{ ClientName }}", "settings": {{ UpdatedSettings|tojson }}}'))
    await daemon.post("HealthStatusChanged", event("HealthStatusChanged"))
    undefined = await daemon.wait_for_log(r"HealthStatusChanged to templated failed for good, kept as a dead letter: (.*)")
    assert "'UpdatedSettings' is undefined (HealthStatusChanged events have no UpdatedSettings: guard it with" in undefined.group(1)
    await daemon.post("SettingValueChanged", event("SettingValueChanged", ClientName='Orders"Api'))
    invalid = await daemon.wait_for_log(r"SettingValueChanged to templated failed for good, kept as a dead letter: (.*)")
    assert "made invalid JSON from this SettingValueChanged event: Expecting ',' delimiter at line 1, column 20:" in invalid.group(1)
    assert '{"client": "Orders"<here>Api"' in invalid.group(1)
    await wait_until(lambda: len(receiver.requests) == 1)  # Fig's format still went to the other client
    assert receiver.paths() == ["/fig/SettingValueChanged"]
    assert not re.search(r"to templated failed.*retrying in", daemon.log), "never retried"


async def test_a_coalescing_http_client_still_sends_one_event_a_request(daemon_factory, receiver):
    hooks = "  - {event: SettingValueChanged, client: templated}"
    daemon = await daemon_factory(two_clients(receiver.url, hooks, '{"settings": {{ UpdatedSettings|tojson }}}', extra="coalesce: 1s"))
    names = [f"Setting{i}" for i in range(3)]
    await asyncio.gather(*(daemon.post("SettingValueChanged", event("SettingValueChanged", UpdatedSettings=[n])) for n in names))
    await wait_until(lambda: len([r for r in receiver.requests if r.path == "/templated"]) == 3, what="three templated requests")
    bodies = sorted(r.json["settings"][0] for r in receiver.requests if r.path == "/templated")
    assert bodies == names
