"""The HTTP side of the intake: Fig's seven routes, authentication, limits, and health.

Every refusal is a 4xx with a JSON body ``{"error": ..., "message": ...}`` that says what is
wrong and how to fix it. Nothing a client sends produces a 500; a 503 means figrelay could not
store the event (the sender should retry, as Fig will not).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .events import ROUTES, EventError, parse_event_body
from .intake import Intake
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .outbox import Outbox, OutboxError
from .reload import ConfigHolder

log = logging.getLogger("figrelay.server")

INTAKE = web.AppKey("intake", Intake)
HOLDER = web.AppKey("holder", ConfigHolder)
READY = web.AppKey("ready", Callable[[], bool])
METRICS = web.AppKey("metrics", Metrics)
OUTBOX = web.AppKey("outbox", Outbox)

_JSON_TYPES = ("application/json", "text/json")
_ROUTE_LIST = [f"POST /{r}" for r in ROUTES]
_LOWER_ROUTES = {r.lower(): r for r in ROUTES}


def error_response(status: int, error: str, message: str, **extra: Any) -> web.Response:
    body = {"error": error, "message": message, **extra}
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _route_of(path: str) -> str | None:
    """The Fig route a path names: its last segment, so a base URI with a path prefix works."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in ROUTES else None


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        last = request.path.rstrip("/").rsplit("/", 1)[-1]
        hint = ""
        if last.lower() in _LOWER_ROUTES:
            hint = f"; routes are case-sensitive: did you mean /{_LOWER_ROUTES[last.lower()]}?"
        return error_response(404, "not_found", f"no route {request.path}{hint}", routes=_ROUTE_LIST)
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        response = error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}")
        response.headers["Allow"] = ", ".join(allowed)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


async def receive_event(request: web.Request) -> web.Response:
    route = _route_of(request.path)
    if route is None:
        raise web.HTTPNotFound()
    holder = request.app[HOLDER]
    live = holder.current
    count = request.app[METRICS].events.labels
    if not await live.checker.check(request.headers.get("Authorization")):
        count(route, "unauthorized").inc()
        response = error_response(401, "unauthorized", "missing or wrong 'Authorization: Secret <secret>' header; use the secret of the Fig web hook client")
        response.headers["WWW-Authenticate"] = "Secret"
        return response

    content_type = request.headers.get("Content-Type")
    if content_type is not None:
        mime = content_type.split(";", 1)[0].strip().lower()
        if mime not in _JSON_TYPES and not mime.endswith("+json"):
            count(route, "unsupported_media_type").inc()
            return error_response(415, "unsupported_media_type", f"the body must be JSON (Content-Type: application/json), got {mime or 'an empty type'}")

    limit = live.config.intake.max_body_bytes
    body = await _read_limited(request, limit)
    if body is None:
        count(route, "too_large").inc()
        return error_response(413, "payload_too_large", f"the body is larger than {limit} bytes (intake.max_body_bytes)")

    try:
        event = parse_event_body(route, body)
    except EventError as exc:
        count(route, "invalid").inc()
        return error_response(400, "invalid_event", f"{route}: {exc}", event=route, field=exc.field, problem=exc.message)

    try:
        accepted = await request.app[INTAKE].accept(event)
    except OutboxError as exc:
        count(route, "storage_error").inc()
        log.error("cannot store a %s event: %s", route, exc)
        response = error_response(503, "storage_unavailable", "figrelay could not store the event; try again later")
        response.headers["Retry-After"] = "5"
        return response

    count(route, "test" if accepted.test_only else "accepted").inc()
    if accepted.test_only:
        return web.json_response({"status": "test", "event": route, "relayed": False})
    return web.json_response(
        {
            "status": "accepted",
            "event": route,
            "deliveries": [{"id": d.id, "client": d.client, "hook": d.hook} for d in accepted.deliveries],
        }
    )


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers. For liveness probes."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: listening, the outbox takes a durable write, a configuration is loaded."""
    checks: dict[str, Any] = {"listening": request.app[READY]()}
    try:
        await request.app[OUTBOX].check_writable()
        checks["outbox_writable"] = True
    except Exception as exc:
        checks["outbox_writable"] = False
        checks["outbox_error"] = str(exc)
    holder = request.app[HOLDER]
    checks["config_loaded"] = holder.loaded
    checks["last_reload_successful"] = holder.last_reload_ok
    ready = checks["listening"] and checks["outbox_writable"] and checks["config_loaded"]
    return web.json_response({"status": "ready" if ready else "not_ready", **checks}, status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    app = request.app
    metrics = app[METRICS]
    try:
        stats = await app[OUTBOX].stats()
    except Exception as exc:  # the rest of the metrics still help most when the outbox fails
        log.error("metrics: cannot read the outbox: %s", exc)
        stats = {}
    metrics.set_outbox(stats, list(app[HOLDER].current.config.clients))
    metrics.sessions.set(app[INTAKE].sessions.total())
    response = web.Response(body=metrics.render())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def _is_local(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not isinstance(peer, tuple):  # a unix socket
        return True
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


async def reload_config(request: web.Request) -> web.Response:
    """``POST /-/reload``: from this machine, or with the intake secret."""
    holder = request.app[HOLDER]
    if not _is_local(request) and not (holder.current.checker.required and await holder.current.checker.check(request.headers.get("Authorization"))):
        return error_response(403, "forbidden", "reload is allowed from this machine (loopback or unix socket) or with the intake secret")
    result = await holder.reload("POST /-/reload")
    if result.applied:
        return web.json_response({"applied": True, "summary": result.summary, "removed_clients": list(result.removed_clients)})
    return error_response(
        422, "config_rejected", "the new configuration is invalid; the previous one keeps running",
        applied=False, problems=[str(p) for p in result.problems],
    )


async def other_method(request: web.Request) -> web.Response:
    if _route_of(request.path) is None:
        raise web.HTTPNotFound()
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def create_app(intake: Intake, holder: ConfigHolder, ready: Callable[[], bool], outbox: Outbox, metrics: Metrics) -> web.Application:
    # aiohttp's own cap stays high: the configurable, reloadable limit is checked per request.
    app = web.Application(middlewares=[json_errors], client_max_size=1024**3)
    app[INTAKE] = intake
    app[HOLDER] = holder
    app[READY] = ready
    app[OUTBOX] = outbox
    app[METRICS] = metrics
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_post("/-/reload", reload_config)
    app.router.add_post("/{path:.*}", receive_event)
    app.router.add_route("*", "/{path:.*}", other_method)
    return app
