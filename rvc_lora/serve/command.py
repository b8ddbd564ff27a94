"""``rvc-lora serve``: argument definitions and the uvicorn runner (FastAPI is imported only when serving)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from rvc_lora.infer.command import add_model_arguments
from rvc_lora.utils import RVCLoraError, set_torch_threads

TOKEN_ENV = "RVC_LORA_TOKEN"
MB = 1024 * 1024


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``rvc-lora serve`` on ``parser``."""
    add_model_arguments(parser, adapters=False)
    parser.add_argument("--adapters", required=True, metavar="DIR",
                        help="adapter registry: a folder of NAME.safetensors files that requests name")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 = all)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"require 'Authorization: Bearer TOKEN' on the API (default: ${TOKEN_ENV}, else none)")
    parser.add_argument("--workers", type=int, default=1,
                        help="conversion workers, each with its own copy of the model (default 1)")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's, divided among the workers)")
    parser.add_argument("--queue-size", type=int, default=8,
                        help="requests that may wait for a worker; more get 429 (default 8)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds a request may wait and run before it gets 503 (default 300)")
    parser.add_argument("--max-upload-mb", type=float, default=50.0, help="largest audio upload (default 50 MB)")
    parser.add_argument("--max-audio-seconds", type=float, default=600.0,
                        help="longest audio accepted (default 600 s)")
    parser.add_argument("--allow-upload", action="store_true",
                        help="accept new adapters by POST /v1/adapters (off by default)")
    parser.add_argument("--max-adapter-mb", type=float, default=64.0, help="largest adapter upload (default 64 MB)")
    parser.add_argument("--max-streams", type=int, default=4, help="simultaneous WebSocket streams (default 4)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def _require_extra() -> None:
    missing = []
    for package, modules in (("fastapi", ("fastapi",)), ("uvicorn", ("uvicorn",)),
                             ("python-multipart", ("python_multipart", "multipart")),
                             ("prometheus-client", ("prometheus_client",)), ("websockets", ("websockets",))):
        if not any(_importable(m) for m in modules):
            missing.append(package)
    if missing:
        raise RVCLoraError(f"rvc-lora serve needs the 'serve' extra (missing: {', '.join(missing)}): "
                           "pip install 'rvc-lora[serve]'")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """Load the model, build the app and serve until Ctrl-C."""
    _require_extra()
    import torch
    import uvicorn

    from rvc_lora.infer.command import converter_from_args
    from rvc_lora.serve.app import create_app
    from rvc_lora.serve.service import ServeLimits, load_service

    for name in ("workers", "max_streams"):
        if getattr(args, name) < 1:
            raise RVCLoraError(f"--{name.replace('_', '-')} must be at least 1")
    if args.queue_size < 0 or args.timeout <= 0 or args.max_upload_mb <= 0 or args.max_adapter_mb <= 0 \
            or args.max_audio_seconds <= 0:
        raise RVCLoraError("--queue-size must be >= 0 and --timeout, --max-upload-mb, --max-adapter-mb, "
                           "--max-audio-seconds positive")
    if args.token is not None and len(args.token) < 8:
        raise RVCLoraError("--token must be at least 8 characters")
    if args.threads is not None:
        set_torch_threads(args.threads)
    elif args.workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // args.workers))
    print(f"loading {args.model} ({args.workers} worker(s), {torch.get_num_threads()} torch thread(s) each) ...",
          file=sys.stderr)
    service = load_service(lambda: converter_from_args(args, adapters=[]), args.adapters, workers=args.workers,
                           queue_size=args.queue_size)
    limits = ServeLimits(max_upload_bytes=int(args.max_upload_mb * MB), max_audio_seconds=args.max_audio_seconds,
                         max_adapter_bytes=int(args.max_adapter_mb * MB), timeout=args.timeout,
                         max_streams=args.max_streams, allow_upload=args.allow_upload)
    app = create_app(service.engine, service.registry, service.model, limits, token=args.token)
    if not _is_loopback(args.host) and args.token is None:
        print(f"rvc-lora: warning: listening on {args.host} without --token: anyone who can reach this port can "
              "use the server", file=sys.stderr)
    entries = service.registry.entries()
    print(f"serving {service.model.name} with {len(entries)} adapter(s) from {args.adapters} on "
          f"http://{args.host}:{args.port}/ (token {'required' if args.token else 'not required'}; Ctrl-C to stop)",
          file=sys.stderr)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            ws_max_size=limits.max_stream_message_bytes + 4096, timeout_graceful_shutdown=10)
    try:
        uvicorn.Server(config).run()
    finally:
        service.stop()
    return 0
