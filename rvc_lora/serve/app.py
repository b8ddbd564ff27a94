"""The HTTP / WebSocket application (FastAPI): conversion with per-request adapters, the adapter registry,
streaming, health, metrics and the web page.

Every error is a JSON body ``{"error": {"status", "field", "message"}}``; a bad request never stops the
server. Conversions run on the :class:`rvc_lora.serve.engine.Engine` (bounded queue: 429 when full,
503 on timeout or shutdown).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from rvc_lora.infer.converter import OUTPUT_FORMATS
from rvc_lora.infer.streaming import StreamingConverter, StreamSettings
from rvc_lora.serve.engine import Engine, Overloaded, ShuttingDown, TimedOut, Worker
from rvc_lora.serve.metrics import ServeMetrics
from rvc_lora.serve.options import (
    ConvertRequest,
    ModelInfo,
    RequestError,
    parse_convert_request,
    parse_options_json,
)
from rvc_lora.serve.registry import AdapterEntry, AdapterRegistry, BadAdapterName, looks_like_safetensors
from rvc_lora.utils import RVCLoraError

log = logging.getLogger("rvc_lora.serve")
STATIC = Path(__file__).resolve().parent / "static"
PAGE_POLICY = ("default-src 'self'; media-src 'self' blob:; connect-src 'self' blob:; img-src 'self' data:; "
               "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
STREAM_KEYS = frozenset({"block", "crossfade", "search", "context", "content_context", "pitch_context", "margin"})


@dataclass(frozen=True)
class ServeLimits:
    """Request limits and switches (see ``rvc-lora serve --help``)."""

    max_upload_bytes: int = 50 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_adapter_bytes: int = 64 * 1024 * 1024
    timeout: float = 300.0
    max_streams: int = 4
    stream_idle_seconds: float = 30.0
    max_stream_message_bytes: int = 4 * 1024 * 1024
    allow_upload: bool = False


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


def _error_response(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status in (429, 503):
        headers = {"Retry-After": "5"}
    return JSONResponse(exc.payload(), status_code=exc.status, headers=headers)


ENGINE_ERRORS = (Overloaded, TimedOut, ShuttingDown)


def _engine_error(exc: Overloaded | TimedOut | ShuttingDown) -> RequestError:
    """429 for a full queue, 503 for a timeout or a shutdown."""
    return RequestError(429 if isinstance(exc, Overloaded) else 503, None, str(exc))


def _without_path(message: str, path: str | os.PathLike, label: str) -> str:
    """An error message with a server-side temporary path replaced by the client's label."""
    return message.replace(str(path), label)


def _encode(audio: np.ndarray, sr: int, fmt: str) -> bytes:
    import soundfile as sf

    container, subtype = OUTPUT_FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), int(sr), subtype=subtype, format=container)
    return buffer.getvalue()


