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

**Jobs** (:meth:`MicroBatcher.submit_job`, what ``POST /search`` uses): a request may hand over its image
still encoded, plus a context, and get back the result of a ``finish`` step. The model thread then decodes
every encoded image of the batch, runs the model once, and calls ``finish`` once with all the descriptors
and contexts (the server searches the gallery there, one FAISS call per distinct query). A search thus
costs one thread hand-off per *batch* instead of three per request (decode pool, model, search), and the
event loop does nothing but HTTP. A decoding failure fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BatchObserver = Callable[[int, float, float], None]
"""Called after every model call with (batch size, seconds it took, CPU seconds of the thread that ran it).

Both times are taken inside the model thread, around the call alone (not the hand-off to the thread), so
they are the embedder's own cost. The CPU time is that thread's: all of the model's CPU when the backend
computes in the calling thread (ONNX Runtime with one intra-op thread), a lower bound otherwise."""


class BatcherOverloaded(RuntimeError):
    """The queue already holds ``max_queue`` images; the caller should retry later."""


class BatcherClosed(RuntimeError):
    """The batcher is stopped (server shutting down) or was never started."""


Decode = Callable[[bytes], np.ndarray]
"""Encoded image -> uint8 ``[H, W, 3]`` at the model's size; raises for a bad image (that request fails)."""
Finish = Callable[[np.ndarray, list[Any]], list[Any]]
"""``(descriptors [n, dim], contexts)`` -> one result per job, or an exception instance for a failed one."""


@dataclass
class JobResult:
    """What :meth:`MicroBatcher.submit_job` answers, with where the time went.

    Attributes:
        vector: the descriptor, float32 ``[dim]``.
        result: what ``finish`` returned for this job (None without ``finish``).
        decode_s: seconds decoding this job's image in the model thread (0 when it came decoded).
        embedded_at: ``time.perf_counter()`` when the batch's model call returned.
        finished_at: ``time.perf_counter()`` when ``finish`` returned.
    """

    vector: np.ndarray
    result: Any
    decode_s: float
    embedded_at: float
    finished_at: float


@dataclass
class _Item:
    image: np.ndarray | None
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    data: bytes | None = None  # encoded: decoded in the model thread
    job: bool = False  # answer a JobResult (and call finish) rather than the bare descriptor
    context: Any = None
    # Written by the model thread, read on the loop once the batch is done.
    decode_s: float = 0.0


