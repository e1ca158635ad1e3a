"""An ordered map over a thread pool that stays a bounded number of items ahead of its consumer.

Evaluation reads and preprocesses the next videos (PyAV, decord and PIL release the GIL) while the model answers the
current batch, so the accelerator does not wait for the decoder; the look-ahead bounds the frames held in memory.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def prefetched(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int) -> Iterator[R]:
    """`map(fn, items)` in order, computed by `workers` threads at most `ahead` items in advance (workers=0: inline,
    in this thread). An exception raised by `fn` is raised here, when its item's turn comes."""
    if workers <= 0:
        yield from map(fn, items)
        return
    source = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="tlv-read") as pool:
        pending: deque[Future] = deque()

        def top_up() -> None:
            while len(pending) < max(ahead, 1):
                try:
                    item = next(source)
                except StopIteration:
                    return
                pending.append(pool.submit(fn, item))

        top_up()
        try:
            while pending:
                result = pending.popleft().result()
                top_up()
                yield result
        finally:
            for future in pending:
                future.cancel()
