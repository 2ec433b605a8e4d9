"""Title and text templates (Jinja2, sandboxed) that override the default message per client or
per hook. A template is checked when the configuration loads, by rendering it against sample
events, so a typo is a config error and not a failure at 3 a.m.

In a template: every field of the event by its Fig name (``{{ ClientName }}``,
``{{ UpdatedSettings|join(', ') }}``), ``event`` (the same as a mapping), ``route`` (the event
type), ``message`` (the default message: ``message.title``, ``message.text``, ``message.facts``),
``severity`` (good, info, warning, critical) and ``is_test``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .events import FigEvent
from .messages import Message, describe
from .samples import sample_events

log = logging.getLogger("figrelay.templates")

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


def _dumps(value: Any, **kwargs: Any) -> str:
    """``tojson``'s serialiser: an undefined name fails as it does elsewhere ("'Statsu' is
    undefined") rather than as "Object of type StrictUndefined is not JSON serializable"."""

    def strict(item: Any) -> Any:
        if isinstance(item, jinja2.Undefined):
            item._fail_with_undefined_error()
        raise TypeError(f"a {type(item).__name__} cannot be written as JSON; give tojson texts, numbers, lists or mappings (message.title, not message)")

    return json.dumps(value, default=strict, **kwargs)


_ENV.policies["json.dumps_function"] = _dumps


class TemplateError(ValueError):
    """A template that does not compile or does not render against a sample event."""


@functools.lru_cache(maxsize=512)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per distinct source; raise TemplateError with the line and problem."""
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on its line {exc.lineno}: {exc.message}") from None


def context(event: FigEvent, message: Message, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a template sees. ``extra`` adds names for one kind of template (the http type's
    ``body`` adds ``delivery``); the names above stay the same everywhere."""
    wire = event.to_wire()
    names = {**wire, "event": wire, "route": event.route, "message": message, "severity": message.severity.value, "is_test": event.test}
    return {**names, **extra} if extra else names


def render_template(source: str, event: FigEvent, message: Message, extra: Mapping[str, Any] | None = None) -> str:
    """Render one template for one event (``extra``: see ``context``). Raises TemplateError."""
    template = compile_template(source)
    try:
        return template.render(context(event, message, extra)).strip()
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None
    except Exception as exc:  # a filter applied to the wrong type, a division by zero ...
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None


def check_template(source: str, routes: Iterable[str] | None = None) -> None:
    """Compile and render against sample events of ``routes`` (all seven by default)."""
    compile_template(source)
    events = [e for r in routes for e in sample_events(r)] if routes is not None else sample_events()
    for event in events:
        try:
            render_template(source, event, describe(event))
        except TemplateError as exc:
            raise TemplateError(f"fails on a sample {event.route} event: {exc}") from None


@dataclass(frozen=True, slots=True)
class MessageTemplates:
    """Template sources for a message's title and text; None keeps the default."""

    title: str | None = None
    text: str | None = None

    def over(self, base: MessageTemplates | None) -> MessageTemplates:
        """These templates, falling back field by field to ``base``."""
        if base is None:
            return self
        return MessageTemplates(self.title if self.title is not None else base.title, self.text if self.text is not None else base.text)

    def apply(self, event: FigEvent, message: Message) -> Message:
        """The message with the templates applied. A template that fails on a real event is
        logged and the default kept: a message always goes out."""
        from dataclasses import replace

        changes: dict[str, str] = {}
        for name in ("title", "text"):
            source = getattr(self, name)
            if source is None:
                continue
            try:
                changes[name] = render_template(source, event, message)
            except TemplateError as exc:
                log.warning("%s template failed on a %s event, using the default %s: %s", name, event.route, name, exc)
        return replace(message, **changes) if changes else message
