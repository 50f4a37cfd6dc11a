"""Small helpers shared by the test modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``condition`` holds within ``timeout`` seconds (polled every 10 ms)."""
    return bool(poll(condition, bool, timeout, every=0.01))


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0, every: float = 0.05) -> T:
    """``fetch()`` every ``every`` seconds until ``done`` holds of what it returns or ``timeout`` seconds have
    passed; the last value either way (so that the assertion that follows shows what there was)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)
