"""Every Adaptive Card the teams plugin produces is valid for the version it declares (1.4).

Cards marked 1.5 fail to render through Workflows, so the plugin marks its cards 1.4; a card that
says 1.4 and uses a 1.5 property (``"style": "heading"`` did) is reported by Microsoft's own SDK
and may be refused or drawn wrongly. This walks each card and checks every element, property and
enumerated value against an allow-list of what Adaptive Cards 1.4 defines, each with the version
that introduced it (from the typed schema in microsoft/AdaptiveCards, ``schemas/src``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from figrelay.delivery import ClientContext, Delivered, Delivery
from figrelay.events import FigEvent, parse_event
from figrelay.messages import Fact, Message, Severity, describe, digest
from figrelay.samples import sample_events, sample_test_events
from figrelay.samples import test_button_events as button_events
from figrelay.templates import MessageTemplates
from figrelay.testing import http_receiver
from figrelay_teams import CARD_VERSION, TeamsOptions, TeamsTarget, adaptive_card, fit_body

# --- Adaptive Cards 1.4, as an allow-list ---------------------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class Kind:
    """An element, action or object type: the version that introduced it and its properties,
    each with the version that introduced it."""

    since: str
    properties: dict[str, str]
    newer: dict[str, str] = field(default_factory=dict)
    """Properties of later versions, named so that a failure says which version they need."""


# Every enumerated value is case-insensitive in Adaptive Cards; these are the 1.4 values.
SPACING = {"default", "none", "small", "medium", "large", "extralarge", "padding"}
ENUMS: dict[str, set[str]] = {
    "size": {"default", "small", "medium", "large", "extralarge"},  # TextBlock; Image has its own below
    "weight": {"default", "lighter", "bolder"},
    "color": {"default", "dark", "light", "accent", "good", "warning", "attention"},
    "spacing": SPACING,
    "horizontalAlignment": {"left", "center", "right"},
    "verticalContentAlignment": {"top", "center", "bottom"},
    "fontType": {"default", "monospace"},
    "height": {"auto", "stretch"},
}
CONTAINER_STYLES = {"default", "emphasis", "good", "attention", "warning", "accent"}
ENUMS_OF: dict[tuple[str, str], set[str]] = {
    ("Container", "style"): CONTAINER_STYLES,
    ("Column", "style"): CONTAINER_STYLES,
    ("ColumnSet", "style"): CONTAINER_STYLES,
    ("Image", "size"): {"auto", "stretch", "small", "medium", "large"},
    ("Image", "style"): {"default", "person"},
    ("Action.OpenUrl", "style"): {"default", "positive", "destructive"},
    ("Action.ShowCard", "style"): {"default", "positive", "destructive"},
    ("Action.ToggleVisibility", "style"): {"default", "positive", "destructive"},
}
BOOLEANS = {"wrap", "isSubtle", "separator", "isVisible", "bleed"}

_ITEM = {"id": "1.0", "requires": "1.2"}
_ELEMENT = {**_ITEM, "isVisible": "1.2", "fallback": "1.2", "height": "1.1", "separator": "1.0", "spacing": "1.0"}
_ELEMENT_NEWER = {"grid.area": "1.5", "targetWidth": "1.6"}
_ACTION = {**_ITEM, "title": "1.0", "iconUrl": "1.1", "style": "1.2", "fallback": "1.2"}
_ACTION_NEWER = {"tooltip": "1.5", "isEnabled": "1.5", "mode": "1.5", "role": "1.5"}

ELEMENTS: dict[str, Kind] = {
    "TextBlock": Kind("1.0", {
        **_ELEMENT, "text": "1.0", "color": "1.0", "fontType": "1.2", "horizontalAlignment": "1.0", "isSubtle": "1.0",
        "maxLines": "1.0", "size": "1.0", "weight": "1.0", "wrap": "1.0",
    }, {**_ELEMENT_NEWER, "style": "1.5"}),
    "FactSet": Kind("1.0", {**_ELEMENT, "facts": "1.0"}, _ELEMENT_NEWER),
    "Image": Kind("1.0", {
        **_ELEMENT, "url": "1.0", "altText": "1.0", "backgroundColor": "1.1", "height": "1.1", "horizontalAlignment": "1.0",
        "selectAction": "1.1", "size": "1.0", "style": "1.0", "width": "1.1",
    }, _ELEMENT_NEWER),
    "Container": Kind("1.0", {
        **_ELEMENT, "items": "1.0", "selectAction": "1.1", "style": "1.0", "verticalContentAlignment": "1.1", "bleed": "1.2",
        "backgroundImage": "1.2", "minHeight": "1.2",
    }, {**_ELEMENT_NEWER, "rtl": "1.5"}),
    "ColumnSet": Kind("1.0", {
        **_ELEMENT, "columns": "1.0", "selectAction": "1.1", "style": "1.2", "bleed": "1.2", "minHeight": "1.2", "horizontalAlignment": "1.0",
    }, _ELEMENT_NEWER),
    "ActionSet": Kind("1.2", {**_ELEMENT, "actions": "1.2"}, _ELEMENT_NEWER),
    "Table": Kind("1.5", {}),
}
COLUMN = Kind("1.0", {
    **_ELEMENT, "items": "1.0", "backgroundImage": "1.2", "bleed": "1.2", "minHeight": "1.2", "selectAction": "1.1", "style": "1.0",
    "verticalContentAlignment": "1.1", "width": "1.0",
}, {**_ELEMENT_NEWER, "rtl": "1.5"})
FACT = Kind("1.0", {"title": "1.0", "value": "1.0"})
ACTIONS: dict[str, Kind] = {
    "Action.OpenUrl": Kind("1.0", {**_ACTION, "url": "1.0"}, _ACTION_NEWER),
    "Action.ShowCard": Kind("1.0", {**_ACTION, "card": "1.0"}, _ACTION_NEWER),
    "Action.ToggleVisibility": Kind("1.2", {**_ACTION, "targetElements": "1.2"}, _ACTION_NEWER),
    "Action.Execute": Kind("1.4", {**_ACTION, "verb": "1.4", "data": "1.4", "associatedInputs": "1.4"}, _ACTION_NEWER),
}
CARD = Kind("1.0", {
    "type": "1.0", "version": "1.0", "$schema": "1.0", "body": "1.0", "actions": "1.0", "selectAction": "1.1", "fallbackText": "1.0",
    "backgroundImage": "1.0", "minHeight": "1.2", "speak": "1.0", "lang": "1.0", "verticalContentAlignment": "1.1",
    "refresh": "1.4", "authentication": "1.4",
    # not in the schema: Teams' own extension to the card (full-width cards), which Teams reads
    # whatever the version and other hosts ignore
    "msteams": "1.0",
}, {"rtl": "1.5", "metadata": "1.6"})


def _values(name: str, key: str) -> set[str] | None:
    """The values a property takes, when it is enumerated."""
    if (name, key) in ENUMS_OF:
        return ENUMS_OF[name, key]
    if name == "Image" and key in ("height", "width"):
        return None  # a pixel size ("50px") as well
    return ENUMS.get(key)


class CardError(AssertionError):
    pass


def check_card(card: Any, version: str | None = None) -> None:
    """Raise CardError naming the first element, property or value that ``version`` (default:
    the card's own) does not define."""
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        raise CardError(f"not an Adaptive Card: {str(card)[:80]}")
    declared = version or card.get("version")
    if not isinstance(declared, str):
        raise CardError("the card declares no version")
    _Checker(_version(declared), declared).card(card, "card")


@dataclass
class _Checker:
    limit: tuple[int, ...]
    declared: str

    def _fail(self, where: str, what: str) -> CardError:
        return CardError(f"{where}: {what}, which Adaptive Card {self.declared} does not define")

    def _properties(self, obj: dict[str, Any], kind: Kind, name: str, where: str) -> None:
        if _version(kind.since) > self.limit:
            raise self._fail(where, f"{name} is Adaptive Card {kind.since}")
        for key, value in obj.items():
            if key == "type":
                continue
            since = kind.properties.get(key)
            if since is None:
                later = kind.newer.get(key)
                raise self._fail(where, f"{name}.{key} is " + (f"an Adaptive Card {later} property" if later else "not a known property"))
            if _version(since) > self.limit:
                raise self._fail(where, f"{name}.{key} is an Adaptive Card {since} property")
            allowed = _values(name, key)
            if allowed is not None and isinstance(value, str) and value.lower() not in allowed:
                raise self._fail(where, f"{name}.{key} = {value!r} is not one of its values ({', '.join(sorted(allowed))})")
            if key in BOOLEANS and not isinstance(value, bool):
                raise CardError(f"{where}: {name}.{key} must be true or false, not {value!r}")

    def card(self, card: dict[str, Any], where: str) -> None:
        self._properties(card, CARD, "AdaptiveCard", where)
        for i, element in enumerate(card.get("body", [])):
            self.element(element, f"{where}.body[{i}]")
        for i, action in enumerate(card.get("actions", [])):
            self.action(action, f"{where}.actions[{i}]")
        if "selectAction" in card:
            self.action(card["selectAction"], f"{where}.selectAction")

    def element(self, element: Any, where: str) -> None:
        name = element.get("type") if isinstance(element, dict) else None
        kind = ELEMENTS.get(str(name))
        if kind is None:
            raise self._fail(where, f"element type {name!r} is not a known element")
        self._properties(element, kind, str(name), where)
        if name == "TextBlock" and not isinstance(element.get("text"), str):
            raise CardError(f"{where}: a TextBlock needs its text")
        for i, item in enumerate(element.get("items", [])):
            self.element(item, f"{where}.items[{i}]")
        for i, column in enumerate(element.get("columns", [])):
            if not isinstance(column, dict) or column.get("type", "Column") != "Column":
                raise self._fail(f"{where}.columns[{i}]", "a ColumnSet holds only Columns")
            self._properties(column, COLUMN, "Column", f"{where}.columns[{i}]")
            for j, item in enumerate(column.get("items", [])):
                self.element(item, f"{where}.columns[{i}].items[{j}]")
        for i, fact in enumerate(element.get("facts", [])):
            self._properties(fact, FACT, "Fact", f"{where}.facts[{i}]")
            if not all(isinstance(fact.get(k), str) for k in ("title", "value")):
                raise CardError(f"{where}.facts[{i}]: a Fact needs a title and a value")
        for i, action in enumerate(element.get("actions", [])):
            self.action(action, f"{where}.actions[{i}]")
        if "selectAction" in element:
            self.action(element["selectAction"], f"{where}.selectAction")

    def action(self, action: Any, where: str) -> None:
        name = action.get("type") if isinstance(action, dict) else None
        kind = ACTIONS.get(str(name))
        if kind is None:
            raise self._fail(where, f"action type {name!r} is not a known action")
        self._properties(action, kind, str(name), where)
        if name == "Action.ShowCard" and "card" in action:
            # a card inside Action.ShowCard carries no version of its own: the outer card's holds
            self.card(dict(action["card"], version=self.declared), f"{where}.card")


# --- the checker catches what it must -------------------------------------------------------------


def _card(*body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4", "body": list(body), **extra}


@pytest.mark.parametrize(
    "card, complaint",
    [
        # what the plugin sent before: the heading marked with a 1.5 property
        (_card({"type": "TextBlock", "text": "x", "weight": "Bolder", "size": "Medium", "style": "heading"}), "TextBlock.style is an Adaptive Card 1.5 property"),
        (_card({"type": "Table", "rows": []}), "Table is Adaptive Card 1.5"),
        (_card({"type": "Container", "items": [], "rtl": True}), "Container.rtl is an Adaptive Card 1.5 property"),
        (_card({"type": "TextBlock", "text": "x"}, actions=[{"type": "Action.OpenUrl", "url": "https://x", "tooltip": "t"}]), "Action.OpenUrl.tooltip"),
        (_card({"type": "TextBlock", "text": "x"}, actions=[{"type": "Action.Submit"}]), "'Action.Submit' is not a known action"),
        (_card({"type": "TextBlock", "text": "x", "color": "Red"}), "TextBlock.color = 'Red' is not one of its values"),
        (_card({"type": "TextBlock", "text": "x", "colour": "Good"}), "TextBlock.colour is not a known property"),
        (_card({"type": "FactSet", "facts": [{"title": "a", "value": "b", "speak": "c"}]}), "Fact.speak"),
        (_card({"type": "ColumnSet", "columns": [{"type": "Column", "items": [{"type": "RichTextBlock", "inlines": []}]}]}), "'RichTextBlock'"),
        (_card({"type": "TextBlock", "text": "x"}, rtl=False), "AdaptiveCard.rtl is an Adaptive Card 1.5 property"),
    ],
)
def test_the_checker_refuses_what_14_does_not_define(card, complaint):
    with pytest.raises(CardError, match=re.escape(complaint)):
        check_card(card)


def test_the_checker_takes_a_14_card_with_every_listed_element():
    check_card(_card(
        {"type": "TextBlock", "text": "x", "size": "medium", "weight": "bolder", "color": "attention", "wrap": True, "spacing": "None"},
        {"type": "Container", "style": "emphasis", "items": [{"type": "Image", "url": "https://x/i.png", "size": "Small", "altText": "i"}]},
        {"type": "ColumnSet", "columns": [{"type": "Column", "width": "auto", "items": [{"type": "FactSet", "facts": [{"title": "a", "value": "b"}]}]}]},
        {"type": "ActionSet", "actions": [{"type": "Action.ToggleVisibility", "title": "more", "targetElements": ["x"]}]},
        actions=[{"type": "Action.OpenUrl", "title": "Open", "url": "https://x"},
                 {"type": "Action.ShowCard", "title": "Details", "card": {"type": "AdaptiveCard", "body": [{"type": "TextBlock", "text": "y"}]}}],
        msteams={"width": "full"},
    ))
    with pytest.raises(CardError, match=re.escape("ActionSet is Adaptive Card 1.2")):
        check_card(_card({"type": "ActionSet", "actions": []}), version="1.1")


# --- every card the plugin produces ---------------------------------------------------------------


def _setting_changed(**fields: Any) -> FigEvent:
    event = sample_events("SettingValueChanged")[0]
    return parse_event("SettingValueChanged", dict(event.to_wire(), **fields))


def every_message() -> Iterator[tuple[str, Message]]:
    """The messages the plugin is given: each event type (every sample, Fig's Test-button events,
    the samples marked as tests), digests, templates, and messages large enough to be shortened."""
    for i, event in enumerate([*sample_events(), *button_events(), *sample_test_events()]):
        yield f"{event.route}-{i}{'-test' if event.test else ''}", describe(event)
    [below, _] = sample_events("MinRunSessions")
    yield "below-minimum-of-a-hook", describe(below, 2)
    yield "digest-of-every-sample", digest([describe(e) for e in sample_events()])
    yield "digest-of-test-events", digest([describe(e) for e in button_events()])
    yield "digest-of-40", digest([describe(_setting_changed(UpdatedSettings=[f"Setting{i}"])) for i in range(40)])
    yield "digest-cut-for-size", digest([describe(_setting_changed(UpdatedSettings=[f"S{i}_" + "z" * 5000])) for i in range(40)])
    templates = MessageTemplates(title="{{ ClientName }} changed {{ UpdatedSettings|join(', ') }}", text="{{ message.text }} (templated)")
    event = sample_events("SettingValueChanged")[0]
    yield "template", templates.apply(event, describe(event))
    yield "no-text-no-facts-no-link", Message("OrdersApi: something", "", Severity.INFO)
    yield "facts-dropped", Message("t", "x", Severity.CRITICAL, facts=tuple(Fact(f"C{i}", "Unhealthy: " + "x" * 300) for i in range(400)))
    yield "everything-huge", Message(
        "t" * 5000, "line\n" * 9000, Severity.WARNING, facts=tuple(Fact(f"f{i}" * 50, "v_" * 3000) for i in range(60)),
        link="http://localhost:5050/" + "p" * 30_000, is_test=True,
    )


MESSAGES = list(every_message())


@pytest.mark.parametrize("name, message", MESSAGES, ids=[name for name, _ in MESSAGES])
def test_every_card_is_a_valid_14_card(name, message):
    payload = json.loads(fit_body(message, adaptive_card))
    [attachment] = payload["attachments"]
    card = attachment["content"]
    assert card["version"] == CARD_VERSION == "1.4"
    check_card(card)


async def test_every_card_posted_is_a_valid_14_card():
    """The same, for the cards as TeamsTarget.deliver posts them."""
    async with http_receiver() as receiver, aiohttp.ClientSession() as http:
        receiver.responder = lambda request: web.Response(status=202)
        url = f"{receiver.url}/workflows/x/triggers/manual/paths/invoke?sig=s"
        target = TeamsTarget(ClientContext("ops", TeamsOptions(webhook_url=url), http, logging.getLogger("test"), Path(".")))
        event = sample_events("SettingValueChanged")[0]
        for i, (_, message) in enumerate(MESSAGES):
            outcome = await target.deliver(Delivery(f"{i:032x}", "ops", event, event.to_json(), 1, 0.0, message))
            assert isinstance(outcome, Delivered)
    assert len(receiver.requests) == len(MESSAGES)
    for request, (name, _) in zip(receiver.requests, MESSAGES, strict=True):
        try:
            check_card(request.json["attachments"][0]["content"])
        except CardError as exc:
            raise CardError(f"{name}: {exc}") from None
