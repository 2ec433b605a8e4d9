"""figrelay's ``teams`` client type: posts each message to a Microsoft Teams channel or chat through
a Workflows (Power Automate) webhook, as an Adaptive Card 1.4, or as a legacy MessageCard for a flow
that expects one.

    clients:
      - name: ops-teams
        type: teams
        webhook_url: ${TEAMS_WEBHOOK_URL}   # the URL of a "Post to a channel when a webhook request is received" workflow
        format: adaptive                    # or messagecard
        timeout: 10s

The workflow URL is a credential (its ``sig=`` parameter): it never appears in an outcome's reason.
The retired Office 365 connector URLs (``*.webhook.office.com``) are refused when the configuration
loads, with what to use instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from pydantic import ConfigDict, SecretStr, field_validator
from yarl import URL

from figrelay.delivery import (
    RETRYABLE_STATUSES,
    ClientContext,
    ClientOptions,
    ClientType,
    Delivered,
    Delivery,
    Failed,
    Outcome,
    Retry,
    body_excerpt,
    is_loopback_host,
    parse_retry_after,
    redact_url,
)
from figrelay.durations import Timeout
from figrelay.hookspecs import hookimpl
from figrelay.messages import MAX_DIGEST_LINES, Message, Severity, describe

FIGRELAY_PLUGIN_API = 1  # the figrelay plugin API versions this plugin works with (docs/plugins.md)

# Teams refuses a message over 28 KB. The body is measured as sent (compact JSON with every
# non-ASCII character escaped, the largest form the flow could re-serialise it to) and kept
# under 27,000 bytes, which leaves headroom under either reading of "28 KB".
MAX_BODY_BYTES = 27_000
TRUNCATED = "… (truncated)"
MIN_FACT_BYTES = len('{"title":"","value":""},')  # so a card holds at most limit // MIN_FACT_BYTES facts
MAX_ERROR_BODY = 1024

CARD_VERSION = "1.4"
"""Cards marked 1.5 fail to render when posted through Workflows, so every card is a 1.4 card and
uses only elements and properties that 1.4 defines (tests/test_card_schema.py checks each one)."""
CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
ALLOWED_ACTIONS = frozenset({"Action.OpenUrl", "Action.ShowCard", "Action.ToggleVisibility"})
TEST_MARKER = "🧪 TEST: sent from Fig's Test button"

TEXT_COLOUR = {Severity.GOOD: "Good", Severity.INFO: "Accent", Severity.WARNING: "Warning", Severity.CRITICAL: "Attention"}
"""Adaptive Card TextBlock colours for the heading, so that a critical message stands out."""

LEGACY_CONNECTOR = (
    "is a legacy Office 365 connector (Incoming Webhook) URL. Microsoft has retired Office 365 connectors "
    "in Teams, so this URL no longer delivers messages. Create a Workflows webhook instead: in Teams, open "
    "the channel's … menu > Workflows, choose the template \"Post to a channel when a webhook request is "
    "received\", and set webhook_url to the URL the workflow gives you"
)


# --- options ------------------------------------------------------------------------------------


def _is_legacy_connector(host: str, path: str) -> bool:
    if host == "webhook.office.com" or host.endswith(".webhook.office.com"):
        return True
    return host in ("outlook.office.com", "outlook.office365.com") and path.lower().startswith("/webhook")


class TeamsOptions(ClientOptions):
    # a rejected URL must not be echoed back by pydantic's error text: it is a credential
    model_config = ConfigDict(hide_input_in_errors=True)

    webhook_url: SecretStr
    """The URL of a Teams Workflows webhook; its ``sig=`` parameter is the credential."""
    format: Literal["adaptive", "messagecard"] = "adaptive"
    """``adaptive`` (an Adaptive Card 1.4), or ``messagecard`` (the legacy MessageCard JSON, for a
    flow built to expect it)."""
    timeout: Timeout = 10.0
    """How long one request to the workflow may take (at most 10m)."""

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value().strip()
        if not url:
            raise ValueError("is empty: set it to the URL of the Teams workflow that posts to your channel")
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            _ = parts.port  # raises on a port that is not a number
        except ValueError:
            raise ValueError("is not a valid URL: paste the workflow's URL exactly as Teams shows it") from None
        if _is_legacy_connector(host, parts.path):
            raise ValueError(LEGACY_CONNECTOR)
        if parts.scheme not in ("https", "http") or not host:
            raise ValueError(
                "must be the https:// URL of a Teams Workflows webhook, "
                "e.g. https://….logic.azure.com/workflows/…/triggers/manual/paths/invoke?…&sig=…"
            )
        if parts.scheme == "http" and not is_loopback_host(host):
            raise ValueError("must use https://; plain http:// is allowed only for a local test server (127.0.0.1, localhost or ::1)")
        if any(not 33 <= ord(c) <= 126 for c in url):
            raise ValueError("contains spaces or characters a URL cannot hold: paste the workflow's URL exactly as Teams shows it")
        return SecretStr(url)


# --- markdown -----------------------------------------------------------------------------------

# Teams reads TextBlock text, Fact.Title and Fact.Value (and MessageCard text) as a CommonMark
# subset: **bold**, _italic_, [links](url), "- " bullets and "1. " numbered lists. Escape what that
# subset would read (a "[x]" alone is no link and stays as it is; "[x](y)" loses its "](") plus a
# backslash that CommonMark would take as the start of an escape; every other character is shown
# as written.
_ESCAPING_BACKSLASH = re.compile(r"\\(?=[!-/:-@\[-`{-~])")
_EMPHASIS = str.maketrans({"*": "\\*", "_": "\\_"})
_LIST_MARKER = re.compile(r"^([ \t]*)(?:([-+])|(\d+)\.)(?=\s|$)", re.MULTILINE)


def escape_markdown(text: str) -> str:
    """Plain text escaped so that Teams shows it as it is."""
    if "\\" in text:
        text = _ESCAPING_BACKSLASH.sub(r"\\\\", text)
    text = text.translate(_EMPHASIS).replace("](", "\\](")
    return _LIST_MARKER.sub(lambda m: f"{m[1]}\\{m[2]}" if m[2] else f"{m[1]}{m[3]}\\.", text)


def markdown_paragraphs(text: str) -> str:
    """Plain text with line breaks as TextBlock markdown: a single newline is not a break there."""
    lines = "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return escape_markdown(lines).replace("\n", "\n\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- what a card says ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardContent:
    """What a card says, escaped for Teams markdown once (the size search renders many times);
    ``summary`` and ``link_label`` are plain text, since Teams does not read markdown there."""

    heading: str
    """The severity emoji and the title."""
    text: str
    severity: Severity
    facts: tuple[tuple[str, str], ...] = ()
    more_facts: int = 0
    """Facts left out to fit the size limit."""
    lines: tuple[str, ...] = ()
    """A digest's lines, one per item shown."""
    more_items: int = 0
    """A digest's items not shown as lines."""
    items_cut: bool = False
    """Whether some of ``more_items`` were left out to fit the size limit (rather than by the
    digest's usual cap on lines)."""
    is_test: bool = False
    link: str | None = None
    link_label: str = "Open in Fig"
    summary: str = ""

    def fact_rows(self) -> list[tuple[str, str]]:
        return [*self.facts, ("…", f"{self.more_facts} more facts (truncated)")] if self.more_facts else list(self.facts)

    def line_rows(self) -> list[str]:
        if not self.more_items:
            return list(self.lines)
        return [*self.lines, f"… and {self.more_items} more" + (" (truncated)" if self.items_cut else "")]

    @classmethod
    def of(cls, message: Message, limit: int = MAX_BODY_BYTES) -> CardContent:
        """The card's content; a string longer than ``limit`` could never fit and is cut before
        it is escaped, so that a huge message costs no more than a large one."""

        def md(text: str, most: int = limit) -> str:
            return escape_markdown(_one_line(_cut(text, most)))

        lines: tuple[str, ...] = ()
        text = markdown_paragraphs(_cut(message.text, limit))
        if message.items:
            # the digest's own text is a plain list of titles: render the items themselves instead,
            # each with its own severity emoji
            shown = [f"{m.severity.emoji} {m.title}" for m in message.items[:MAX_DIGEST_LINES]]
            most = max(_affordable([len(line) for line in shown], limit), FLOOR)
            lines = tuple(md(line, most) for line in shown)
            text = ""
        room = limit // MIN_FACT_BYTES
        # many long facts cannot all keep more than this (escaping only lengthens them), nor be
        # cut below FLOOR before any is dropped
        most = max(_affordable([len(x) for f in message.facts[:room] for x in (f.title, f.value)], limit), FLOOR)
        return cls(
            heading=md(f"{message.severity.emoji} {message.title}"),
            text=text,
            severity=message.severity,
            facts=tuple((md(f.title, most), md(f.value, most)) for f in message.facts[:room]),
            more_facts=max(0, len(message.facts) - room),
            lines=lines,
            more_items=len(message.items) - len(lines),
            is_test=message.is_test,
            link=message.link if message.link and _is_web_link(message.link) else None,
            link_label=_cut(_one_line(message.link_label), 100) or "Open in Fig",
            summary=_cut(_one_line(message.summary), 150),
        )


