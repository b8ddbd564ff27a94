"""ASGI middleware of the server: request body limits (413) and request metrics."""

from __future__ import annotations

import json
import time

from rvc_lora.serve.errors import RequestError
from rvc_lora.serve.metrics import ServeMetrics


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over a per-path limit (413), by header and while reading."""

    def __init__(self, app, limits: dict[str, int]) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send):
        limit = self.limits.get(scope.get("path", "")) if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _send_json(send, 413, None, f"request body of {int(value)} bytes exceeds the limit of "
                                                  f"{limit} bytes")
                return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, None, f"request body exceeds the limit of {limit} bytes")


async def _send_json(send, status: int, field: str | None, message: str) -> None:
    body = json.dumps(RequestError(status, field, message).payload()).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class Metered:
    """ASGI middleware: count requests by endpoint and status, and time them."""

    ENDPOINTS = {"/", "/healthz", "/metrics", "/v1/models", "/v1/adapters", "/v1/convert"}

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = f"{scope['method']} {path if path in self.ENDPOINTS else 'other'}"
        status = 500
        start = time.perf_counter()

        async def status_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