class MicroBatcher:
    """Batch single-image embedding requests into bounded model calls.

    Attributes:
        calls: number of model calls made so far.
        items: number of images embedded so far (successfully or not).
        batch_sizes: size of each recent model call, newest last (bounded history, for tests and logs).
    """

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 1024, thread_safe: bool = False,
                 concurrency: int = 1, observer: BatchObserver | None = None, history: int = 10_000,
                 decode: Decode | None = None, finish: Finish | None = None) -> None:
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
            decode: decodes the encoded images of jobs, in the model thread (needed to submit bytes).
            finish: called in the model thread after each model call with the jobs' descriptors and
                contexts (see :data:`Finish`).

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
        self._decode = decode
        self._finish = finish
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
    def queue_depth(self) -> int:
        """Images waiting for a model call now (what ``max_queue`` bounds)."""
        return len(self._queue)

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
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
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

    async def submit_job(self, image: bytes | np.ndarray, context: Any = None) -> JobResult:
        """Decode (if encoded), embed and ``finish`` one image, all in the model thread with its batch.

        Args:
            image: the encoded file (decoded with ``decode`` in the model thread) or a decoded uint8
                ``[H, W, 3]`` image.
            context: handed to ``finish`` with this image's descriptor (e.g. the search's top_k and cameras).

        Returns:
            The descriptor, ``finish``'s result and the timings.

        Raises:
            ValueError: bytes given but the batcher has no ``decode``.
            BatcherOverloaded, BatcherClosed: as :meth:`submit`.
            Exception: what ``decode`` raised for this image, what the model raised for its batch, or what
                ``finish`` answered for it.
        """
        if isinstance(image, (bytes, bytearray, memoryview)):
            if self._decode is None:
                raise ValueError("this batcher has no decode function; submit decoded images")
            item = _Item(None, self._new_future(), data=bytes(image), job=True, context=context)
        else:
            item = _Item(image, self._new_future(), job=True, context=context)
        self._put([item])
        return await item.future

    async def submit_jobs(self, images: list[bytes | np.ndarray], contexts: list[Any]) -> list[JobResult | Exception]:
        """:meth:`submit_job` for several images of one request, queued together (so they share batches).

        Args:
            images: encoded files or decoded images, as :meth:`submit_job` takes them.
            contexts: one per image, handed to ``finish``.

        Returns:
            Per image, in order, its :class:`JobResult` or the exception that failed it (its decoding, its
            batch's model call, or ``finish``): the caller decides what one failure means for the request.

        Raises:
            ValueError: no images, a length mismatch, or bytes without a ``decode``.
            BatcherOverloaded, BatcherClosed: as :meth:`submit` (nothing is queued then).
        """
        if not images or len(images) != len(contexts):
            raise ValueError(f"submit_jobs needs one context per image and at least one image, got {len(images)} "
                             f"image(s) and {len(contexts)} context(s)")
        items = []
        for image, context in zip(images, contexts):
            if isinstance(image, (bytes, bytearray, memoryview)):
                if self._decode is None:
                    raise ValueError("this batcher has no decode function; submit decoded images")
                items.append(_Item(None, self._new_future(), data=bytes(image), job=True, context=context))
            else:
                items.append(_Item(image, self._new_future(), job=True, context=context))
        self._put(items)
        futures = [item.future for item in items]
        try:
            return list(await asyncio.gather(*futures, return_exceptions=True))
        except BaseException:  # cancelled (the client went away): the worker skips what is not started
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            raise

    def _new_future(self) -> asyncio.Future[Any]:
        if not self.running or self._wakeup is None:
            raise BatcherClosed("the micro-batcher is not running")
        return asyncio.get_running_loop().create_future()

    def _put(self, items: list[_Item]) -> None:
        assert self._wakeup is not None  # checked by _new_future
        if len(self._queue) + len(items) > self.max_queue:
            raise BatcherOverloaded(f"{len(self._queue)} images are already waiting for the model "
                                    f"(limit {self.max_queue}); retry shortly")
        self._queue.extend(items)
        self._wakeup.set()

    def _enqueue(self, images: list[np.ndarray]) -> list[asyncio.Future[np.ndarray]]:
        items = [_Item(image, self._new_future()) for image in images]
        self._put(items)
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

    def _process(self, batch: list[_Item]) -> tuple[list[Any], int, float, float]:
        """In the model thread: decode the encoded images, run the model once, ``finish`` the jobs.

        Returns:
            Per item its answer (a descriptor, a :class:`JobResult` or an exception instance), the number
            of images given to the model (0: no call), and the call's wall and thread-CPU seconds.
        """
        outcomes: list[Any] = [None] * len(batch)
        images, rows = [], []
        for i, item in enumerate(batch):
            if item.data is not None:
                started = time.perf_counter()
                try:
                    item.image = self._decode(item.data)  # type: ignore[misc]  # submit_job checked it is set
                except Exception as exc:  # this image is bad: only its request fails
                    outcomes[i] = exc
                    continue
                finally:
                    item.decode_s = time.perf_counter() - started
            images.append(item.image)
            rows.append(i)
        if not rows:
            return outcomes, 0, 0.0, 0.0
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            out = np.asarray(self._embed(np.stack(images)))
            if out.ndim != 2 or out.shape[0] != len(rows):
                raise RuntimeError(f"the model returned shape {list(out.shape)} for a batch of {len(rows)}")
        except Exception as exc:  # the model failed: every request of this batch gets the error
            logger.warning("model call on a batch of %d failed: %r", len(rows), exc)
            for i in rows:
                outcomes[i] = exc
            return outcomes, len(rows), time.perf_counter() - started, time.thread_time() - cpu_started
        embedded_at = time.perf_counter()
        seconds, cpu_seconds = embedded_at - started, time.thread_time() - cpu_started
        jobs = [(i, r) for r, i in enumerate(rows) if batch[i].job]
        for r, i in enumerate(rows):
            if not batch[i].job:
                outcomes[i] = out[r]
        if jobs:
            results: list[Any] = [None] * len(jobs)
            if self._finish is not None:
                try:
                    results = list(self._finish(out[[r for _, r in jobs]], [batch[i].context for i, _ in jobs]))
                except Exception as exc:  # finish failed as a whole: each job gets the error
                    results = [exc] * len(jobs)
            finished_at = time.perf_counter()
            for (i, r), result in zip(jobs, results):
                outcomes[i] = result if isinstance(result, BaseException) else JobResult(
                    out[r], result, batch[i].decode_s, embedded_at, finished_at)
        return outcomes, len(rows), seconds, cpu_seconds

    async def _call_model(self, batch: list[_Item]) -> None:
        assert self._slots is not None
        loop = asyncio.get_running_loop()
        embedded, seconds, cpu_seconds = 0, 0.0, 0.0
        try:
            outcomes, embedded, seconds, cpu_seconds = await loop.run_in_executor(self._executor, self._process,
                                                                                 batch)
        except Exception as exc:  # a bug in the batch step itself: fail the batch, keep the worker
            logger.exception("micro-batch of %d failed", len(batch))
            outcomes = [exc] * len(batch)
        finally:
            self._slots.release()
        if embedded:
            self.calls += 1
            self.items += embedded
            self.batch_sizes.append(embedded)
            if self._observer is not None:
                try:
                    self._observer(embedded, seconds, cpu_seconds)
                except Exception:  # metrics must never take the worker down
                    logger.exception("batch observer failed")
        for item, outcome in zip(batch, outcomes):
            if item.future.done():  # cancelled meanwhile: the client went away
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
