"""The reader pool: results in order, at most `ahead` items in flight, errors raised at their item's turn."""

import threading
import time

import pytest

from tlv_jax.evaluate.prefetch import prefetched


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_order(workers):
    def slow_for_small(x):
        time.sleep(0.002 * (5 - x % 5))
        return x * x

    assert list(prefetched(slow_for_small, range(12), workers, ahead=4)) == [x * x for x in range(12)]


def test_never_more_than_ahead_items_started_before_they_are_consumed():
    started, lock = [], threading.Lock()

    def record(x):
        with lock:
            started.append(x)
        return x

    it = prefetched(record, range(20), workers=2, ahead=3)
    for consumed, value in enumerate(it, 1):
        time.sleep(0.005)
        with lock:
            assert len(started) <= consumed + 3, (value, started)


def test_an_error_is_raised_when_its_item_comes_up():
    def fail_on_three(x):
        if x == 3:
            raise ValueError("bad item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for x in prefetched(fail_on_three, range(6), workers=2, ahead=2):
            got.append(x)
    assert got == [0, 1, 2]
