"""``figrelay schema``: a JSON Schema (draft 2020-12) of the configuration file, the installed
plugins' client options included, for editors that complete and check YAML as it is typed (VS
Code's YAML extension and any other editor with the YAML language server).

The schema is derived, not written: the shape and defaults come from the pydantic models that
``figrelay/config.py`` validates with and from each client type's ``options`` model; the
descriptions from the same docstrings that document them (an attribute's docstring, or
``Field(description=...)``), plus ``KEY_DESCRIPTIONS`` below for the keys whose prose lives only in
README.md and config.example.yaml (tests/test_schema.py keeps the two in step). A client's keys are
chosen by its ``type`` (one ``if``/``then`` per client type), so an editor offers the right keys
once ``type:`` is written and flags an unknown one.

The schema keeps to what editors implement (the YAML language server validates draft-07 keywords
only: ``if``/``then``, ``additionalProperties``; no ``unevaluatedProperties``), and is looser than
``figrelay check`` where a value is checked against another (a hook's ``client`` naming a defined
client, templates only on message clients, a plugin's checks across options), where Python must
run (a regex compiles, a template renders, a file exists), and where a bound applies to a
duration written as text (``timeout: 11m``; ``timeout: 660`` is caught). Where ``${...}`` is
written, any value is taken: figrelay substitutes it before it checks the value. It is stricter
only for spellings that pydantic coerces and nobody should write: a quoted number (``"16"``), a
duration in exponent notation (``1e3``) or as a negative zero, ``yes``/``no`` for a boolean (the
language server reads YAML 1.2, where they are texts).
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import re
import textwrap
import warnings
from collections.abc import Callable, Iterator
from typing import Any, get_args

from pydantic import BaseModel, BeforeValidator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, PydanticJsonSchemaWarning
from pydantic_core import core_schema

from . import __version__
from .config import (
    _BCRYPT_HASH,
    CORE_CLIENT_KEYS,
    MIN_JOURNAL_BYTES,
    DeliverySettings,
    IntakeSettings,
    JournalSettings,
    StorageSettings,
    _ClientCoreModel,
    _HookModel,
    _TopModel,
)
from .durations import _EXAMPLES as DURATION_FORMS
from .durations import UNITS as DURATION_UNITS
from .durations import _request_timeout, parse_duration
from .events import ROUTES
from .hookregex import MAX_TIME_LIMIT, _time_limit
from .plugins import PluginRegistry
from .sizes import FORMS as SIZE_FORMS
from .sizes import UNITS as SIZE_UNITS
from .sizes import format_size, parse_size
from .storage.postgresql import SCHEMES as STORAGE_SCHEMES

DIALECT = "https://json-schema.org/draft/2020-12/schema"

# --- patterns: what the parsers accept, as ECMA-262 regexes (which editors run) --------------------------
# Each is checked against its parser by tests/test_schema.py, on generated strings.

_REFERENCE = r"\$\{"
"""A value holding ``${``: figrelay substitutes it before checking it, so it may be anything."""


def _spaced(pattern: str) -> str:
    """``pattern`` with spaces allowed after each digit, dot and unit letter: parse_duration drops
    every space before it reads the text (``1h 30m``)."""
    return pattern.replace(r"[0-9]", r"(?:[0-9] *)").replace(r"\.", r"\. *")


def _any_case(word: str) -> str:
    """``kb`` as ``[kK][bB]``: sizes' units are read whatever their case; ECMA-262 has no (?i)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_UNIT = "(?:" + "|".join(r" *".join(u) for u in sorted(DURATION_UNITS, key=len, reverse=True)) + ") *"
DURATION_PATTERN = (
    "^ *\\+? *(?:"
    + _spaced(r"(?:[0-9]+(?:\.[0-9]+)?" + _UNIT + ")+")  # 250ms, 1h30m, 1.5h
    + "|"
    + _spaced(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")  # seconds: 10, 0.5, 10., .5
    + ")$"
)
SIZE_PATTERN = (
    r"^\s*[0-9]+(?:\.[0-9]+)?\s*(?:" + "|".join(_any_case(u) for u in sorted(SIZE_UNITS, key=len, reverse=True)) + r")?\s*$"
)
LISTEN_PATTERN = r"^\s*(?:unix:.*\S|.*:0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))\s*$"
STORAGE_PATTERN = r"^\s*(?:" + "|".join(_any_case(s) for s in STORAGE_SCHEMES) + ")://"
BCRYPT_PATTERN = r"^\s*" + _BCRYPT_HASH.pattern + r"\s*$"


# The text first: the YAML language server reports the first alternative's complaint, and "write
# e.g. 250ms, 30s ..." helps more than "expected a number".
def _duration_schema() -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "string", "pattern": DURATION_PATTERN, "patternErrorMessage": DURATION_FORMS, "title": "a duration (250ms, 30s, 5m, 1h30m, 2d)"},
            {"type": "number", "minimum": 0, "title": "a number of seconds"},
        ]
    }


