"""Serving conversions over HTTP and WebSocket (FastAPI + uvicorn): per-request adapters, streaming, web page.

Sits above :mod:`rvc_lora.infer`; needs the ``serve`` extra (``pip install 'rvc-lora[serve]'``).
"""
