"""The dashboard's HTTP side: the page at ``/``, its static files, and the event stream.

``GET /api/v1/stream`` is a server-sent event stream (``text/event-stream``) behind the same
bearer token as every API route; the page reads it with ``fetch`` (EventSource cannot send a
header). Events: ``snapshot`` first, then ``node``, ``power`` and ``jobs`` as they change, and a
comment line every ``keepalive`` seconds so proxies and the page see a live connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .feed import Feed

__all__ = ["STATIC", "install", "sse"]

STATIC = resources.files(__package__) / "static"
_CSP = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
}


def sse(kind: str, data: Any) -> bytes:
    """One server-sent event; JSON has no raw newline, so ``data`` is one line."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(feed: Feed, keepalive: float) -> AsyncIterator[bytes]:
    client, snapshot = await feed.subscribe()
    try:
        yield sse("snapshot", snapshot)
        while not client.dropped:
            try:
                kind, data = await asyncio.wait_for(client.queue.get(), keepalive)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if client.dropped:
                break  # fell behind: end the stream, the page reconnects for a fresh snapshot
            yield sse(kind, data)
    finally:
        feed.unsubscribe(client)


def install(app: FastAPI, feed: Feed, auth: Any, keepalive: float = 15.0) -> None:
    static_dir = str(STATIC)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # Defence in depth behind text-only DOM updates: no inline script, nothing from elsewhere.
        return FileResponse(f"{static_dir}/index.html", media_type="text/html", headers=_CSP)

    @app.get(
        "/api/v1/stream",
        dependencies=[auth],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
    )
    async def events() -> StreamingResponse:
        """Live dashboard events (server-sent events): snapshot, node, power, jobs (docs/dashboard.md)."""
        return StreamingResponse(
            stream(feed, keepalive),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    app.mount("/dashboard", StaticFiles(directory=static_dir), name="dashboard")
