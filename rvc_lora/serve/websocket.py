"""``WS /v1/stream``: a JSON set-up message, then float32 blocks in and converted blocks out."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import numpy as np
from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from rvc_lora.infer.streaming import StreamingConverter, StreamSettings
from rvc_lora.serve.engine import Engine, Worker
from rvc_lora.serve.errors import ENGINE_ERRORS, RequestError, engine_error, library_error
from rvc_lora.serve.jobs import use_request
from rvc_lora.serve.metrics import ServeMetrics
from rvc_lora.serve.options import ConvertRequest, ModelInfo, parse_convert_request, parse_options_json
from rvc_lora.serve.registry import AdapterRegistry
from rvc_lora.serve.service import ServeLimits
from rvc_lora.utils import RVCLoraError

log = logging.getLogger("rvc_lora.serve")
STREAM_KEYS = frozenset({"block", "crossfade", "search", "context", "content_context", "pitch_context", "margin"})


async def ws_fail(ws: WebSocket, error: RequestError, metrics: ServeMetrics) -> None:
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


async def stream_session(ws: WebSocket, engine: Engine, registry: AdapterRegistry, model: ModelInfo,
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
                use_request(worker, request, metrics, registry)
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
        await ws_fail(ws, exc, metrics)
    except ENGINE_ERRORS as exc:
        await ws_fail(ws, engine_error(exc), metrics)
    except (RVCLoraError, OSError) as exc:
        await ws_fail(ws, library_error(exc, 422, None), metrics)
    except Exception as exc:  # never let one stream take the server down
        log.exception("stream failed")
        await ws_fail(ws, RequestError(500, None, f"internal error: {type(exc).__name__}"), metrics)
