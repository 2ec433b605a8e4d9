"""figrelay's sample events: the payloads of Fig's Test button are Fig's own, byte for byte, and
``figrelay test`` sends them (or, with ``--samples``, the realistic samples marked as tests)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from datetime import datetime, timezone

from conftest import write_config
from figrelay.events import FigDateTime
from figrelay.samples import TEST_LINK, sample_events, sample_test_events, test_button_events
from test_e2e import all_routes_to, relay_config

# Fig's Test-button bodies as Fig's WebHookClientTestingService builds them (Fig 4.0.0), copied
# from the project's notes on Fig, in the order Fig sends them. <now> stands for the time of the
# test. Copied rather than read, so that the suite stands on its own.
FIG_TEST_BUTTON = [
    ("ClientStatusChanged", '{"ClientName":"Test","Instance":null,"ConnectionEvent":0,"StartTime":"<now>","IpAddress":"192.168.1.1","Hostname":"localhost","FigVersion":"X","ApplicationVersion":"X","Link":"https://localhost:7148/","IsTest":true}'),
    ("SettingValueChanged", '{"ClientName":"Test","Instance":null,"UpdatedSettings":["TestSetting"],"Username":"FigTester","Link":"https://localhost:7148/","ChangeMessage":"TestOnly","IsTest":true}'),
    ("NewClientRegistration", '{"ClientName":"Test","Instance":null,"Settings":["TestSetting"],"RegistrationType":0,"Link":"https://localhost:7148/","IsTest":true}'),
    ("UpdatedClientRegistration", '{"ClientName":"Test","Instance":null,"Settings":["TestSetting"],"RegistrationType":1,"Link":"https://localhost:7148/","IsTest":true}'),
    ("MinRunSessions", '{"ClientName":"Test","Instance":null,"RunSessions":1,"RunSessionsEvent":0,"Link":"https://localhost:7148/","IsTest":true}'),
    ("HealthStatusChanged", '{"ClientName":"Test","Instance":null,"Hostname":"server1","IpAddress":"1.2.3.4","Status":0,"FigVersion":"v1","ApplicationVersion":"v2","HealthDetails":{"Status":0,"Components":[]},"Link":"https://localhost:7148/","IsTest":true}'),
    ("SecurityEvent", '{"EventType":"Login","Timestamp":"<now>","Username":"testuser","Success":true,"IpAddress":"192.168.1.1","Hostname":"testhost","FailureReason":null,"Uri":"https://localhost:7148/","IsTest":true}'),
]  # fmt: skip

_TIME_FIELD = re.compile(rb'"(StartTime|Timestamp)":"([^"]*)"')


def normalised(body: bytes) -> tuple[bytes, list[str]]:
    """The body with its time fields replaced by <now>, and the times it held."""
    times = [m[2].decode() for m in _TIME_FIELD.finditer(body)]
    return _TIME_FIELD.sub(rb'"\1":"<now>"', body), times


def test_test_button_events_are_figs_bodies_byte_for_byte():
    now = datetime(2026, 3, 4, 5, 6, 7, 890120, tzinfo=timezone.utc)
    events = test_button_events(now)
    assert [e.route for e in events] == [route for route, _ in FIG_TEST_BUTTON], "Fig's order"
    for event, (route, body) in zip(events, FIG_TEST_BUTTON, strict=True):
        assert event.to_json().decode() == body.replace("<now>", "2026-03-04T05:06:07.89012Z"), route


def test_test_button_events_carry_the_time_of_the_test():
    before = datetime.now(timezone.utc)
    events = test_button_events()
    after = datetime.now(timezone.utc)
    for event, (route, body) in zip(events, FIG_TEST_BUTTON, strict=True):
        got, times = normalised(event.to_json())
        assert got.decode() == body, route
        for text in times:
            assert before <= FigDateTime.parse(text).datetime <= after, (route, text)
    assert all(e.test for e in events) and {e.setting_client for e in events} == {"Test", None}


def test_sample_test_events_are_the_realistic_samples_marked_as_tests():
    samples, marked = sample_events(), sample_test_events()
    assert [e.route for e in marked] == [e.route for e in samples]
    for sample, test in zip(samples, marked, strict=True):
        assert test.test and not sample.test
        assert test.to_wire() == dict(sample.to_wire(), IsTest=True)
    assert TEST_LINK not in json.dumps([e.to_wire() for e in marked]), "realistic links, not Fig's test address"


# --- figrelay test CLIENT -----------------------------------------------------------------------


async def _figrelay(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "figrelay", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_test_command_sends_figs_exact_test_button_bodies(receiver_factory, tmp_path):
    target = await receiver_factory()
    config = write_config(tmp_path / "figrelay.yaml", relay_config({"fig-like": target}, all_routes_to("fig-like"), intake="  secret: s"))
    before = datetime.now(timezone.utc)
    code, out, err = await _figrelay("test", "fig-like", "--config", str(config))
    after = datetime.now(timezone.utc)
    assert code == 0, err
    assert out.startswith("Fig's Test-button events to fig-like (http):") and "all delivered" in out
    assert [r.path for r in target.requests] == [f"/fig/{route}" for route, _ in FIG_TEST_BUTTON]
    for request, (route, body) in zip(target.requests, FIG_TEST_BUTTON, strict=True):
        got, times = normalised(request.body)
        assert got.decode() == body, route
        assert all(before <= FigDateTime.parse(t).datetime <= after for t in times), times


async def test_test_command_with_samples_sends_the_realistic_samples_marked_as_tests(receiver_factory, tmp_path):
    target = await receiver_factory()
    config = write_config(tmp_path / "figrelay.yaml", relay_config({"preview": target}, all_routes_to("preview"), intake="  secret: s"))
    code, out, err = await _figrelay("test", "preview", "--samples", "--config", str(config))
    assert code == 0, err
    assert out.startswith("figrelay's sample events (marked as tests) to preview (http):")
    assert [r.body for r in target.requests] == [e.to_json() for e in sample_test_events()]
    assert {r.json["ClientName"] for r in target.requests if "ClientName" in r.json} == {"OrdersApi"}