def _size_schema() -> dict[str, Any]:
    return {
        "anyOf": [
            {"type": "string", "pattern": SIZE_PATTERN, "patternErrorMessage": SIZE_FORMS, "title": "a size (256MB, 1GB, 512MiB)"},
            {"type": "integer", "minimum": 0, "title": "a number of bytes"},
        ]
    }


# --- what pydantic cannot see: a validator's bounds, and the prose kept outside the code --------------

Refinement = Callable[[dict[str, Any]], None]


def _on(kind: str, **keywords: Any) -> Refinement:
    """Add ``keywords`` to each branch of a property's schema that holds a ``kind`` value."""

    def refine(prop: dict[str, Any]) -> None:
        for branch in _branches(prop, kind):
            _bound(branch, keywords)

    return refine


def _bound(branch: dict[str, Any], keywords: dict[str, Any]) -> None:
    if "exclusiveMinimum" in keywords:
        branch.pop("minimum", None)  # a duration's own minimum of 0, now said more strictly
    branch.update(keywords)


def _both(*refinements: Refinement) -> Refinement:
    def refine(prop: dict[str, Any]) -> None:
        for one in refinements:
            one(prop)

    return refine


_IN_FLIGHT = _on("integer", minimum=1, maximum=1000)

REFINEMENTS: dict[tuple[type[BaseModel], str], Refinement] = {
    (_TopModel, "listen"): _both(
        _on("string", pattern=LISTEN_PATTERN, patternErrorMessage="host:port (e.g. 127.0.0.1:8970) or unix:/path/to.sock"),
        _on("array", minItems=1),
    ),
    (_TopModel, "storage"): _on("string", pattern=STORAGE_PATTERN, patternErrorMessage="postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    (IntakeSettings, "hashed_secret"): _on(
        "string", pattern=BCRYPT_PATTERN, patternErrorMessage="the 60-character '$2a$11$...' BCrypt hash Fig's web app shows"
    ),
    (IntakeSettings, "max_body_bytes"): _on("integer", minimum=1024),
    (IntakeSettings, "max_connections"): _on("integer", minimum=1, maximum=1_000_000),
    (IntakeSettings, "header_timeout"): _on("number", exclusiveMinimum=0, maximum=600),
    (IntakeSettings, "body_timeout"): _on("number", exclusiveMinimum=0, maximum=600),
    (DeliverySettings, "max_in_flight"): _IN_FLIGHT,
    (DeliverySettings, "circuit_open_after"): _on("integer", minimum=1, maximum=100),
    (StorageSettings, "url"): _on("string", pattern=STORAGE_PATTERN, patternErrorMessage="postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    (StorageSettings, "lease"): _on("number", minimum=1, maximum=600),
    (JournalSettings, "retention"): _on("number", exclusiveMinimum=0),
    (JournalSettings, "max_bytes"): _on("integer", minimum=MIN_JOURNAL_BYTES),
    (_ClientCoreModel, "name"): _on("string", pattern=r"\S", patternErrorMessage="must not be blank"),
    (_ClientCoreModel, "max_in_flight"): _IN_FLIGHT,
    (_ClientCoreModel, "min_interval"): _on("number", maximum=3600),
    (_ClientCoreModel, "coalesce"): _on("number", maximum=3600),
    (_HookModel, "event"): _on("string", enum=list(ROUTES)),
    (_HookModel, "min_sessions"): _on("integer", minimum=1),
    (_HookModel, "setting_regex"): _on("string", minLength=1),
}
"""Bounds and shapes that config.py's validators check in code; tests/test_schema.py probes each
against ``figrelay check`` at its edges."""

_AFTER_BOUNDS: dict[Callable[..., Any], dict[str, Any]] = {
    _request_timeout: {"exclusiveMinimum": 0, "maximum": 600},
    _time_limit: {"exclusiveMinimum": 0, "maximum": MAX_TIME_LIMIT},
}
"""The bounds of the duration types that carry them (figrelay.durations.Timeout, intake.regex_timeout)."""

_TEMPLATES = (
    "Jinja2 templates (sandboxed) that replace the default title or text. The event's fields are available by their Fig names "
    "({{ ClientName }}, {{ UpdatedSettings|join(', ') }}), along with message (the default message), route and severity. "
    "A hook can set its own title and text, which win over its client's. Each template is rendered against sample events when "
    "the configuration loads, so a mistake is a config error."
)

KEY_DESCRIPTIONS: dict[tuple[type[BaseModel], str], str] = {
    (_TopModel, "listen"): "Where Fig posts events: host:port, unix:/path/to.sock, or a list of them. "
    "A non-loopback address requires intake.secret or intake.hashed_secret.",
    (_TopModel, "intake"): "How figrelay takes Fig's posts: the secret Fig authenticates with, its Test-button events, and limits.",
    (_TopModel, "state_dir"): "The durable outbox (SQLite) and run-session state live here. "
    "Relative to the configuration file's folder; under systemd: ${STATE_DIRECTORY:-/var/lib/figrelay}.",
    (_TopModel, "storage"): "Several replicas sharing one PostgreSQL database: a postgresql:// URL, or a mapping with url and lease. "
    "Absent, figrelay keeps everything in SQLite under state_dir.",
    (_TopModel, "log_level"): "debug | info | warning | error (figrelay run --log-level overrides it)",
    (_TopModel, "delivery"): "Retries, backoff and limits of every client's deliveries; every key is optional.",
    (_TopModel, "journal"): "The event journal: every accepted event and every delivery attempt, for figrelay events, trace and replay.",
    (_TopModel, "clients"): "The delivery targets: each has a unique name and a type provided by a plugin (figrelay plugins lists them).",
    (_TopModel, "hooks"): "Which event goes to which client: one hook per (event, client), filtered as in Fig.",
    (IntakeSettings, "hashed_secret"): "The Fig web hook client's secret, hashed: paste the hashed secret Fig's web app showed you "
    "(BCrypt, \"$2a$11$...\"). Without a secret, figrelay only accepts listening on loopback addresses and unix sockets.",
    (IntakeSettings, "secret"): "The Fig web hook client's plain secret (keep it out of the file: ${FIG_WEBHOOK_SECRET}). "
    "Set either this or hashed_secret.",
    (IntakeSettings, "forward_test_events"): "true: relay Fig's Test-button payloads (IsTest) like real events; "
    "false: answer them at once and relay nothing.",
    (IntakeSettings, "max_body_bytes"): "The largest request body taken, in bytes (at least 1024): larger bodies are refused with 413.",
    (DeliverySettings, "backoff_base"): "After n failures in a row a client waits up to backoff_base * 2^n (full jitter), "
    "but never more than backoff_max.",
    (DeliverySettings, "shutdown_timeout"): "On SIGTERM, how long deliveries in flight may take to finish.",
    (_HookModel, "event"): "ClientStatusChanged, SettingValueChanged, NewClientRegistration, UpdatedClientRegistration, "
    "MinRunSessions, HealthStatusChanged or SecurityEvent",
    (_HookModel, "client"): "the name of a client under clients:",
    (_HookModel, "client_regex"): "searched anywhere in the setting client's name, case-sensitive (^Orders for a prefix). "
    "SecurityEvent ignores it.",
    (_HookModel, "setting_regex"): "SettingValueChanged only: the relayed event lists only the changed settings that match, "
    "and nothing is sent when none match",
    (_HookModel, "min_sessions"): "MinRunSessions only. figrelay counts the run sessions of each matching setting client from "
    "ClientStatusChanged events. It sends MinimumRestored when the count reaches the minimum and BelowMinimum when the count "
    "drops below it. Without this key, a MinRunSessions hook relays the MinRunSessions events that Fig itself sends.",
    (_HookModel, "title"): _TEMPLATES,
    (_HookModel, "text"): _TEMPLATES,
    (_ClientCoreModel, "name"): "The client's unique name, which hooks use in client:.",
    (_ClientCoreModel, "type"): "The kind of target, provided by a plugin: figrelay plugins lists the installed ones.",
    (_ClientCoreModel, "max_in_flight"): "Deliveries to this client at once (default: delivery.max_in_flight; 1 keeps a receiver's order).",
    (_ClientCoreModel, "min_interval"): "the shortest time between two messages to the client (Slack and Teams 1s)",
    (_ClientCoreModel, "coalesce"): "a window (Slack and Teams 10s, email 30s; 0 turns it off). The first event of a hook and setting "
    "client goes at once; those that follow within the window go together as one digest, which lists every event: a burst larger "
    "than one Slack or Teams message can show (25) goes as several digests.",
    (_ClientCoreModel, "title"): _TEMPLATES,
    (_ClientCoreModel, "text"): _TEMPLATES,
}
"""The descriptions of the keys config.py does not document with a docstring, as README.md and
config.example.yaml word them (tests/test_schema.py compares them)."""


# --- docstrings ------------------------------------------------------------------------------------


@functools.cache
def attribute_docstrings(cls: type) -> dict[str, str]:
    """The docstrings written under a class's attributes (and its bases'), by attribute name: what
    pydantic's ``use_attribute_docstrings`` reads, for models that do not set it."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, BaseModel):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # defined in a REPL, or no source shipped
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, following in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                found[stmt.target.id] = _prose(following.value.value)
    return found


def _prose(docstring: str) -> str:
    """A docstring as plain text, each paragraph on one line, reST's ``code`` as `code`."""
    text = inspect.cleandoc(docstring).replace("``", "`")
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


# --- the generator ---------------------------------------------------------------------------------


def _validators(annotation: Any) -> Iterator[Callable[..., Any]]:
    """The before-validator functions in a type, through Annotated and unions."""
    for item in getattr(annotation, "__metadata__", ()):
        if isinstance(item, BeforeValidator):
            yield item.func
    for arg in get_args(annotation):
        yield from _validators(arg)


def _duration_text(seconds: float) -> str | float:
    """A default as people write it: 24h, 30s, 5ms (days from 2d on: 1d is said 24h)."""
    if 0 < seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= (2 * size if unit == "d" else size) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return seconds


class ConfigSchemaGenerator(GenerateJsonSchema):
    """pydantic's JSON Schema generator, taught figrelay's value types (durations and sizes as
    people write them), the bounds of config.py's validators, and attribute docstrings."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function = schema["function"]["function"]
        if function is parse_duration:
            return _duration_schema()
        if function is parse_size:
            return _size_schema()
        return super().function_before_schema(schema)

    def function_after_schema(self, schema: core_schema.AfterValidatorFunctionSchema) -> JsonSchemaValue:
        json_schema = super().function_after_schema(schema)
        bounds = _AFTER_BOUNDS.get(schema["function"]["function"])
        if bounds:
            for branch in _branches(json_schema, "number"):
                _bound(branch, bounds)
        return json_schema

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False  # "Base Uri" over base_uri tells an editor's reader nothing

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        json_schema = super().model_schema(schema)
        cls = schema["cls"]
        docs = attribute_docstrings(cls)
        properties = json_schema.get("properties", {})
        for name, field in cls.model_fields.items():
            key = field.alias if self.by_alias and field.alias else name
            prop = properties.get(key)
            if prop is None:
                continue
            described = docs.get(name) or KEY_DESCRIPTIONS.get((cls, name))
            if "description" not in prop and described:
                prop["description"] = described
            refine = REFINEMENTS.get((cls, name))
            if refine is not None:
                refine(prop)
            kinds = set(_validators(field.annotation)) | {m.func for m in field.metadata if isinstance(m, BeforeValidator)}
            default = prop.get("default")
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if parse_duration in kinds:
                    prop["default"] = _duration_text(default)
                elif parse_size in kinds:
                    prop["default"] = format_size(int(default))
            if default is None or (isinstance(default, dict) and default):
                # "null" is no value to offer, and a section's keys each show their own default
                prop.pop("default", None)
        return json_schema


def _branches(node: Any, kind: str) -> Iterator[dict[str, Any]]:
    """The parts of a property's schema that hold a value of JSON type ``kind``: the schema itself,
    the members of an anyOf, an array's items."""
    if not isinstance(node, dict):
        return
    if node.get("type") == kind:
        yield node
    for member in node.get("anyOf", ()):
        yield from _branches(member, kind)
    if kind != "array" and node.get("type") == "array":
        yield from _branches(node.get("items"), kind)


def _model_schema(model: type[BaseModel], defs_prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """A model's JSON schema and its definitions, named ``defs_prefix + Model``."""
    with warnings.catch_warnings():
        # a default that JSON cannot show is left out, which is all an editor needs
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
        json_schema = model.model_json_schema(
            by_alias=True, ref_template="#/$defs/" + defs_prefix + "{model}", schema_generator=ConfigSchemaGenerator, mode="validation"
        )
    defs = {defs_prefix + name: value for name, value in json_schema.pop("$defs", {}).items()}
    return json_schema, defs


# --- ${...}: taken anywhere --------------------------------------------------------------------------

_SCALAR_TYPES = ("integer", "number", "boolean")


def _takes_references(node: Any) -> bool:
    """Whether a schema accepts a text holding ``${`` as it is."""
    if not isinstance(node, dict):
        return node is True
    if node.get("$ref") == "#/$defs/reference":
        return True
    if node.get("type") != "string" or "enum" in node or "const" in node:
        return False
    return "pattern" not in node or _REFERENCE in node["pattern"]


def allow_references(node: Any) -> Any:
    """The schema with a ``${...}`` text accepted wherever a number, a boolean, a choice or a
    patterned text goes: figrelay substitutes it before it validates the value, so the schema cannot
    know what it will be. Conditions (``if``, ``not``) are left as they are, so a client whose
    type is a reference is not taken for every type at once."""
    if not isinstance(node, dict):
        return node
    node = dict(node)
    for key in ("properties", "$defs", "patternProperties"):
        if isinstance(node.get(key), dict):
            node[key] = {name: allow_references(value) for name, value in node[key].items()}
    for key in ("items", "additionalProperties", "then", "else", "contains"):
        if isinstance(node.get(key), dict):
            node[key] = allow_references(node[key])
    for key in ("allOf", "oneOf", "prefixItems"):
        if isinstance(node.get(key), list):
            node[key] = [allow_references(member) for member in node[key]]
    if isinstance(node.get("anyOf"), list):
        members: list[Any] = []
        for member in (allow_references(m) for m in node["anyOf"]):
            # an anyOf of nothing but alternatives is spliced into this one
            members.extend(member["anyOf"] if isinstance(member, dict) and set(member) == {"anyOf"} else [member])
        if any(_takes_references(m) for m in members if m != {"$ref": "#/$defs/reference"}):
            members = [m for m in members if m != {"$ref": "#/$defs/reference"}]
        unique: list[Any] = []
        for member in members:
            if member not in unique:
                unique.append(member)
        node["anyOf"] = unique
        return node
    if node.get("type") == "string" and "pattern" in node and _REFERENCE not in node["pattern"]:
        node["pattern"] = f"(?:{node['pattern']})|{_REFERENCE}"
        return node
    if node.get("type") in _SCALAR_TYPES or "enum" in node or "const" in node:
        annotations = {k: node.pop(k) for k in ("description", "default", "title", "examples") if k in node}
        return {"anyOf": [node, {"$ref": "#/$defs/reference"}], **annotations}
    return node


# --- hover text -----------------------------------------------------------------------------------------

_KINDS = {"string": "a text", "integer": "a whole number", "number": "a number", "boolean": "true or false", "array": "a list",
          "object": "a mapping", "null": "nothing"}


def title_alternatives(node: Any, key: str = "") -> Any:
    """Each alternative of a key's anyOf titled "key: what it holds", in place. The YAML language
    server's hover shows a key's description only when the alternatives differ in title or
    description; alike (untitled), it shows their empty descriptions instead."""
    if isinstance(node, list):
        for item in node:
            title_alternatives(item, key)
    elif isinstance(node, dict):
        branches = [b for b in node.get("anyOf", ()) if isinstance(b, dict) and "$ref" not in b]
        if key and len(branches) >= 2:
            for branch in branches:
                kind = branch.get("title") or ("a choice" if "enum" in branch or "const" in branch else _KINDS.get(branch.get("type", ""), "a value"))
                branch["title"] = f"{key}: {kind}"
        for name, value in node.items():
            if name == "properties" and isinstance(value, dict):
                for prop, schema in value.items():
                    title_alternatives(schema, prop)
            elif name != "if":
                title_alternatives(value, key if name in ("anyOf", "items") else "")
    return node


# --- the whole document ------------------------------------------------------------------------------


def _def_name(type_name: str, taken: set[str]) -> str:
    name = "client." + re.sub(r"[^A-Za-z0-9_.-]", "_", type_name)
    while name in taken:
        name += "_"
    return name


def build_schema(registry: PluginRegistry) -> tuple[dict[str, Any], list[str]]:
    """The configuration's JSON Schema with the client types in ``registry``, and warnings (a
    plugin whose options could not be described)."""
    problems: list[str] = []
    top, defs = _model_schema(_TopModel)
    for key, model in (("intake", IntakeSettings), ("delivery", DeliverySettings), ("journal", JournalSettings), ("storage", StorageSettings)):
        defs[model.__name__]["title"] = key
    hook, hook_defs = _model_schema(_HookModel)
    core, core_defs = _model_schema(_ClientCoreModel)
    defs |= hook_defs | core_defs

    others = [r for r in ROUTES if r != "SettingValueChanged"]
    not_minimum = [r for r in ROUTES if r != "MinRunSessions"]
    hook.update(
        title="hook",
        description="Sends one event type to one client. If two hooks match the same event, figrelay sends it twice, as Fig does.",
        allOf=[
            {"if": {"properties": {"event": {"enum": others}}, "required": ["event"]}, "then": {"properties": {"setting_regex": False}}},
            {"if": {"properties": {"event": {"enum": not_minimum}}, "required": ["event"]}, "then": {"properties": {"min_sessions": False}}},
        ],
    )
    defs["hook"] = hook

    core_props: dict[str, Any] = core["properties"]
    types = registry.type_names()
    client_type_prop = dict(core_props["type"])
    if types:
        client_type_prop["enum"] = types
        client_type_prop["enumDescriptions"] = [registry.client_types[t].description for t in types]
    choices: list[dict[str, Any]] = []
    taken: set[str] = set(defs)
    origin = {t: p for p in registry.plugins for t in p.client_types}
    for type_name in types:
        client_type = registry.client_types[type_name]
        def_name = _def_name(type_name, taken)
        taken.add(def_name)
        try:
            options, option_defs = _model_schema(client_type.options, def_name + ".")
        except Exception as exc:  # a plugin's model pydantic cannot describe (an arbitrary type, a custom validator)
            plugin = origin.get(type_name)
            problems.append(
                f"client type {type_name!r} (plugin {plugin.name if plugin else '?'}): its options cannot be described as JSON Schema "
                f"({type(exc).__name__}: {exc}); the schema takes any key for it. The plugin's author can give the field "
                "a JSON schema with pydantic's WithJsonSchema or field_validator(..., json_schema_input_type=...)"
            )
            options, option_defs = {"type": "object", "properties": {}, "additionalProperties": True}, {}
        defs |= option_defs
        props = {**options.get("properties", {})}
        for key in CORE_CLIENT_KEYS:
            if key in ("title", "text") and not client_type.renders_messages:
                continue  # figrelay refuses templates for a type that sends events as they are
            props[key] = dict(core_props[key])
        props["type"] = {"const": type_name, "description": client_type.description or core_props["type"]["description"]}
        if client_type.default_min_interval:
            props["min_interval"]["default"] = _duration_text(client_type.default_min_interval)
        if client_type.default_coalesce:
            props["coalesce"]["default"] = _duration_text(client_type.default_coalesce)
        definition = {k: v for k, v in options.items() if k not in ("title", "properties", "required")}
        plugin = origin.get(type_name)
        made_by = f"{plugin.distribution} {plugin.version}" if plugin and plugin.distribution else (plugin.name if plugin else "?")
        definition.update(
            title=f"{type_name} client",
            description=(client_type.description + f" (from {made_by})").strip(),
            type="object",
            properties=props,
            required=["name", "type", *[r for r in options.get("required", ()) if r not in ("name", "type")]],
        )
        definition.setdefault("additionalProperties", False)
        defs[def_name] = definition
        choices.append({"if": {"properties": {"type": {"const": type_name}}, "required": ["type"]}, "then": {"$ref": f"#/$defs/{def_name}"}})

    defs["client"] = {
        "title": "client",
        "description": "A delivery target: a name, a type, the keys every client takes, and the options of its type.",
        "type": "object",
        # templates only where the type takes them (in its own definition), so they are not offered for a log client
        "properties": {**{k: v for k, v in core_props.items() if k not in ("title", "text")}, "type": client_type_prop},
        "required": ["name", "type"],
        "allOf": choices,
    }
    defs["reference"] = {
        "type": "string",
        "pattern": _REFERENCE,
        "description": "${VAR}, ${VAR:-default} or ${file:PATH}: figrelay substitutes it before it checks the value.",
    }

    top["properties"]["clients"]["items"] = {"$ref": "#/$defs/client"}
    top["properties"]["hooks"]["items"] = {"$ref": "#/$defs/hook"}
    top.pop("title", None)
    made_with = ", ".join(
        f"{p.name} ({p.distribution} {p.version})" if p.distribution else p.name for p in registry.plugins if p.client_types
    ) or "none"
    document = {
        "$schema": DIALECT,
        "title": f"figrelay {__version__} configuration (client types: {', '.join(types) or 'none'})",
        "description": f"Written by `figrelay schema` of figrelay {__version__}, with the plugins {made_with}. "
        "Write it again after installing, removing or upgrading a plugin. `figrelay check` checks more than this schema can.",
        **top,
        "$defs": defs,
    }
    return title_alternatives(allow_references(document)), problems
