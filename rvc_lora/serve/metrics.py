"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

PREFIX = "rvc_lora"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)


class _CacheCollector:
    """Adapter cache hits / misses summed over the workers' Converters at scrape time."""

    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self.stats = stats

    def collect(self):
        hits, misses = self.stats()
        yield CounterMetricFamily(f"{PREFIX}_adapter_cache_hits", "Adapter loads answered from the file cache",
                                  value=hits)
        yield CounterMetricFamily(f"{PREFIX}_adapter_cache_misses", "Adapter loads that read and decoded the file",
                                  value=misses)


class ServeMetrics:
    """Request counts, errors, latency, audio seconds, real-time factor, swaps, queue depth, streams."""

    def __init__(self, queue_depth: Callable[[], int], cache_stats: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests and WebSocket sessions by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Requests answered with an error, by endpoint and status",
                              ["endpoint", "status"], registry=r)
        self.latency = Histogram(f"{PREFIX}_request_seconds", "Request latency (receipt to response)",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.audio_seconds = Counter(f"{PREFIX}_audio_seconds", "Seconds of input audio converted", ["kind"],
                                     registry=r)
        self.compute_seconds = Counter(f"{PREFIX}_compute_seconds", "Seconds spent converting, by stage",
                                       ["stage"], registry=r)
        self.rtf = Histogram(f"{PREFIX}_real_time_factor", "Conversion time / audio duration per request",
                             buckets=RTF_BUCKETS, registry=r)
        self.swaps = Counter(f"{PREFIX}_adapter_swaps", "Adapter set changes merged into a worker's model",
                             registry=r)
        self.swap_seconds = Histogram(f"{PREFIX}_adapter_swap_seconds", "Time of one adapter set change",
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=r)
        self.reuses = Counter(f"{PREFIX}_adapter_set_reuses", "Jobs that found their adapter set already merged",
                              registry=r)
        self.streams = Gauge(f"{PREFIX}_stream_sessions", "Open streaming sessions", registry=r)
        depth = Gauge(f"{PREFIX}_queue_depth", "Jobs waiting for a worker", registry=r)
        depth.set_function(lambda: float(queue_depth()))
        r.register(_CacheCollector(cache_stats))

    def swap(self, seconds: float | None) -> None:
        """Record the outcome of :meth:`rvc_lora.serve.engine.Worker.use`."""
        if seconds is None:
            self.reuses.inc()
        else:
            self.swaps.inc()
            self.swap_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
