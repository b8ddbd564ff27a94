"""Conversion workers behind a bounded queue: one Converter per worker thread, jobs run one at a time each.

A job is a function of a :class:`Worker`; it selects its adapter set with :meth:`Worker.use` (a swap
only when the set differs from the worker's current one) and then converts. Because a worker runs its
jobs one after another, the adapter weights a job converts with are the ones it selected: simultaneous
requests with different adapters cannot see each other's weights. The queue holds at most ``queue_size``
waiting jobs; :meth:`Engine.submit` raises :class:`Overloaded` beyond that.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from rvc_lora.infer.converter import Converter
from rvc_lora.serve.registry import AdapterEntry
from rvc_lora.utils import RVCLoraError

T = TypeVar("T")


class Overloaded(RVCLoraError):
    """The queue is full."""


class TimedOut(RVCLoraError):
    """A job did not finish within its time limit."""


class ShuttingDown(RVCLoraError):
    """The engine is stopping."""


@dataclass
class WorkerStats:
    """Counters of one worker (read by the metrics endpoint)."""

    jobs: int = 0
    swaps: int = 0
    swap_seconds: float = 0.0


class Worker:
    """One Converter and the adapter set currently merged into it."""

    def __init__(self, converter: Converter, index: int) -> None:
        self.converter = converter
        self.index = index
        self.stats = WorkerStats()
        self._applied: tuple = ()

    def use(self, adapters: Sequence[tuple[AdapterEntry, float]]) -> float | None:
        """Merge ``adapters`` (registry entries, strengths) unless already merged; returns the swap seconds
        (None when nothing changed)."""
        key = tuple((entry.path, entry.stamp, float(strength)) for entry, strength in adapters)
        if key == self._applied:
            return None
        start = time.perf_counter()
        self._applied = ()  # if set_adapters fails, nothing is known to be merged
        self.converter.set_adapters([(entry.path, float(strength)) for entry, strength in adapters])
        self._applied = key
        seconds = time.perf_counter() - start
        self.stats.swaps += 1
        self.stats.swap_seconds += seconds
        return seconds


class Engine:
    """``workers`` threads, each owning a Converter from ``factory()``, fed by one bounded queue."""

    def __init__(self, factory: Callable[[], Converter], workers: int = 1, queue_size: int = 8) -> None:
        if workers < 1:
            raise RVCLoraError(f"need at least one worker, got {workers}")
        if queue_size < 0:
            raise RVCLoraError(f"queue size must be >= 0, got {queue_size}")
        self.workers = [Worker(factory(), i) for i in range(workers)]
        self.queue_size = queue_size
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.BoundedSemaphore(queue_size + workers)  # waiting + running jobs
        self._stopping = False
        self.running = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, args=(w,), name=f"rvc-lora-worker-{w.index}",
                                          daemon=True) for w in self.workers]
        for thread in self._threads:
            thread.start()

    @property
    def converter(self) -> Converter:
        """The first worker's Converter (model facts; do not convert with it outside a job)."""
        return self.workers[0].converter

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return self._queue.qsize()

    def submit(self, job: Callable[[Worker], T]) -> Future[T]:
        """Queue ``job``; raises Overloaded when ``queue_size`` jobs already wait, ShuttingDown when stopping."""
        if self._stopping:
            raise ShuttingDown("the server is shutting down")
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"server busy: {self.queue_size} requests already queued; retry later")
        future: Future[T] = Future()
        self._queue.put((future, job))
        return future

    async def run(self, job: Callable[[Worker], T], timeout: float) -> T:
        """Submit ``job`` and await its result; TimedOut after ``timeout`` seconds (a job still waiting in the
        queue is dropped; a running one finishes and its result is discarded)."""
        future = self.submit(job)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            state = "running" if future.running() else "queued"
            future.cancel()
            raise TimedOut(f"request timed out after {timeout:g} s ({state}); the server is busy, retry later") \
                from None

    def _loop(self, worker: Worker) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, job = item
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                with self._lock:
                    self.running += 1
                try:
                    future.set_result(job(worker))
                except BaseException as exc:  # delivered to the awaiting request
                    future.set_exception(exc)
                finally:
                    worker.stats.jobs += 1
                    with self._lock:
                        self.running -= 1
            finally:
                self._slots.release()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel waiting jobs, let running ones finish, end the threads."""
        self._stopping = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
                self._slots.release()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
