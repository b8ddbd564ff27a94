"""The HTTP / WebSocket application (FastAPI): conversion with per-request adapters, the adapter registry,
streaming, health, metrics and the web page.

Every error is a JSON body ``{"error": {"status", "field", "message"}}``; a bad request never stops the
server. Conversions run on the :class:`rvc_lora.serve.engine.Engine` (bounded queue: 429 when full,
503 on timeout or shutdown).
"""

from __future__ import annotations

import hmac
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from rvc_lora.infer.converter import OUTPUT_FORMATS
from rvc_lora.serve.engine import Engine
from rvc_lora.serve.errors import ENGINE_ERRORS, RequestError, engine_error, library_error, without_path
from rvc_lora.serve.jobs import convert_job
from rvc_lora.serve.metrics import ServeMetrics
from rvc_lora.serve.middleware import BodyLimit, Metered
from rvc_lora.serve.options import ModelInfo, parse_convert_request, parse_options_json
from rvc_lora.serve.registry import AdapterEntry, AdapterRegistry, BadAdapterName, looks_like_safetensors
from rvc_lora.serve.service import ServeLimits
from rvc_lora.serve.websocket import stream_session, ws_fail
from rvc_lora.utils import RVCLoraError

log = logging.getLogger("rvc_lora.serve")
STATIC = Path(__file__).resolve().parent / "static"
PAGE_POLICY = ("default-src 'self'; media-src 'self' blob:; connect-src 'self' blob:; img-src 'self' data:; "
               "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _error_response(exc: RequestError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status in (429, 503):
        headers = {"Retry-After": "5"}
    return JSONResponse(exc.payload(), status_code=exc.status, headers=headers)


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

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(RequestError(exc.status_code, None, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, OSError):  # e.g. no space left for an upload's temporary file
            return _error_response(library_error(exc, 500, None))
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
                row["error"] = without_path(str(exc), entry.path, entry.name)
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
                raise engine_error(exc) from None
            except (RVCLoraError, OSError) as exc:
                raise library_error(exc, 422, "file", (tmp, f"{name}.safetensors")) from None
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
            except (RVCLoraError, OSError) as exc:
                raise library_error(exc, 400, "audio", (path, label)) from None

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
                lambda worker: convert_job(worker, parsed, audio, sr, metrics, registry), limits.timeout)
        except ENGINE_ERRORS as exc:
            raise engine_error(exc) from None
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
            await ws_fail(ws, RequestError(503, None, f"{limits.max_streams} streams already open; retry later"),
                           metrics)
            return
        streams["open"] += 1
        metrics.streams.inc()
        try:
            await stream_session(ws, engine, registry, model, limits, metrics, authorized(ws.headers.get(
                "authorization")), authorized)
        finally:
            streams["open"] -= 1
            metrics.streams.dec()

    return app


def _safe_filename(stem: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[:80] or "audio"


