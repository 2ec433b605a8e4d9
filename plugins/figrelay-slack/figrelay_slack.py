"""figrelay's ``slack`` client type: posts each message, or each digest of a burst, to a Slack
channel as Block Kit, through an incoming webhook or a bot token's ``chat.postMessage``.

    clients:
      - name: ops-slack                        # incoming-webhook mode
        type: slack
        webhook_url: ${SLACK_WEBHOOK_URL}      # a credential: keep it out of the file
      - name: ops-slack-bot                    # bot-token mode (scope chat:write)
        type: slack
        token: ${SLACK_BOT_TOKEN}              # xoxb-... (or a user token, xoxp-...)
        channel: C0123456789                   # the channel's ID (or #name); invite the app to it
        username: Fig                          # optional; a bot needs chat:write.customize for these,
        icon_emoji: ":gear:"                   # and app-made webhooks ignore them
        timeout: 10s

How a message looks: the header (severity emoji, a [TEST] marker for tests, the title) is the
message's own block, so it stays in view even when Slack folds long secondary content. The details
(text, facts, a digest's items, the link and a "figrelay · severity" note) sit in one attachment
whose ``color`` is the severity's colour, Slack's coloured bar. Attachments are a "legacy" feature
Slack still supports and recommends only for such secondary content, which this is; Block Kit has
no other way to colour a message, and the emoji alone is easy to miss in a busy channel.

Every text is cut to Block Kit's limits with a visible "… (truncated)" instead of being refused,
and the whole message stays below about 10 000 characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from pydantic import ConfigDict, SecretStr, field_validator, model_validator

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
    check_https_url,
    parse_retry_after,
    read_capped,
    redact_url,
)
from figrelay.durations import Timeout
from figrelay.hookspecs import hookimpl
from figrelay.messages import MAX_DIGEST_LINES, Fact, Message, describe

FIGRELAY_PLUGIN_API = 1  # the figrelay plugin API versions this plugin works with (docs/plugins.md)

DEFAULT_API_URL = "https://slack.com/api/"
TOKEN_PREFIXES = ("xoxb-", "xoxp-")

# Block Kit's limits (characters, counted here in UTF-16 code units, which is never fewer)
MAX_BLOCKS = 50
MAX_HEADER = 150
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD = 2000
MAX_TEXT = 3000
"""The top-level ``text`` (notifications and clients that cannot show blocks)."""
# figrelay's own budgets, which keep the whole message well under Slack's ~12 k characters
FIELDS_BUDGET = 3000
MAX_FIELD_TITLE = 100
MAX_ITEM_TITLE = 300
MAX_FALLBACK = 300
MAX_LINK = 1500

TRUNCATED = "… (truncated)"
MAX_RESPONSE = 64 * 1024

RETRYABLE_API_ERRORS = frozenset({"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
                                  "request_timeout", "team_added_to_org"})
_GONE = "the target is gone"
_TOKEN = "check the token and that the app is still installed with the chat:write scope"
_OURS = "Slack refused the message figrelay built; please report it with the event"
_RESTRICTED = "posting to this channel is restricted for the app"
API_ERROR_HINTS = {
    "channel_not_found": f"{_GONE} or hidden from the app: check channel (prefer the channel ID) and invite the app to it",
    "is_archived": f"{_GONE}: the channel is archived",
    "not_in_channel": "the app is not a member of the channel: invite it (/invite @app) or give it chat:write.public",
    "invalid_auth": _TOKEN,
    "not_authed": _TOKEN,
    "account_inactive": f"{_TOKEN} (the app's user or workspace was deactivated)",
    "token_revoked": f"{_TOKEN} (the token was revoked)",
    "token_expired": f"{_TOKEN} (the token expired)",
    "no_permission": _TOKEN,
    "missing_scope": _TOKEN,
    "not_allowed_token_type": "use a bot (xoxb-) or user (xoxp-) token",
    "access_denied": _TOKEN,
    "ekm_access_denied": _RESTRICTED,
    "restricted_action": _RESTRICTED,
    "restricted_action_read_only_channel": _RESTRICTED,
    "restricted_action_thread_only_channel": _RESTRICTED,
    "restricted_action_non_threadable_channel": _RESTRICTED,
    "posting_to_general_channel_denied": _RESTRICTED,
    "invalid_blocks": _OURS,
    "invalid_blocks_format": _OURS,
    "invalid_attachments": _OURS,
    "msg_too_long": _OURS,
    "too_many_attachments": _OURS,
    "no_text": _OURS,
}
WEBHOOK_ERROR_HINTS = {
    "invalid_payload": _OURS,
    "action_prohibited": "a workspace admin has restricted posting to this channel",
    "posting_to_general_channel_denied": _RESTRICTED,
    "invalid_token": "the webhook is no longer valid: create a new one and update webhook_url",
    "no_service": "the webhook was disabled or removed: create a new one and update webhook_url",
    "team_disabled": "the Slack workspace was disabled",
}
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{1,63}")


# --- options ------------------------------------------------------------------------------------


class SlackOptions(ClientOptions):
    # the URL and the token must never be echoed in a validation error
    model_config = ConfigDict(hide_input_in_errors=True)

    webhook_url: SecretStr | None = None
    """Incoming-webhook mode: the URL Slack made for the webhook (itself a credential)."""
    token: SecretStr | None = None
    """Bot-token mode: a bot (``xoxb-``) or user (``xoxp-``) token with the chat:write scope."""
    channel: str | None = None
    """Bot-token mode: the channel to post to, best its ID (``C0123456789``), or ``#name``."""
    api_url: str = DEFAULT_API_URL
    """Bot-token mode: Slack's Web API base; messages go to ``<api_url>chat.postMessage``."""
    username: str | None = None
    """The name messages show as sender (1 to 80 characters), where the app may override it."""
    icon_emoji: str | None = None
    """The sender's icon, an emoji name between colons such as ``:gear:``."""
    timeout: Timeout = 10.0
    """How long one request to Slack may take (at most 10m)."""

    @field_validator("webhook_url", "token", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        # a value read from a file or an environment variable often ends in a newline
        return v.strip() if isinstance(v, str) else v

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            url = v.get_secret_value()
            check_https_url(url, "https://hooks.slack.com/services/T000/B000/XXXX")
            if not urlsplit(url).path.strip("/"):
                raise ValueError("must be the whole webhook URL Slack gave you, e.g. https://hooks.slack.com/services/T000/B000/XXXX")
        return v

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            token = v.get_secret_value()
            if token.startswith("xapp-"):
                raise ValueError("is an app-level token (xapp-), which cannot post messages; use the bot token (xoxb-) "
                                 "from your app's OAuth & Permissions page")
            if not token.startswith(TOKEN_PREFIXES) or len(token) <= 5:
                raise ValueError("must be a bot token (xoxb-…) or a user token (xoxp-…) from your app's OAuth & Permissions page")
            if any(c.isspace() for c in token):
                raise ValueError("must not contain spaces or line breaks")
        return v

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str | None) -> str | None:
        if v is not None:
            v = v.strip()
            if not v or any(c.isspace() for c in v):
                raise ValueError("must be a channel ID such as C0123456789 or a name such as #ops, without spaces")
        return v

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, v: str) -> str:
        check_https_url(v, DEFAULT_API_URL)
        parts = urlsplit(v)
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"must be a plain base URL without a query, fragment or credentials, e.g. {DEFAULT_API_URL}")
        return v if v.endswith("/") else v + "/"

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None and not 0 < len(v.strip()) <= 80:
            raise ValueError("must be 1 to 80 characters")
        return v.strip() if v is not None else None

    @field_validator("icon_emoji")
    @classmethod
    def _icon_emoji(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r":[^:\s]+:", v):
            raise ValueError("must be an emoji name between colons, e.g. :gear:")
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> SlackOptions:
        if self.webhook_url is not None and self.token is not None:
            raise ValueError("set either webhook_url (incoming-webhook mode) or token and channel (bot-token mode), not both")
        if self.webhook_url is None and self.token is None:
            raise ValueError("set webhook_url (incoming-webhook mode) or token and channel (bot-token mode)")
        if self.token is not None and self.channel is None:
            raise ValueError("channel is required with token: the channel's ID (e.g. C0123456789) or #name")
        if self.webhook_url is not None:
            if self.channel is not None:
                raise ValueError("channel works only with token: an incoming webhook always posts to the channel it was made for")
            if "api_url" in self.model_fields_set:
                raise ValueError("api_url works only with token; with webhook_url, messages go to the webhook URL")
        return self


