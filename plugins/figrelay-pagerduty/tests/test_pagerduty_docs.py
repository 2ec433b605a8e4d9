"""The docs say what the code does: the README's table of conditions, and docs/pagerduty.md with
its pictures, which docs/pagerduty_render.py generates from the plugin's code."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from figrelay.samples import sample_events
from figrelay_pagerduty import DEFAULT_SEVERITY, PagerDutyOptions, plan_event
from pagerduty_testing import ROUTING_KEY

PLUGIN = Path(__file__).resolve().parent.parent
REPO = PLUGIN.parent.parent
RENDER = REPO / "docs" / "pagerduty_render.py"


def _render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pagerduty_render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not RENDER.exists(), reason="docs/ is part of figrelay's repository, not of this plugin's distribution")
def test_docs_pagerduty_shows_what_the_code_sends():
    render = _render_script()
    produced = render.artefacts()
    assert render.differences(produced) == [], f"the docs drifted from the code: run .venv/bin/python {render.SCRIPT} and commit what it writes"
    page = produced[render.PAGE]
    for case in render.cases():
        assert f"[pagerduty/{case.name}.json](pagerduty/{case.name}.json)" in page
        if f"{render.FOLDER}/{case.name}.svg" in produced:
            assert f"(pagerduty/{case.name}.svg)" in page
    assert sum(path.endswith(".svg") for path in produced) == 5, "a picture of each trigger"


def _conditions_table() -> list[list[str]]:
    text = (PLUGIN / "README.md").read_text(encoding="utf-8")
    start = text.index("<!-- the conditions table")
    table = text[start : text.index("\n\n", start)]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[1:] if line.startswith("|")]
    return rows[2:]  # after the header and its rule


def test_the_readme_s_table_of_conditions_is_what_the_code_does():
    rows = _conditions_table()
    triggers = {condition: severity for _, condition, action, severity, _ in rows if action == "trigger"}
    assert triggers == dict(DEFAULT_SEVERITY)
    [changes] = [route for route, _, action, _, _ in rows if action == "change event"]
    options = PagerDutyOptions(routing_key=ROUTING_KEY)
    for route in re.split(r",\s*", changes):
        for event in sample_events(route):
            assert plan_event(event, "oncall", None, options).action == "change"
    for event in sample_events():
        plan = plan_event(event, "oncall", 2, options)
        if plan.action == "trigger":
            assert [event.route, plan.condition] in [row[:2] for row in rows]
