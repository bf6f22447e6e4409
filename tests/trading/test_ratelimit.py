"""The Redis limiter: budgets per window, spacing, waiting vs. re-scheduling, shared by
threads and processes through Redis's own clock."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from trading.exceptions import RateLimited
from trading.ratelimit import Budget, RedisRateLimiter


def limiter(**budgets: Budget) -> RedisRateLimiter:
    return RedisRateLimiter(account=f"test-{uuid.uuid4().hex}", budgets=budgets, max_inline_wait=0)


def test_budget_per_window_then_wait_reported():
    lim = limiter(place=Budget(limit=3, window=1.0, min_interval=0))
    assert [lim.try_acquire("place") for _ in range(3)] == [0, 0, 0]
    wait = lim.try_acquire("place")
    assert 0.5 < wait <= 1.0
    with pytest.raises(RateLimited) as err:
        lim.acquire("place")
    assert 0 < err.value.retry_after <= 1.0
    time.sleep(wait + 0.01)
    assert lim.try_acquire("place") == 0
    lim.reset()


def test_minimum_spacing():
    lim = limiter(modify=Budget(limit=100, window=30, min_interval=0.2))
    assert lim.try_acquire("modify") == 0
    assert 0.1 < lim.try_acquire("modify") <= 0.2
    lim.acquire("modify", max_wait=0.5)  # a short wait happens in place
    lim.reset()


def test_kinds_have_separate_budgets():
    lim = limiter(place=Budget(1, 10, 0), modify=Budget(1, 10, 0))
    assert lim.try_acquire("place") == 0
    assert lim.try_acquire("modify") == 0
    assert lim.try_acquire("place") > 0
    lim.reset()


def test_threads_together_never_exceed_the_budget():
    lim = limiter(place=Budget(limit=5, window=1.0, min_interval=0.01))
    grants: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(4):
            while True:
                wait = lim.try_acquire("place")
                if wait == 0:
                    with lock:
                        grants.append(time.monotonic())
                    break
                time.sleep(wait)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants.sort()
    assert len(grants) == 16
    # Any 6 consecutive grants span more than the window (with scheduling slack).
    assert all(b - a > 0.95 for a, b in zip(grants, grants[5:], strict=False))
    lim.reset()
