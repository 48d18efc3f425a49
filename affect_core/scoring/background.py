"""The scoring pipeline's two helper threads: one reads the next videos ahead of the model, the other writes the
finished ones behind it. Both work through bounded queues (memory stays bounded whatever the corpus), run at a lower
priority than the model's thread (the critical path), and hand their errors to the caller.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from affect_core.data.records import Video
from affect_core.runtime import lower_thread_priority


class ReadAhead:
    """Iterates ``items`` on a background thread ahead of the consumer, so that reading overlaps the consumer's work
    (at a lower priority than the consumer's: :func:`affect_core.runtime.lower_thread_priority`); the reader waits
    while ``max_frames`` frames or more are ready. Use as a context manager; an error raised by ``items`` is raised in
    the consumer, and leaving the block early stops the reader."""

    def __init__(self, items: Iterable[Video], *, max_frames: int) -> None:
        self._items = items
        self._max_frames = max_frames
        self._ready: deque[Video] = deque()
        self._frames = 0
        self._finished = False
        self._stopped = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="affect-score-read", daemon=True)

    def __enter__(self) -> Iterator[Video]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc_info: object) -> None:
        with self._changed:
            self._stopped = True
            self._ready.clear()
            self._changed.notify_all()
        self._thread.join()

    def _read(self) -> None:
        lower_thread_priority()  # the consumer (the model) gets the cores first
        iterator = iter(self._items)
        try:
            for item in iterator:
                with self._changed:
                    while self._ready and self._frames >= self._max_frames and not self._stopped:
                        self._changed.wait()
                    if self._stopped:
                        return
                    self._ready.append(item)
                    self._frames += item.num_frames
                    self._changed.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            with self._changed:
                self._error = exc
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def _consume(self) -> Iterator[Video]:
        while True:
            with self._changed:
                while not self._ready and not self._finished:
                    self._changed.wait()
                if not self._ready:
                    if self._error is not None:
                        raise self._error
                    return
                item = self._ready.popleft()
                self._frames -= item.num_frames
                self._changed.notify_all()
            yield item


class BackgroundWriter:
    """Runs write tasks one after another on a background thread (at a lower priority than the caller's), at most
    ``max_pending`` of them queued: submit() waits for the oldest beyond that (bounded memory) and raises its error.
    Leaving the block waits for every task and raises the first error; leaving it on an error cancels the tasks not
    yet started."""

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max(1, max_pending)
        self._pending: deque[Future[None]] = deque()
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="affect-score-write", initializer=lower_thread_priority
        )

    def __enter__(self) -> BackgroundWriter:
        return self

    def submit(self, task: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(task, *args))
        while len(self._pending) > self._max_pending:
            self._pending.popleft().result()

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            while exc_type is None and self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
