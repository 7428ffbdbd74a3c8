"""MicroBatcher with a fake model: batching, the wait bound, error propagation, thread discipline."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serving.runtime.batching import BatcherClosed, BatcherOverloaded, MicroBatcher

H, W, DIM = 4, 2, 3


class FakeModel:
    """Records every call; the descriptor of an image is (its first pixel value, batch size, call number)."""

    def __init__(self, sleep: float = 0.0, fail_on: int | None = None) -> None:
        self.sleep = sleep
        self.fail_on = fail_on  # an image whose first pixel has this value poisons its whole batch
        self.sizes: list[int] = []
        self.call_times: list[float] = []
        self.threads: set[int] = set()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.sizes.append(len(images))
            self.call_times.append(time.monotonic())
            self.threads.add(threading.get_ident())
            call = len(self.sizes)
        try:
            assert images.dtype == np.uint8 and images.shape[1:] == (H, W, 3)
            time.sleep(self.sleep)
            firsts = images[:, 0, 0, 0].astype(np.float32)
            if self.fail_on is not None and (firsts == self.fail_on).any():
                raise RuntimeError("model exploded")
            return np.stack([firsts, np.full_like(firsts, len(images)), np.full_like(firsts, call)], axis=1)
        finally:
            with self._lock:
                self.active -= 1


def image(value: int) -> np.ndarray:
    return np.full((H, W, 3), value, dtype=np.uint8)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_model_calls() -> None:
    model = FakeModel(sleep=0.02)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.01)
        await batcher.start()
        try:
            out = await asyncio.gather(*(batcher.submit(image(i)) for i in range(32)))
        finally:
            await batcher.stop()
        assert batcher.calls == len(model.sizes) and batcher.items == 32
        assert list(batcher.batch_sizes) == model.sizes
        return out

    out = run(main())
    # Every request got its own row back, not a neighbour's.
    assert [int(row[0]) for row in out] == list(range(32))
    assert sum(model.sizes) == 32
    assert len(model.sizes) < 32 and max(model.sizes) <= 8
    assert len(model.sizes) <= 8  # 32 images, batches of up to 8 while the model sleeps: far fewer calls


def test_batch_size_one_disables_batching() -> None:
    model = FakeModel()

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.5)
        await batcher.start()
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit(image(i)) for i in range(6)))
        # max_wait never applies to a batch that is already full (size 1): no 0.5 s waits.
        assert time.monotonic() - started < 0.5 * 6 / 2
        await batcher.stop()

    run(main())
    assert model.sizes == [1] * 6


def test_lone_request_waits_at_most_max_wait() -> None:
    model = FakeModel()
    max_wait = 0.15

    async def main() -> float:
        batcher = MicroBatcher(model, max_batch_size=16, max_wait_s=max_wait)
        await batcher.start()
        submitted = time.monotonic()
        await batcher.submit(image(1))
        await batcher.stop()
        return submitted

    submitted = run(main())
    waited = model.call_times[0] - submitted
    # It waited for company (the whole window) but not much longer (slack for a loaded 2-core box).
    assert max_wait - 0.01 <= waited < max_wait + 0.25
    assert model.sizes == [1]


def test_late_joiner_shares_the_batch_and_a_full_batch_does_not_wait() -> None:
    model = FakeModel()

    async def main() -> float:
        batcher = MicroBatcher(model, max_batch_size=3, max_wait_s=2.0)
        await batcher.start()
        started = time.monotonic()
        first = asyncio.ensure_future(batcher.submit(image(1)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(image(v))) for v in (2, 3)]
        await asyncio.gather(first, *rest)
        elapsed = time.monotonic() - started
        await batcher.stop()
        return elapsed

    elapsed = run(main())
    assert model.sizes == [3]  # the late two joined the first image's batch
    assert elapsed < 1.0  # and the batch left as soon as it was full, not after the 2 s window


def test_model_error_reaches_every_request_of_the_batch_and_the_worker_survives() -> None:
    model = FakeModel(fail_on=99)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.05)
        await batcher.start()
        results = await asyncio.gather(*(batcher.submit(image(v)) for v in (1, 99, 3)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
        assert batcher.running
        ok = await asyncio.gather(*(batcher.submit(image(v)) for v in (5, 6)))
        assert [int(r[0]) for r in ok] == [5, 6]
        await batcher.stop()

    run(main())
    assert model.sizes == [3, 2]


def test_submit_many_keeps_order_and_spans_batches() -> None:
    model = FakeModel()

    async def main() -> np.ndarray:
        batcher = MicroBatcher(model, max_batch_size=4, max_wait_s=0.01)
        await batcher.start()
        out = await batcher.submit_many([image(v) for v in range(10)])
        await batcher.stop()
        return out

    out = run(main())
    assert out.shape == (10, DIM)
    assert out[:, 0].tolist() == list(range(10))
    assert model.sizes == [4, 4, 2]


def test_not_thread_safe_model_is_never_called_concurrently() -> None:
    for thread_safe, expect_overlap in ((False, False), (True, True)):
        model = FakeModel(sleep=0.05)

        async def main() -> None:
            batcher = MicroBatcher(model, max_batch_size=2, max_wait_s=0.0, thread_safe=thread_safe, concurrency=4)
            await batcher.start()
            await asyncio.gather(*(batcher.submit(image(i)) for i in range(16)))
            await batcher.stop()

        run(main())
        assert sum(model.sizes) == 16
        if expect_overlap:
            assert model.max_active > 1
        else:
            assert model.max_active == 1 and len(model.threads) == 1


def test_queue_bound_and_stop() -> None:
    model = FakeModel(sleep=0.2)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0, max_queue=2)
        with pytest.raises(BatcherClosed):
            await batcher.submit(image(0))  # not started
        await batcher.start()
        first = asyncio.ensure_future(batcher.submit(image(1)))
        await asyncio.sleep(0.05)  # the model is now busy with image 1
        queued = [asyncio.ensure_future(batcher.submit(image(v))) for v in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(BatcherOverloaded):
            await batcher.submit(image(4))
        await batcher.stop()
        assert int((await first)[0]) == 1  # in flight: finished, not dropped
        for fut in queued:  # still queued at stop: told the server is shutting down
            with pytest.raises(BatcherClosed):
                await fut
        assert not batcher.running

    run(main())


def test_cancelled_request_is_not_embedded() -> None:
    model = FakeModel(sleep=0.1)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0)
        await batcher.start()
        busy = asyncio.ensure_future(batcher.submit(image(1)))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(batcher.submit(image(2)))
        await asyncio.sleep(0)
        gone.cancel()  # the client disconnected while waiting
        kept = await batcher.submit(image(3))
        await busy
        assert int(kept[0]) == 3
        await batcher.stop()

    run(main())
    assert model.sizes == [1, 1]


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        MicroBatcher(FakeModel(), max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_s"):
        MicroBatcher(FakeModel(), max_wait_s=-1)


# -- jobs: decode, embed and finish in the model thread, one hand-off per batch -------------------------


def _decode(data: bytes) -> np.ndarray:
    if data == b"bad":
        raise ValueError("not an image")
    return image(data[0])


def test_jobs_decode_embed_and_finish_in_one_model_thread_call_per_batch() -> None:
    model = FakeModel(sleep=0.02)
    finishes: list[tuple[list[float], list[object], int]] = []

    def finish(vectors: np.ndarray, contexts: list[object]) -> list[object]:
        finishes.append((vectors[:, 0].tolist(), list(contexts), threading.get_ident()))
        return [f"{ctx}:{int(v[0])}" for v, ctx in zip(vectors, contexts)]

    async def main() -> list[object]:
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.01, decode=_decode, finish=finish)
        await batcher.start()
        try:
            jobs = [batcher.submit_job(bytes([v]), context=f"q{v}") for v in range(1, 6)]
            plain = batcher.submit(image(7))  # a plain submit shares the batch; finish never sees it
            done = await asyncio.gather(*jobs, plain, batcher.submit_job(image(9), context="decoded"))
        finally:
            await batcher.stop()
        return done

    done = run(main())
    *jobs, plain, decoded = done
    assert [j.result for j in jobs] == [f"q{v}:{v}" for v in range(1, 6)]
    assert [int(j.vector[0]) for j in jobs] == list(range(1, 6))
    assert all(j.decode_s >= 0 and j.embedded_at <= j.finished_at for j in jobs)
    assert int(plain[0]) == 7 and decoded.result == "decoded:9" and decoded.decode_s == 0.0
    assert sum(model.sizes) == 7 and len(finishes) <= len(model.sizes)  # at most once per model call
    assert sorted(c for _, contexts, _ in finishes for c in contexts) == sorted([f"q{v}" for v in range(1, 6)]
                                                                               + ["decoded"])
    assert {t for _, _, t in finishes} <= model.threads  # in the model thread, not on the loop


def test_a_bad_image_fails_only_its_own_job_and_finish_errors_stay_per_job() -> None:
    model = FakeModel(sleep=0.01)

    def finish(vectors: np.ndarray, contexts: list[object]) -> list[object]:
        return [RuntimeError("search failed") if ctx == "boom" else ctx for ctx in contexts]

    async def main() -> list[object]:
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.02, decode=_decode, finish=finish)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.submit_job(bytes([1]), "a"), batcher.submit_job(b"bad", "b"),
                                        batcher.submit_job(bytes([3]), "boom"), batcher.submit_job(bytes([4]), "d"),
                                        return_exceptions=True)
        finally:
            await batcher.stop()

    a, bad, boom, d = run(main())
    assert a.result == "a" and d.result == "d"
    assert isinstance(bad, ValueError) and "not an image" in str(bad)
    assert isinstance(boom, RuntimeError) and "search failed" in str(boom)
    assert sum(model.sizes) == 3  # the bad image never reached the model


def test_all_images_bad_means_no_model_call_and_bytes_need_a_decoder() -> None:
    model = FakeModel()

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=4)
        await batcher.start()
        try:
            with pytest.raises(ValueError, match="no decode function"):
                await batcher.submit_job(b"\x01")
        finally:
            await batcher.stop()
        batcher = MicroBatcher(model, max_batch_size=4, decode=_decode)
        await batcher.start()
        try:
            with pytest.raises(ValueError, match="not an image"):
                await batcher.submit_job(b"bad")
            assert batcher.calls == 0
        finally:
            await batcher.stop()

    run(main())
    assert model.sizes == []


def test_submit_jobs_queues_a_requests_images_together_and_answers_each() -> None:
    """One request's crops share one batch even with no wait (max_wait 0): they are queued in one step."""
    model = FakeModel(sleep=0.01)
    seen: list[list[object]] = []

    def finish(vectors: np.ndarray, contexts: list[object]) -> list[object]:
        seen.append(list(contexts))
        return [f"{ctx}:{int(v[0])}" for v, ctx in zip(vectors, contexts)]

    async def main() -> list[object]:
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.0, decode=_decode, finish=finish)
        await batcher.start()
        try:
            with pytest.raises(ValueError, match="one context per image"):
                await batcher.submit_jobs([bytes([1])], [])
            return await batcher.submit_jobs([bytes([1]), b"bad", image(7), bytes([3])], ["a", "b", "c", "d"])
        finally:
            await batcher.stop()

    a, bad, c, d = run(main())
    assert (a.result, c.result, d.result) == ("a:1", "c:7", "d:3")  # in order, decoded or given decoded
    assert isinstance(bad, ValueError) and "not an image" in str(bad)  # only its own entry fails
    assert model.sizes == [3] and seen == [["a", "c", "d"]]  # one model call, one finish