# --- rendering: Message -> Block Kit ------------------------------------------------------------


def escape(text: str) -> str:
    """Text for mrkdwn: Slack's three control characters as the entities it expects."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def units(text: str) -> int:
    """Length as Slack may count it (UTF-16 code units: an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _prefix(text: str, limit: int) -> str:
    """The longest prefix of ``text`` at most ``limit`` units long."""
    cut = text[: max(0, limit)]
    excess = units(cut) - limit
    while excess > 0:
        cut = cut[: -max(1, excess // 2)]
        excess = units(cut) - limit
    return cut


def clip(text: str, limit: int, marker: str = TRUNCATED) -> str:
    """``text`` if it fits in ``limit`` units, else its start and a visible marker. Never leaves
    half an entity (``&am``) of escaped text behind."""
    if units(text) <= limit:
        return text
    if limit <= units(marker):
        return _prefix(text, limit)
    cut = _prefix(text, limit - units(marker))
    cut = re.sub(r"&[a-z]*$", "", cut).rstrip()
    return cut + marker


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def header_text(message: Message) -> str:
    """Severity emoji, a test marker (unless the title already has one) and the title."""
    title = _one_line(message.title) or "figrelay"
    marker = "[TEST] " if message.is_test and not title.lower().startswith("[test]") else ""
    return clip(f"{message.severity.emoji} {marker}{title}", MAX_HEADER)


def link_mrkdwn(url: str | None, label: str) -> str | None:
    """``<url|label>`` for an http(s) link, or None. The URL cannot break out of the brackets."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > MAX_LINK or any(c.isspace() for c in url):
        return None
    safe = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E").replace("|", "%7C")
    return f"<{safe}|{clip(escape(_one_line(label) or 'Open'), 100)}>"


def _field_texts(facts: Sequence[Fact]) -> list[str]:
    """At most ten ``*Title*\\nvalue`` fields sharing FIELDS_BUDGET, the short ones whole."""
    shown = list(facts)
    hidden = 0
    if len(shown) > MAX_FIELDS:
        shown, hidden = shown[: MAX_FIELDS - 1], len(shown) - (MAX_FIELDS - 1)
    heads = [f"*{clip(escape(_one_line(f.title)), MAX_FIELD_TITLE) or '—'}*\n" for f in shown]
    values = [escape(f.value.strip()) or "—" for f in shown]
    tail = f"*…*\n{hidden} more not shown {TRUNCATED.removeprefix('… ')}" if hidden else None
    remaining = FIELDS_BUDGET - (units(tail) if tail else 0)
    texts: list[str] = [""] * len(shown)
    # shortest first: each field may take an equal share of what is left, so short values stay whole
    order = sorted(range(len(shown)), key=lambda i: units(heads[i]) + units(values[i]))
    for left, i in zip(range(len(order), 0, -1), order, strict=True):
        share = min(MAX_FIELD, remaining // left)
        texts[i] = heads[i] + clip(values[i], max(1, share - units(heads[i])))
        remaining -= units(texts[i])
    return texts + ([tail] if tail else [])


def _item_sections(items: Sequence[Message]) -> list[str]:
    """A digest's messages, one line each with its own emoji, in as many sections as their text
    needs. Every item is listed: the dispatcher sends at most MAX_DIGEST_LINES (``max_batch``)
    in one message, whose lines fit in a few of the 50 blocks a message may have."""
    sections: list[str] = []
    lines: list[str] = []
    used = 0
    listed = [f"{item.severity.emoji} {clip(escape(_one_line(item.title)), MAX_ITEM_TITLE)}" for item in items[:MAX_DIGEST_LINES]]
    if len(items) > MAX_DIGEST_LINES:  # only when called with more than max_batch, never by figrelay's dispatcher
        listed.append(f"… and {len(items) - MAX_DIGEST_LINES} more {TRUNCATED.removeprefix('… ')}")
    for line in listed:
        if lines and used + units(line) + 1 > MAX_SECTION_TEXT:
            sections.append("\n".join(lines))
            lines, used = [], 0
        lines.append(line)
        used += units(line) + 1
    if lines:
        sections.append("\n".join(lines))
    return sections


def _note(message: Message) -> str:
    parts = ["figrelay", message.severity.value]
    if message.items:
        parts.append(f"digest of {len(message.items)}")
    if message.is_test:
        parts.append("*test event*")
    return " · ".join(parts)


def render(message: Message) -> dict[str, Any]:
    """The message as a Slack payload: ``text`` (the notification fallback), the header block and
    an attachment coloured by severity holding the details. Within every Block Kit limit."""
    details: list[dict[str, Any]] = []
    if message.items:
        # a digest's text is the plain form of this same list; the items give each line its emoji
        details += [{"type": "section", "text": _mrkdwn(text)} for text in _item_sections(message.items)]
    elif message.text.strip():
        details.append({"type": "section", "text": _mrkdwn(clip(escape(message.text.strip()), MAX_SECTION_TEXT))})
    if message.facts:
        details.append({"type": "section", "fields": [_mrkdwn(t) for t in _field_texts(message.facts)]})
    context = [_mrkdwn(t) for t in (link_mrkdwn(message.link, message.link_label), _note(message)) if t]
    details.append({"type": "context", "elements": context})
    return {
        "text": clip(escape(message.summary), MAX_TEXT),
        "blocks": [{"type": "header", "text": _plain(header_text(message))}],
        "attachments": [{"color": message.severity.colour, "fallback": clip(message.summary, MAX_FALLBACK), "blocks": details}],
        "unfurl_links": False,
        "unfurl_media": False,
    }


# --- outcomes -----------------------------------------------------------------------------------


def _code(value: object) -> str | None:
    """A Slack error code (``channel_not_found``), or None for anything else."""
    if isinstance(value, str) and _ERROR_CODE.fullmatch(value.strip()):
        return value.strip()
    return None


def webhook_outcome(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """An incoming webhook's answer: 200 ``ok``; errors are a status and a code in plain text."""
    text = body.decode("utf-8", "replace").strip()
    if 200 <= status < 300:
        # 200 "ok" is Slack's answer; a Slack-compatible receiver may say something else, but it took the message
        return Delivered(f"HTTP {status} ok" if text == "ok" else f"HTTP {status}" + (f": {body_excerpt(text, 100)}" if text else ""))
    code = _code(text)
    reason = f"HTTP {status}" + (f" {code}" if code else (f": {body_excerpt(text)}" if text else ""))
    if status in (404, 410):
        return Failed(f"{reason}: {_GONE} (the channel was deleted or archived, or the webhook removed); "
                      "create a new incoming webhook and update webhook_url")
    if status in RETRYABLE_STATUSES:
        return Retry(reason, parse_retry_after(headers.get("Retry-After")))
    if 300 <= status < 400:
        return Failed(f"{reason}: a redirect, which figrelay does not follow; check webhook_url")
    hint = WEBHOOK_ERROR_HINTS.get(code or "")
    return Failed(f"{reason}: {hint}" if hint else reason)


def api_outcome(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """chat.postMessage's answer: errors come as HTTP 200 with ``"ok": false``, so read ``ok``."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = None
    code = _code(data.get("error")) if data else None
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 429 or code in ("ratelimited", "rate_limited"):
        return Retry(f"Slack error {code or 'ratelimited'} (HTTP {status}): over Slack's rate limit", retry_after)
    if not 200 <= status < 300:
        reason = f"HTTP {status}" + (f" {code}" if code else (f": {body_excerpt(body)}" if body.strip() else ""))
        if status in RETRYABLE_STATUSES:
            return Retry(reason, retry_after)
        if status in (401, 403) and not code:
            return Failed(f"{reason}: {_TOKEN}")
        return Failed(reason)
    if data is None:
        excerpt = body_excerpt(body)
        return Failed(f"HTTP {status} but not a Slack Web API answer" + (f" ({excerpt})" if excerpt else "") + "; check api_url")
    if data.get("ok") is True:
        ts = data.get("ts")
        detail = f"posted, ts {ts}" if isinstance(ts, str) else "posted"
        warning = _code(data.get("warning"))
        return Delivered(f"{detail} (Slack warning {warning})" if warning else detail)
    code = code or "unknown_error"
    if code in RETRYABLE_API_ERRORS:
        return Retry(f"Slack error {code}: a problem on Slack's side", retry_after)
    hint = API_ERROR_HINTS.get(code)
    needed = data.get("needed")
    if code == "missing_scope" and isinstance(needed, str) and re.fullmatch(r"[a-z0-9:._,-]{1,100}", needed):
        hint = f"{hint}; it needs {needed}"
    return Failed(f"Slack error {code}: {hint}" if hint else f"Slack error {code}")


# --- the target ---------------------------------------------------------------------------------


class SlackTarget:
    def __init__(self, context: ClientContext) -> None:
        options: SlackOptions = context.options
        self._options = options
        self._http = context.http
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        self._headers = {"Content-Type": "application/json; charset=utf-8"}
        secrets: list[str] = []
        if options.webhook_url is not None:
            self._url = options.webhook_url.get_secret_value()
            self._outcome = webhook_outcome
            secrets += [self._url, urlsplit(self._url).path]
        else:
            assert options.token is not None
            self._url = options.api_url + "chat.postMessage"
            self._outcome = api_outcome
            token = options.token.get_secret_value()
            self._headers["Authorization"] = f"Bearer {token}"
            secrets.append(token)
        self._where = redact_url(self._url)
        # longest first, so a URL goes as a whole before its path does
        self._secrets = sorted({s for s in secrets if len(s) > 1}, key=len, reverse=True)

    def payload(self, message: Message) -> dict[str, Any]:
        payload = render(message)
        if self._options.channel is not None:
            payload["channel"] = self._options.channel
        if self._options.username is not None:
            payload["username"] = self._options.username
        if self._options.icon_emoji is not None:
            payload["icon_emoji"] = self._options.icon_emoji
        return payload

    async def deliver(self, delivery: Delivery) -> Outcome:
        message = delivery.message if delivery.message is not None else describe(delivery.event, delivery.minimum)
        body = json.dumps(self.payload(message), ensure_ascii=False).encode("utf-8")
        try:
            async with self._http.post(self._url, data=body, headers=self._headers, timeout=self._timeout, allow_redirects=False) as response:
                answer = await read_capped(response, MAX_RESPONSE)
                outcome = self._outcome(response.status, response.headers, answer)
        except TimeoutError:
            outcome = Retry(f"no answer from {self._where} within {self._options.timeout:g}s")
        except aiohttp.ClientError as exc:
            outcome = Retry(f"cannot reach {self._where}: {type(exc).__name__}: {exc}")
        return self._scrubbed(outcome)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "…")
        return text

    def _scrubbed(self, outcome: Outcome) -> Outcome:
        """No reason ever carries the webhook URL or the token, whatever a server or aiohttp said."""
        if isinstance(outcome, (Retry, Failed)):
            return replace(outcome, reason=self._scrub(outcome.reason))
        return replace(outcome, detail=self._scrub(outcome.detail))

    async def aclose(self) -> None:
        return None


@hookimpl
def figrelay_client_types(register: Callable[[ClientType], None]) -> None:
    register(
        ClientType(
            name="slack",
            options=SlackOptions,
            open=SlackTarget,
            description="post messages to a Slack channel as Block Kit, by incoming webhook or bot token (chat.postMessage)",
            secret_options=("webhook_url", "token"),
            renders_messages=True,
            default_min_interval=1.0,  # Slack allows about one message per second per channel
            default_coalesce=10.0,
            max_batch=MAX_DIGEST_LINES,
        )
    )