def create_app(engine: Engine, registry: AdapterRegistry, model: ModelInfo, limits: ServeLimits | None = None,
               token: str | None = None) -> FastAPI:
    """The application for ``engine`` (the loaded model), ``registry`` and ``model`` facts."""
    limits = limits or ServeLimits()
    metrics = ServeMetrics(lambda: engine.depth, lambda: tuple(
        sum(v) for v in zip(*(w.converter.adapter_cache_stats() for w in engine.workers), strict=True)))
    app = FastAPI(title="rvc-lora", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.registry, app.state.metrics = engine, registry, metrics
    app.add_middleware(BodyLimit, limits={"/v1/convert": limits.max_upload_bytes,
                                          "/v1/adapters": limits.max_adapter_bytes})
    app.add_middleware(Metered, metrics=metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    info_cache: dict[tuple[Path, tuple[int, int]], dict[str, Any]] = {}
    streams = {"open": 0}

    def authorized(header: str | None) -> bool:
        if token is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def require_token(request: Request) -> None:
        if not authorized(request.headers.get("authorization")):
            raise RequestError(401, "authorization", "missing or wrong bearer token (header 'Authorization: "
                                                     "Bearer TOKEN')")

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error_response(RequestError(400, field, first.get("msg", "invalid request")))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(RequestError(exc.status_code, None, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return _error_response(RequestError(500, None, f"internal error: {type(exc).__name__}"))

    # -- pages and facts -----------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "workers": len(engine.workers), "running": engine.running, "queued": engine.depth}

    @app.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        require_token(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        require_token(request)
        return {"model": model.name, "version": model.version, "sample_rate": model.sample_rate, "f0": model.f0,
                "speakers": model.n_speakers, "index": model.has_index, "f0_methods": list(model.f0_methods),
                "default_f0_method": model.default_f0_method, "formats": list(OUTPUT_FORMATS),
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_audio_seconds": limits.max_audio_seconds,
                           "max_adapter_bytes": limits.max_adapter_bytes, "timeout_seconds": limits.timeout,
                           "queue_size": engine.queue_size, "max_streams": limits.max_streams},
                "uploads": limits.allow_upload}

    def adapter_info(entry: AdapterEntry) -> dict[str, Any]:
        key = (entry.path, entry.stamp)
        if key not in info_cache:
            from rvc_lora.lora import read_adapter

            row: dict[str, Any] = {"name": entry.name, "size": entry.size}
            try:
                adapter = read_adapter(entry.path)
            except RVCLoraError as exc:
                row["error"] = _without_path(str(exc), entry.path, entry.name)
            else:
                meta, kinds = adapter.metadata, set(adapter.modules.values())
                ranks = sorted(set(adapter.ranks().values()))
                stored = meta.get("base_fingerprint")
                row.update(rank=ranks[0] if len(ranks) == 1 else (ranks or None),
                           algorithm=meta.get("algorithm") or ("lora" if kinds == {"lora"} else
                                                               "diff" if kinds == {"diff"} else "lora+diff"),
                           modules=len(adapter.modules), rvc_version=meta.get("rvc_version"),
                           sample_rate=meta.get("sample_rate"), f0=meta.get("f0"),
                           base_match=None if not stored else
                           stored == engine.converter.base_fingerprint(adapter.modules))
            info_cache[key] = row
        return info_cache[key]

    @app.get("/v1/adapters")
    async def adapters(request: Request) -> dict[str, Any]:
        require_token(request)
        entries = await anyio.to_thread.run_sync(registry.rescan)
        rows = [await anyio.to_thread.run_sync(adapter_info, e) for e in entries.values()]
        return {"adapters": rows, "uploads": limits.allow_upload}

    # -- adapter upload ----------------------------------------------------------------------------

    @app.post("/v1/adapters", status_code=201)
    async def upload_adapter(request: Request) -> dict[str, Any]:
        require_token(request)
        if not limits.allow_upload:
            raise RequestError(403, None, "adapter uploads are disabled (start the server with --allow-upload)")
        form = await request.form(max_files=1, max_fields=2)
        name, upload = form.get("name"), form.get("file")
        if not isinstance(name, str):
            raise RequestError(400, "name", "missing: the registry name to store the adapter under")
        try:
            target = registry.target(name)
        except BadAdapterName as exc:
            raise RequestError(422, "name", str(exc)) from None
        if target.exists():
            raise RequestError(409, "name", f"an adapter named {name!r} already exists")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "file", "missing: a .safetensors adapter file")
        data = await upload.read()
        if not looks_like_safetensors(data[:9], len(data)):
            raise RequestError(415, "file", "not a safetensors file (adapters are .safetensors; pickles are refused)")
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".tmp", dir=registry.folder)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                await engine.run(lambda worker: worker.converter.check_adapter(tmp), limits.timeout)
            except ENGINE_ERRORS as exc:
                raise _engine_error(exc) from None
            except RVCLoraError as exc:
                raise RequestError(422, "file", _without_path(str(exc), tmp, f"{name}.safetensors")) from None
            try:
                os.link(tmp, target)  # fails if the name was taken meanwhile; never overwrites
            except FileExistsError:
                raise RequestError(409, "name", f"an adapter named {name!r} already exists") from None
        finally:
            tmp.unlink(missing_ok=True)
        registry.rescan()
        return await anyio.to_thread.run_sync(adapter_info, registry.get(name))

    # -- conversion ----------------------------------------------------------------------------------

    def decode(upload, label: str) -> tuple[np.ndarray, int]:
        from rvc_lora.audio.io import load_audio, probe_audio
        from rvc_lora.infer.command import audio_suffixes

        suffix = Path(label).suffix.lower()
        suffix = suffix if suffix.lstrip(".") in audio_suffixes() else ""
        with tempfile.TemporaryDirectory(prefix="rvc-lora-serve-") as folder:
            path = Path(folder) / f"upload{suffix}"
            with open(path, "wb") as handle:
                upload.file.seek(0)
                while chunk := upload.file.read(1 << 20):
                    handle.write(chunk)
            try:
                info = probe_audio(path)
                if info.duration > limits.max_audio_seconds:
                    raise RequestError(413, "audio", f"{info.duration:.1f} s of audio exceeds the limit of "
                                                     f"{limits.max_audio_seconds:g} s")
                return load_audio(path)
            except RequestError:
                raise
            except RVCLoraError as exc:
                raise RequestError(400, "audio", _without_path(str(exc), path, label)) from None

    @app.post("/v1/convert")
    async def convert(request: Request) -> Response:
        require_token(request)
        form = await request.form(max_files=1, max_fields=2)
        unknown = sorted(set(form.keys()) - {"audio", "options"})
        if unknown:
            raise RequestError(400, unknown[0], "unknown form field (expected audio, options)")
        options_text = form.get("options")
        if options_text is not None and not isinstance(options_text, str):
            raise RequestError(400, "options", "must be a JSON text field, not a file")
        parsed = parse_convert_request(parse_options_json(options_text), registry, model)
        upload = form.get("audio")
        if upload is None or isinstance(upload, str):
            raise RequestError(400, "audio", "missing: send the audio file as the multipart field 'audio'")
        label = upload.filename or "audio"
        audio, sr = await anyio.to_thread.run_sync(decode, upload, label)
        try:
            out, out_sr, compute = await engine.run(
                lambda worker: _convert_job(worker, parsed, audio, sr, metrics, registry), limits.timeout)
        except ENGINE_ERRORS as exc:
            raise _engine_error(exc) from None
        seconds = audio.shape[0] / sr
        metrics.audio_seconds.labels("convert").inc(seconds)
        metrics.rtf.observe(compute / max(seconds, 1e-9))
        body = await anyio.to_thread.run_sync(_encode, out, out_sr, parsed.format)
        stem = Path(label).stem or "audio"
        return Response(body, media_type=f"audio/{parsed.format}", headers={
            "Content-Disposition": f'attachment; filename="{_safe_filename(stem)}-converted.{parsed.format}"',
            "X-Sample-Rate": str(out_sr), "X-Audio-Seconds": f"{seconds:.3f}", "X-Compute-Seconds": f"{compute:.3f}"})

    # -- streaming -----------------------------------------------------------------------------------

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if streams["open"] >= limits.max_streams:
            await _ws_fail(ws, RequestError(503, None, f"{limits.max_streams} streams already open; retry later"),
                           metrics)
            return
        streams["open"] += 1
        metrics.streams.inc()
        try:
            await _stream_session(ws, engine, registry, model, limits, metrics, authorized(ws.headers.get(
                "authorization")), authorized)
        finally:
            streams["open"] -= 1
            metrics.streams.dec()

    return app


def _safe_filename(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[:80] or "audio"


def _use(worker: Worker, request: ConvertRequest, metrics: ServeMetrics, registry: AdapterRegistry) -> None:
    """Select the request's adapters and pitch method on ``worker``; adapter problems name the adapter."""
    try:
        metrics.swap(worker.use(request.adapters, request.f0_method))
    except RVCLoraError as exc:
        raise RequestError(422, "options.adapters", _without_path(str(exc), f"{registry.folder}{os.sep}", "")) \
            from None


def _convert_job(worker: Worker, request: ConvertRequest, audio: np.ndarray, sr: int, metrics: ServeMetrics,
                 registry: AdapterRegistry) -> tuple[np.ndarray, int, float]:
    """Runs on a worker: select the adapters and pitch method, convert; returns (audio, rate, compute seconds)."""
    _use(worker, request, metrics, registry)
    conv = worker.converter
    before = dict(conv.times.__dict__)
    start = time.perf_counter()
    try:
        out, out_sr = conv.convert(audio, sr, request.options)
    except RVCLoraError as exc:
        raise RequestError(422, "audio", str(exc)) from None
    compute = time.perf_counter() - start
    for stage in ("pitch", "content", "index", "synthesis", "other"):
        metrics.compute_seconds.labels(stage).inc(getattr(conv.times, stage) - before[stage])
    return out, out_sr, compute


async def _ws_fail(ws: WebSocket, error: RequestError, metrics: ServeMetrics) -> None:
    metrics.requests.labels("WS /v1/stream", str(error.status)).inc()
    metrics.errors.labels("WS /v1/stream", str(error.status)).inc()
    code = 1013 if error.status in (429, 503) else 1011 if error.status >= 500 else 1008
    try:
        await ws.send_text(json.dumps({"type": "error", **error.payload()}))
        await ws.close(code=code, reason=error.message[:120])
    except (WebSocketDisconnect, RuntimeError):
        pass


async def _receive(ws: WebSocket, seconds: float) -> dict[str, Any]:
    try:
        with anyio.fail_after(seconds):
            return await ws.receive()
    except TimeoutError:
        raise RequestError(408, None, f"no message for {seconds:g} s; closing the stream") from None


def _stream_setup(text: str | None, registry: AdapterRegistry, model: ModelInfo,
                  header_ok: bool, authorized) -> tuple[ConvertRequest, StreamSettings, int]:
    """The first message: ``{"token"?, "sample_rate", "options": {...}, "stream": {...}}``."""
    if text is None:
        raise RequestError(400, "config", "the first message must be a JSON text message (sample_rate, options, "
                                          "stream)")
    raw = parse_options_json(text, "config")
    unknown = sorted(set(raw) - {"token", "sample_rate", "options", "stream"})
    if unknown:
        raise RequestError(400, unknown[0], "unknown key (expected token, sample_rate, options, stream)")
    if not header_ok and not authorized(f"Bearer {raw.get('token') or ''}"):
        raise RequestError(401, "token", "missing or wrong token (Authorization header or \"token\" in the first "
                                         "message)")
    rate = raw.get("sample_rate", 16000)
    if isinstance(rate, bool) or not isinstance(rate, int) or not 8000 <= rate <= 384000:
        raise RequestError(422, "sample_rate", f"must be an integer within 8000..384000, got {json.dumps(rate)}")
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "options", "must be a JSON object")
    request = parse_convert_request(options, registry, model)
    settings_raw = raw.get("stream") or {}
    if not isinstance(settings_raw, dict):
        raise RequestError(400, "stream", "must be a JSON object")
    for key, value in settings_raw.items():
        if key not in STREAM_KEYS:
            raise RequestError(400, f"stream.{key}", f"unknown key (known: {', '.join(sorted(STREAM_KEYS))})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(400, f"stream.{key}", f"must be a number of seconds, got {json.dumps(value)}")
    try:
        settings = StreamSettings(**settings_raw)
    except RVCLoraError as exc:
        raise RequestError(422, "stream", str(exc)) from None
    return request, settings, rate


async def _stream_session(ws: WebSocket, engine: Engine, registry: AdapterRegistry, model: ModelInfo,
                          limits: ServeLimits, metrics: ServeMetrics, header_ok: bool, authorized) -> None:
    """One WebSocket stream: config message, then binary float32 blocks in, converted blocks out."""
    try:
        first = await _receive(ws, limits.stream_idle_seconds)
        if first["type"] == "websocket.disconnect":
            return
        request, settings, rate = _stream_setup(first.get("text"), registry, model, header_ok, authorized)

        def start(worker: Worker) -> StreamingConverter:
            return StreamingConverter(worker.converter, request.options, settings, input_rate=rate)

        stream = await engine.run(start, limits.timeout)
        await ws.send_text(json.dumps({"type": "ready", "input_rate": rate, "output_rate": stream.output_rate,
                                       "block_samples": stream.block_samples, "latency": stream.latency,
                                       "lag": stream.lag}))

        def step(samples: np.ndarray | None):
            def job(worker: Worker) -> np.ndarray:
                _use(worker, request, metrics, registry)
                stream.converter = worker.converter
                return stream.flush() if samples is None else stream.process(samples)
            return job

        while True:
            message = await _receive(ws, limits.stream_idle_seconds)
            if message["type"] == "websocket.disconnect":
                break
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                if len(data) > limits.max_stream_message_bytes or len(data) % 4:
                    raise RequestError(400, "audio", f"binary messages carry float32 samples: a multiple of 4 "
                                                     f"bytes, at most {limits.max_stream_message_bytes}")
                samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
                out = await engine.run(step(samples), limits.timeout)
                metrics.audio_seconds.labels("stream").inc(samples.shape[0] / rate)
                await ws.send_bytes(out.astype("<f4").tobytes())
            elif text is not None:
                try:
                    kind = json.loads(text).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind != "end":
                    raise RequestError(400, "type", "text messages after the first must be {\"type\": \"end\"}")
                out = await engine.run(step(None), limits.timeout)
                await ws.send_bytes(out.astype("<f4").tobytes())
                blocks = stream.stats.block_seconds
                await ws.send_text(json.dumps({"type": "done", "blocks": len(blocks),
                                               "mean_block_seconds": float(np.mean(blocks)) if blocks else 0.0}))
                await ws.close()
                break
        metrics.requests.labels("WS /v1/stream", "200").inc()
    except WebSocketDisconnect:
        pass
    except RequestError as exc:
        await _ws_fail(ws, exc, metrics)
    except ENGINE_ERRORS as exc:
        await _ws_fail(ws, _engine_error(exc), metrics)
    except RVCLoraError as exc:
        await _ws_fail(ws, RequestError(422, None, str(exc)), metrics)
    except Exception as exc:  # never let one stream take the server down
        log.exception("stream failed")
        await _ws_fail(ws, RequestError(500, None, f"internal error: {type(exc).__name__}"), metrics)