def _is_web_link(link: str) -> bool:
    """Action.OpenUrl takes an absolute http(s) URL; anything else could get the card refused."""
    try:
        parts = urlsplit(link)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in link)


def _cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters followed by the truncation marker; never ends
    halfway through a markdown escape."""
    if len(text) <= limit:
        return text
    head = text[:limit].rstrip()
    if (len(head) - len(head.rstrip("\\"))) % 2:
        head = head[:-1]
    return head + TRUNCATED


# --- renderers ----------------------------------------------------------------------------------


def adaptive_card(content: CardContent) -> dict[str, Any]:
    """The Workflows message: one Adaptive Card 1.4 attachment."""
    body: list[dict[str, Any]] = []
    if content.is_test:
        body.append({"type": "TextBlock", "text": TEST_MARKER, "weight": "Bolder", "color": "Warning", "wrap": True})
    # the heading is made by size and weight alone: "style": "heading" is an Adaptive Card 1.5
    # property, which a 1.4 card must not use (see CARD_VERSION)
    body.append({"type": "TextBlock", "text": content.heading, "weight": "Bolder", "size": "Medium", "color": TEXT_COLOUR[content.severity], "wrap": True})
    if content.text:
        body.append({"type": "TextBlock", "text": content.text, "wrap": True})
    for i, line in enumerate(content.line_rows()):
        body.append({"type": "TextBlock", "text": line, "wrap": True, "spacing": "Medium" if i == 0 else "None"})
    if facts := content.fact_rows():
        body.append({"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in facts]})
    card: dict[str, Any] = {"$schema": CARD_SCHEMA, "type": "AdaptiveCard", "version": CARD_VERSION, "fallbackText": content.summary, "body": body}
    if content.link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": content.link_label, "url": content.link}]
    card["msteams"] = {"width": "full"}
    return {"type": "message", "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card}]}


def message_card(content: CardContent) -> dict[str, Any]:
    """The legacy MessageCard JSON (title, text and facts only) for a flow that expects it."""
    card: dict[str, Any] = {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": content.severity.colour.lstrip("#"),
        "summary": content.summary,
        "title": content.heading,
    }
    if lines := content.line_rows():
        card["text"] = "\n\n".join(lines)
    elif content.text:
        card["text"] = content.text
    sections: list[dict[str, Any]] = []
    if content.is_test:
        sections.append({"activityTitle": TEST_MARKER})
    if facts := content.fact_rows():
        sections.append({"facts": [{"name": t, "value": v} for t, v in facts]})
    if sections:
        card["sections"] = sections
    if content.link:
        card["potentialAction"] = [{"@type": "OpenUri", "name": content.link_label, "targets": [{"os": "default", "uri": content.link}]}]
    return card


RENDERERS: dict[str, Callable[[CardContent], dict[str, Any]]] = {"adaptive": adaptive_card, "messagecard": message_card}


# --- fitting under the size limit ---------------------------------------------------------------


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")


# Each stage maps (content, n) to a shorter content, keeping more as n grows; fit_body() takes the
# stages in order and stops at the first that fits, with the largest n that does. Long facts, digest
# lines, heading and text are first shortened to a readable floor, in that order; only then are
# whole facts and lines dropped and the text and heading cut further.
FLOOR = 80
TEXT_FLOOR = 400
TITLE_FLOOR = 150


@dataclass(frozen=True, slots=True)
class _Stage:
    shrink: Callable[[CardContent, int], CardContent]
    low: Callable[[CardContent], int]
    high: Callable[[CardContent, int], int]
    """The largest n worth trying for a limit: beyond it the stage keeps more than could fit, so
    the search never renders a candidate much larger than the limit."""


def _affordable(lengths: list[int], limit: int) -> int:
    """The largest n such that strings of these lengths, each cut to n, total at most ``limit``."""
    lo, hi = 0, min(max(lengths, default=0), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(length, mid) for length in lengths) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _cut_facts(c: CardContent, n: int) -> CardContent:
    return replace(c, facts=tuple((_cut(t, n), _cut(v, n)) for t, v in c.facts))


def _keep_facts(c: CardContent, n: int) -> CardContent:
    if n >= len(c.facts):
        return c
    return replace(c, facts=c.facts[:n], more_facts=c.more_facts + len(c.facts) - n)


def _cut_lines(c: CardContent, n: int) -> CardContent:
    return replace(c, lines=tuple(_cut(line, n) for line in c.lines))


def _keep_lines(c: CardContent, n: int) -> CardContent:
    if n >= len(c.lines):
        return c
    return replace(c, lines=c.lines[:n], more_items=c.more_items + len(c.lines) - n, items_cut=True)


def _cut_text(c: CardContent, n: int) -> CardContent:
    return replace(c, text=_cut(c.text, n))


def _cut_heading(c: CardContent, n: int) -> CardContent:
    return replace(c, heading=_cut(c.heading, n))


def _drop_link(c: CardContent, n: int) -> CardContent:
    return c if n else replace(c, link=None)


STAGES = (
    _Stage(_cut_facts, lambda c: FLOOR, lambda c, limit: _affordable([len(v) for f in c.facts for v in f], limit)),
    _Stage(_cut_lines, lambda c: FLOOR, lambda c, limit: _affordable([len(line) for line in c.lines], limit)),
    _Stage(_cut_heading, lambda c: TITLE_FLOOR, lambda c, limit: min(len(c.heading), limit)),
    _Stage(_cut_text, lambda c: TEXT_FLOOR, lambda c, limit: min(len(c.text), limit)),
    _Stage(_keep_facts, lambda c: 0, lambda c, limit: min(len(c.facts), limit // MIN_FACT_BYTES)),
    _Stage(_keep_lines, lambda c: 0, lambda c, limit: len(c.lines)),
    _Stage(_cut_text, lambda c: 0, lambda c, limit: min(len(c.text), limit)),
    _Stage(_cut_heading, lambda c: FLOOR // 2, lambda c, limit: min(len(c.heading), limit)),
    _Stage(_drop_link, lambda c: 0, lambda c, limit: 1),
)


def _bounded(c: CardContent, limit: int) -> CardContent:
    """Without what could never fit (a string longer than the limit once escaped), so that no
    render costs much more than the limit, however large the message."""
    return replace(
        _cut_lines(_cut_facts(c, limit), limit),
        heading=_cut(c.heading, limit),
        text=_cut(c.text, limit),
        link=c.link if c.link and len(c.link) <= limit else None,
    )


def fit_body(message: Message, render: Callable[[CardContent], dict[str, Any]], limit: int = MAX_BODY_BYTES) -> bytes:
    """The rendered message as JSON bytes of at most ``limit``: shortened with a visible marker
    when it would be larger, never refused for its size."""
    # bounding first is free: it only removes what could never fit
    content = _bounded(CardContent.of(message, limit), limit)
    body = encode(render(content))
    if len(body) <= limit:
        return body
    for stage in STAGES:
        low, high = stage.low(content), stage.high(content, limit)
        shrunk = stage.shrink(content, low)
        smallest = encode(render(shrunk))
        if len(smallest) > limit:
            content, body = shrunk, smallest
            continue
        # the largest n in [low, high] that fits
        best = smallest
        lo, hi = low + 1, high
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = encode(render(stage.shrink(content, mid)))
            if len(candidate) <= limit:
                best, lo = candidate, mid + 1
            else:
                hi = mid - 1
        return best
    return body


# --- the target ---------------------------------------------------------------------------------

_SIG = re.compile(r"(?i)\bsig=[^&\s\"'<>]+")


def _url_secrets(url: str) -> list[str]:
    """Every form in which the workflow URL, its path, or its signature could turn up in a message."""
    parts = urlsplit(url)
    found = {url}
    if parts.query:
        found.add(parts.query)
    if len(parts.path) > 1:
        found |= {parts.path, url.split("?", 1)[0]}
    for piece in parts.query.split("&"):
        name, _, value = piece.partition("=")
        if name.lower() == "sig" and value:
            found |= {value, unquote(value), quote(unquote(value), safe="")}
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


class TeamsTarget:
    def __init__(self, context: ClientContext) -> None:
        options: TeamsOptions = context.options
        self._options = options
        self._http = context.http
        url = options.webhook_url.get_secret_value()
        # sent exactly as configured: re-quoting could alter the signed query (sp=%2Ftriggers%2F…)
        self._url = URL(url, encoded=True)
        self._secrets = _url_secrets(url)
        self._where = redact_url(url)
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        self._render = RENDERERS[options.format]

    def _scrub(self, text: str, cut_short: bool = False) -> str:
        """``text`` with the workflow URL and its signature blanked out, in any form. When the text
        was cut short, its end may be the start of one of them: that goes too."""
        for secret in self._secrets:
            text = text.replace(secret, "…")
        text = _SIG.sub("sig=…", text)
        if cut_short:
            for secret in self._secrets:
                for k in range(min(len(secret), len(text)) - 1, 3, -1):
                    if text.endswith(secret[:k]):
                        text = text[:-k] + "…"
                        break
        return text

    async def deliver(self, delivery: Delivery) -> Outcome:
        # figrelay fills in the message for a client type that renders messages; describe() only
        # covers a caller that did not
        message = delivery.message or describe(delivery.event, delivery.minimum)
        body = fit_body(message, self._render)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        try:
            async with self._http.post(self._url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False) as response:
                excerpt = b"" if 200 <= response.status < 300 else await response.content.read(MAX_ERROR_BODY)
                return self.outcome(response.status, response.headers.get("Retry-After"), excerpt)
        except TimeoutError:
            return Retry(f"no answer from the workflow at {self._where} within {self._options.timeout:g}s")
        except aiohttp.ClientError as exc:
            return Retry(self._scrub(f"cannot reach the workflow at {self._where}: {type(exc).__name__}: {exc}"))

    def outcome(self, status: int, retry_after: str | None, body: bytes) -> Outcome:
        """What a Workflows response means. 202 with an empty body is how a flow says yes."""
        if 200 <= status < 300:
            return Delivered(f"HTTP {status}" + (" (the flow accepted it)" if status == 202 else ""))
        # scrubbed before it is shortened, so that no part of a secret survives the cut
        excerpt = body_excerpt(self._scrub(body.decode("utf-8", "replace"), cut_short=len(body) >= MAX_ERROR_BODY))
        detail = f": {excerpt}" if excerpt else ""
        if status in (401, 403, 404):
            return Failed(
                f"HTTP {status}: the workflow refused the URL: webhook_url is wrong, or the flow is turned off or was "
                f"deleted; check the flow in Power Automate (or Teams > Workflows) and copy its URL again{detail}"
            )
        if status == 400:
            return Failed(f"HTTP 400: the workflow rejected the message{detail}")
        if 300 <= status < 400:
            return Failed(f"HTTP {status}: the workflow URL redirects elsewhere and figrelay does not follow redirects; set webhook_url to the flow's own URL")
        if status in RETRYABLE_STATUSES:
            return Retry(f"HTTP {status}{detail}", parse_retry_after(retry_after))
        return Failed(f"HTTP {status}{detail}")

    async def aclose(self) -> None:
        return None


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(
        ClientType(
            name="teams",
            options=TeamsOptions,
            open=TeamsTarget,
            description="post an Adaptive Card to a Microsoft Teams channel or chat through a Workflows webhook",
            secret_options=("webhook_url",),
            renders_messages=True,
            default_min_interval=1.0,  # no published limit for Workflows: about one message a second per URL
            default_coalesce=10.0,
            max_batch=MAX_DIGEST_LINES,
        )
    )
