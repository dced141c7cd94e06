"""Requests from many clients, answered in batches by one worker thread.

One thread runs the model, so a model that registers hooks per call (``PaDTModel.vrt_io``) is never
entered twice at once. A request waits in a bounded queue; the worker takes the oldest, waits up to
``max_wait_s`` for more (never past ``max_batch_size``) and runs them as one batch. A full queue refuses
at once (:class:`QueueFull`), so memory stays bounded and a client learns to retry instead of hanging.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["Batcher", "QueueFull"]

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """The batcher's queue holds ``max_queue`` requests already."""


class Batcher(Generic[T, R]):
    """Group submitted items into calls of ``run_batch(items) -> results`` on one worker thread.

    ``run_batch`` returns one result per item, in order; an item whose result is an ``Exception`` has
    that exception raised by its future (the other items of the batch are answered as usual).

    Args:
        run_batch: answers a list of items (at most ``max_batch_size``).
        max_batch_size: most items per call.
        max_wait_s: how long the first item of a batch waits for others.
        max_queue: most items waiting; :meth:`submit` raises :class:`QueueFull` beyond it.

    Example:
        >>> batcher = Batcher(lambda xs: [x * 2 for x in xs], max_batch_size=4, max_wait_s=0.01, max_queue=8)
        >>> batcher.submit(21).result()
        42
        >>> batcher.close()
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Sequence[R | BaseException]],
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[T, Future] | None] = queue.Queue(maxsize=max_queue)
        self.batch_sizes: Counter[int] = Counter()  # size -> batches run (``GET /api/info``, the load test)
        self._thread = threading.Thread(target=self._work, name="padt-serve-batcher", daemon=True)
        self._thread.start()

    def submit(self, item: T) -> Future:
        """Queue ``item``; its future gets the result. Raises :class:`QueueFull` when the queue is full."""
        future: Future = Future()
        try:
            self._queue.put_nowait((item, future))
        except queue.Full:
            raise QueueFull(f"the server's queue is full ({self._queue.maxsize} requests waiting)") from None
        return future

    @property
    def waiting(self) -> int:
        """Items queued and not yet taken into a batch."""
        return self._queue.qsize()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after the items already queued."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> tuple[list[tuple[T, Future]], bool]:
        """The next batch (blocking for its first item) and whether :meth:`close` was called."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _work(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._collect()
            if not batch:
                continue
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batch_sizes[len(live)] += 1
            try:
                results: Sequence[Any] = self._run_batch([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
            except BaseException as err:  # the worker must outlive any batch: every waiting client gets the error
                results = [err] * len(live)
            for (_, future), result in zip(live, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
