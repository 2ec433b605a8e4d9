"""The bench's receiver: an aiohttp server that answers every POST with 200 at once and counts it.

    python bench/receiver.py          # prints "listening on http://127.0.0.1:PORT"

``POST /<source>/<anything>`` is counted under <source> (figrelay, alertmanager, apprise): its
requests, its items (the alerts of an Alertmanager notification, else 1), the first and last
receipt (time.monotonic(): CLOCK_MONOTONIC, the same clock as the bench's), and the distinct
X-Figrelay-Delivery ids (a repeated id is a duplicate). ``GET /_stats`` tells them;
``POST /_reset`` clears them, ``POST /_reset?record=1`` also starts recording each id's receipt
time, which ``GET /_times`` returns.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

_state: dict[str, Any] = {}


def _reset(record: bool = False) -> None:
    _state.update(sources={}, ids=set(), duplicates=0, missing_id=0, record=record, times={})


async def deliver(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.monotonic()
    source = request.match_info["source"]
    counts = _state["sources"].get(source)
    if counts is None:
        counts = _state["sources"][source] = {"requests": 0, "items": 0, "first": now, "last": now}
    counts["requests"] += 1
    counts["items"] += body.count(b'"fingerprint"') if source == "alertmanager" else 1
    counts["last"] = now
    delivery = request.headers.get("X-Figrelay-Delivery")
    if delivery is not None:
        ids: set[str] = _state["ids"]
        if delivery in ids:
            _state["duplicates"] += 1
        else:
            ids.add(delivery)
            if _state["record"]:
                _state["times"][delivery] = now
    elif source == "figrelay":
        _state["missing_id"] += 1
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({
        "sources": _state["sources"], "ids": len(_state["ids"]), "duplicates": _state["duplicates"], "missing_id": _state["missing_id"],
    })


async def times(request: web.Request) -> web.Response:
    return web.json_response(_state["times"])


async def reset(request: web.Request) -> web.Response:
    _reset(record=request.query.get("record") == "1")
    return web.json_response({})


async def main() -> None:
    _reset()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_times", times)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{source}/{tail:.*}", deliver)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
