"""Micro-batching: gather images from concurrent requests into one model call.

A model call on a batch of B crops costs far less than B calls on one crop, but HTTP requests arrive one
image at a time. :class:`MicroBatcher` sits between the two, in the way LitServe's ``max_batch_size`` /
``batch_timeout`` loop does (the idea, not its code): requests put their decoded images on a queue; one
worker task takes the first waiting image, then keeps collecting until it has ``max_batch_size`` images or
``max_wait`` has passed since that first image arrived, and hands the stacked batch to the model in an
executor, off the event loop. Each request awaits a future that the worker resolves with its row of the
result (or with the model's exception, so one failure answers every request of that batch and the worker
lives on).

While the model is busy, new images pile up and form the next, larger batch: under load batches grow by
themselves, and an idle server adds at most ``max_wait`` to a lone request.

The model is never called from two threads at once unless it says it is thread-safe: ``concurrency`` (the
number of batches in flight, each on its own executor thread) is forced to 1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

BatchObserver = Callable[[int, float, float], None]
"""Called after every model call with (batch size, seconds it took, CPU seconds of the thread that ran it).

Both times are taken inside the model thread, around the call alone (not the hand-off to the thread), so
they are the embedder's own cost. The CPU time is that thread's: all of the model's CPU when the backend
computes in the calling thread (ONNX Runtime with one intra-op thread), a lower bound otherwise."""


class BatcherOverloaded(RuntimeError):
    """The queue already holds ``max_queue`` images; the caller should answer 503 and retry later."""


class BatcherClosed(RuntimeError):
    """The batcher is stopped (server shutting down) or was never started."""


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Batch single-image embedding requests into bounded model calls.

    Attributes:
        calls: number of model calls made so far.
        items: number of images embedded so far (successfully or not).
        batch_sizes: size of each recent model call, newest last (bounded history, for tests and logs).
    """

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 1024, thread_safe: bool = False,
                 concurrency: int = 1, observer: BatchObserver | None = None, history: int = 10_000) -> None:
        """Configure (nothing starts until :meth:`start`).

        Args:
            embed: the model, ``uint8 [B, H, W, 3] -> float32 [B, dim]``; called in a worker thread.
            max_batch_size: most images per call; 1 disables batching (every image is its own call).
            max_wait_s: longest the first image of a batch waits for company, in seconds.
            max_queue: most images waiting; :meth:`submit` raises :class:`BatcherOverloaded` beyond it.
            thread_safe: whether ``embed`` may run in several threads at once.
            concurrency: batches in flight at once when ``thread_safe``; ignored (1) otherwise.
            observer: called with (batch size, seconds, CPU seconds) after every model call.
            history: how many recent batch sizes :attr:`batch_sizes` keeps.

        Raises:
            ValueError: a bound is out of range (the message names it).
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self._embed = embed
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.max_queue = int(max_queue)
        self.concurrency = int(concurrency) if thread_safe else 1
        self._observer = observer
        self.calls = 0
        self.items = 0
        self.batch_sizes: deque[int] = deque(maxlen=history)
        self._queue: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._worker: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the worker task is alive (``/readyz`` reports not-ready otherwise)."""
        return self._worker is not None and not self._worker.done()

    async def start(self) -> None:
        """Start the worker on the running event loop."""
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        # One thread per batch in flight: with concurrency 1 the model only ever sees one thread.
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="embed")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Stop the worker, fail every waiting request with :class:`BatcherClosed`, wait for in-flight calls."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherClosed("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- requests ----------------------------------------------------------------------------------

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """Embed one image, batched with whatever else is waiting.

        Args:
            image: uint8 ``[H, W, 3]`` RGB at the model's input size.

        Returns:
            float32 ``[dim]``.

        Raises:
            BatcherOverloaded: the queue is full.
            BatcherClosed: the batcher is not running.
            Exception: whatever the model raised for this image's batch.
        """
        return await self._enqueue([image])[0]

    async def submit_many(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """Embed several images (one request's); they may share batches with other requests.

        Args:
            images: a sequence of uint8 ``[H, W, 3]`` images.

        Returns:
            float32 ``[N, dim]`` in input order.

        Raises:
            ValueError: ``images`` is empty.
            BatcherOverloaded, BatcherClosed, Exception: as :meth:`submit`.
        """
        images = list(images)
        if not images:
            raise ValueError("submit_many needs at least one image")
        futures = self._enqueue(images)
        try:
            rows = await asyncio.gather(*futures)
        except BaseException:
            for fut in futures:
                if not fut.done():
                    fut.cancel()  # the worker skips cancelled items instead of embedding them for nobody
                elif not fut.cancelled():
                    fut.exception()  # mark sibling failures as seen, or asyncio logs them at exit
            raise
        return np.stack(rows)

    def _enqueue(self, images: list[np.ndarray]) -> list[asyncio.Future[np.ndarray]]:
        if not self.running or self._wakeup is None:
            raise BatcherClosed("the micro-batcher is not running")
        if len(self._queue) + len(images) > self.max_queue:
            raise BatcherOverloaded(f"{len(self._queue)} images are already waiting for the model "
                                    f"(limit {self.max_queue}); retry shortly")
        loop = asyncio.get_running_loop()
        items = [_Item(image, loop.create_future()) for image in images]
        self._queue.extend(items)
        self._wakeup.set()
        return [item.future for item in items]

    # -- worker ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None and self._slots is not None  # set by start()
        loop = asyncio.get_running_loop()
        while True:
            # Take a model slot first, so images keep queueing (and batches keep growing) while busy.
            await self._slots.acquire()
            try:
                batch = await self._collect(loop)
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._call_model(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        """Wait for a first live image, then for company until the batch is full or its wait is over."""
        assert self._wakeup is not None
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        # The wait is bounded from when the oldest image arrived, not from now: an image that queued
        # while the model was busy has already waited, and is not made to wait again.
        deadline = self._queue[0].enqueued + self.max_wait_s
        while len(self._queue) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        batch: list[_Item] = []
        while self._queue and len(batch) < self.max_batch_size:
            item = self._queue.popleft()
            if not item.future.done():  # cancelled: the client went away
                batch.append(item)
        return batch

    def _timed_embed(self, images: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The model call with its wall and thread-CPU seconds, measured in the model thread."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        out = self._embed(images)
        return out, time.perf_counter() - started, time.thread_time() - cpu_started

    async def _call_model(self, batch: list[_Item]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        seconds = cpu_seconds = 0.0
        try:
            stacked = np.stack([item.image for item in batch])
            out, seconds, cpu_seconds = await loop.run_in_executor(self._executor, self._timed_embed, stacked)
            out = np.asarray(out)
            if out.ndim != 2 or out.shape[0] != len(batch):
                raise RuntimeError(f"the model returned shape {list(out.shape)} for a batch of {len(batch)}")
        except Exception as exc:  # the model failed: every request of this batch gets the error
            logger.warning("model call on a batch of %d failed: %r", len(batch), exc)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.calls += 1
            self.items += len(batch)
            self.batch_sizes.append(len(batch))
            self._slots.release()
            if self._observer is not None:
                try:
                    self._observer(len(batch), seconds, cpu_seconds)
                except Exception:  # metrics must never take the worker down
                    logger.exception("batch observer failed")
        for row, item in zip(out, batch):
            if not item.future.done():
                item.future.set_result(row)
