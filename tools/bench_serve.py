"""Benchmark serving on this machine: HTTP throughput and latency with interleaved adapters, adapter swap cost,
and streaming per-block compute time and latency.

Builds a full-size RVC v2 40k f0 model with random weights, a full-size random HuBERT-base and three
rank-8 adapters, then:

1. starts ``rvc-lora serve`` (a real server process on 127.0.0.1) once per worker layout (``--layouts``,
   default ``1x2`` = 1 worker with 2 torch threads and ``2x1`` = 2 workers with 1 thread each; all servers
   stay loaded and the rounds alternate between them), and lets ``--clients`` concurrent clients convert
   ``--clip-seconds`` clips, each client cycling through the three adapters (interleaved), plus a run where
   every request uses the same adapter (no swaps);
2. runs a :class:`rvc_lora.infer.streaming.StreamingConverter` in this process for block sizes
   ``--blocks`` (default 0.25 0.5 0.75 1.0 s) and reports per-block compute time against the block length.

    python tools/bench_serve.py            # defaults
    python tools/bench_serve.py --quick    # short clips, few requests, short streams

Prints markdown tables and writes the same text to ``--out`` (default ``tools/results/bench_serve.txt``).
Throughput = seconds of audio converted per wall-clock second, all clients together.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import add_allocator_flag, random_adapter, setup_allocator  # noqa: E402
from bench_convert import speech_like  # noqa: E402

from rvc_lora.checkpoint import save_rvc  # noqa: E402
from rvc_lora.demo.random_hubert import make_random_checkpoint  # noqa: E402
from rvc_lora.models import build_synthesizer  # noqa: E402

ADAPTERS = ("alice", "bob", "carol")
DEFAULT_OUT = ROOT / "tools" / "results" / "bench_serve.txt"


class Tee:
    """Standard output that is also written, line by line, to a file (the raw results)."""

    def __init__(self, stream, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream, self.file = stream, open(path, "w")  # noqa: SIM115 - closed in close()

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.file.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``rvc-lora serve`` in a subprocess on a free loopback port."""

    def __init__(self, model: Path, hubert: Path, adapters: Path, workers: int, threads: int, f0_method: str,
                 log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rvc_lora.cli", "serve", "--model", str(model), "--hubert", str(hubert),
             "--adapters", str(adapters), "--port", str(self.port), "--workers", str(workers), "--threads",
             str(threads), "--f0-method", f0_method, "--queue-size", "256", "--timeout", "3600",
             "--log-level", "warning", "--device", "cpu"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 900.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not come up")

    def metric(self, name: str) -> float:
        """Sum of the samples of one metric (e.g. ``rvc_lora_adapter_swap_seconds_sum``)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def run_clients(url: str, clip: bytes, clip_seconds: float, clients: int, requests: int,
                interleave: bool) -> dict[str, float]:
    """``clients`` threads x ``requests`` conversions; returns throughput and latency percentiles."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=3600) as http:
            for j in range(requests):
                name = ADAPTERS[(i + j) % len(ADAPTERS)] if interleave else ADAPTERS[0]
                options = f'{{"seed": 0, "adapters": [{{"name": "{name}", "strength": 1.0}}]}}'
                start = time.perf_counter()
                response = http.post(f"{url}/v1/convert", files={"audio": ("clip.wav", clip, "audio/wav")},
                                     data={"options": options})
                elapsed = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"{response.status_code} {response.text[:200]}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    lat = np.asarray(latencies)
    return {"throughput": len(latencies) * clip_seconds / wall, "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "wall": wall, "requests": float(len(latencies))}


def bench_http(args: argparse.Namespace, tmp: Path, model: Path, hubert: Path, registry: Path) -> None:
    import soundfile as sf

    clip_path = tmp / "clip.wav"
    sf.write(clip_path, speech_like(args.clip_seconds, seed=3), 16000, subtype="FLOAT")
    clip = clip_path.read_bytes()
    layouts = [tuple(int(v) for v in layout.split("x")) for layout in args.layouts]
    servers = {}
    try:
        for workers, threads in layouts:
            servers[(workers, threads)] = ServerProcess(model, hubert, registry, workers, threads, args.f0_method,
                                                        tmp / f"server_{workers}x{threads}.log")
        for server in servers.values():
            server.wait()
            run_clients(server.url, clip, args.clip_seconds, 1, len(ADAPTERS), True)  # warm-up, caches
        rows: dict[tuple, list[dict]] = {}
        for _ in range(args.rounds):  # interleaved: every layout and mode once per round
            for key, server in servers.items():
                for interleave in (True, False):
                    swaps0 = server.metric("rvc_lora_adapter_swaps_total")
                    swap_s0 = server.metric("rvc_lora_adapter_swap_seconds_sum")
                    result = run_clients(server.url, clip, args.clip_seconds, args.clients, args.requests, interleave)
                    swaps = server.metric("rvc_lora_adapter_swaps_total") - swaps0
                    result["swaps"] = swaps
                    result["swap_ms"] = 1000 * (server.metric("rvc_lora_adapter_swap_seconds_sum") - swap_s0) \
                        / max(swaps, 1)
                    rows.setdefault((*key, interleave), []).append(result)
    finally:
        for server in servers.values():
            server.stop()

    print(f"### HTTP: {args.clients} concurrent clients x {args.requests} requests of {args.clip_seconds:g} s clips "
          f"(f0 {args.f0_method}, {args.rounds} round(s), medians over rounds)\n")
    print("| workers x threads | adapters | throughput (audio s / wall s) | p50 latency (s) | p95 latency (s) "
          "| swaps | mean swap (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (workers, threads, interleave), results in rows.items():
        def med(key: str, rs=results) -> float:
            return statistics.median(r[key] for r in rs)

        mode = "3 interleaved" if interleave else "1 (no swaps)"
        print(f"| {workers} x {threads} | {mode} | {med('throughput'):.3f} | {med('p50'):.2f} | {med('p95'):.2f} "
              f"| {med('swaps'):.0f} | {med('swap_ms'):.1f} |")
    print()


def bench_stream(args: argparse.Namespace, model: Path, hubert: Path, adapter: Path) -> None:
    from rvc_lora.infer import Converter, ConvertOptions
    from rvc_lora.infer.streaming import StreamSettings, stream_convert

    torch.set_num_threads(args.stream_threads)
    converter = Converter(model, hubert, [(adapter, 1.0)], device="cpu", f0_method=args.f0_method)
    audio = speech_like(args.stream_seconds, seed=5)
    print(f"### Streaming: StreamingConverter in-process, {args.stream_seconds:g} s of audio per block size, "
          f"f0 {args.f0_method}, {torch.get_num_threads()} torch threads, crossfade {args.crossfade:g} s, "
          f"context 2 s, HuBERT context 1 s, decoder margin 0.1 s\n")
    print("| block (s) | algorithmic latency (ms) | blocks | compute per block, median (ms) | p95 (ms) "
          "| compute / block length | real time? | CPU per block (ms) | offline CPU per block length (ms) "
          "| stream / offline CPU |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    warm = StreamSettings(block=0.5, crossfade=args.crossfade)
    stream_convert(converter, speech_like(1.0), 16000, ConvertOptions(), warm)
    for block in args.blocks:
        settings = StreamSettings(block=block, crossfade=args.crossfade)
        cpu = time.process_time()
        _, _, stream = stream_convert(converter, audio, 16000, ConvertOptions(), settings)
        cpu = (time.process_time() - cpu) / len(stream.stats.block_seconds)
        times = np.asarray(stream.stats.block_seconds[1:])  # the first block warms the shapes up
        block_s = stream.layout.block / 100
        offline = time.process_time()  # the same audio converted offline, right after: CPU per block length
        converter.convert(audio, 16000, ConvertOptions())
        offline = (time.process_time() - offline) * block_s / args.stream_seconds
        p95 = float(np.percentile(times, 95))
        print(f"| {block_s:.2f} | {stream.latency * 1000:.0f} | {times.size} | {np.median(times) * 1000:.0f} "
              f"| {p95 * 1000:.0f} | {np.median(times) / block_s:.2f} | {'yes' if p95 < block_s else 'no'} "
              f"| {cpu * 1000:.0f} | {offline * 1000:.0f} | {cpu / offline:.2f} |", flush=True)
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--requests", type=int, default=6, help="requests per client per round (default 6)")
    parser.add_argument("--clip-seconds", type=float, default=5.0, help="clip length (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="WORKERSxTHREADS server layouts")
    parser.add_argument("--blocks", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--stream-seconds", type=float, default=10.0, help="audio streamed per block size")
    parser.add_argument("--stream-threads", type=int, default=2)
    parser.add_argument("--crossfade", type=float, default=0.05)
    parser.add_argument("--f0-method", default="fcpe")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 s clips, 2 clients x 3 requests, 1 round, 4 s streams")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="also write the printed results here (default tools/results/bench_serve.txt)")
    add_allocator_flag(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.clip_seconds, args.clients, args.requests, args.rounds = 2.0, 2, 3, 1
        args.stream_seconds = min(args.stream_seconds, 4.0)
    allocator = setup_allocator(args)
    torch.manual_seed(0)
    tee = Tee(sys.stdout, args.out)
    sys.stdout = tee
    try:
        run(args, allocator)
    finally:
        sys.stdout = tee.stream
        tee.close()
    print(f"(written to {args.out})")
    return 0


def run(args: argparse.Namespace, allocator: str) -> None:
    """Build the models, then the HTTP and streaming benchmarks; prints the tables."""
    print(f"## rvc-lora serve benchmark ({os.cpu_count()} CPUs, torch {torch.__version__}, {allocator} allocator)\n")
    print("full-size RVC v2 40k f0 synthesizer and HuBERT-base with random weights; 3 rank-8 adapters on "
          "dec.ups.* + dec.resblocks.*\n")
    with tempfile.TemporaryDirectory(prefix="rvc-lora-bench-serve-") as name:
        tmp = Path(name)
        start = time.perf_counter()
        model = save_rvc(build_synthesizer("v2", 40000, True), tmp / "base_v2_40k.pth")
        hubert = make_random_checkpoint(tmp / "hubert_base_random.pt", size="base")
        registry = tmp / "adapters"
        registry.mkdir()
        for seed, adapter in enumerate(ADAPTERS, start=1):
            random_adapter(model, registry / f"{adapter}.safetensors", seed=seed)
        print(f"(built the model, HuBERT and adapters in {time.perf_counter() - start:.1f} s)\n")
        if not args.skip_http:
            bench_http(args, tmp, model, hubert, registry)
        if not args.skip_stream:
            bench_stream(args, model, hubert, registry / "alice.safetensors")


if __name__ == "__main__":
    sys.exit(main())
