"""Waiting for a condition in tests, never for a fixed time.

A test that sleeps and then asserts passes on an idle machine and fails on a
busy one. `wait_until` polls a predicate until it holds; its deadline only
bounds a hang, so it should be generous, and the error names what never came.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: the deadline when none is given: long enough for a loaded two-core machine
DEFAULT_TIMEOUT = 60.0


def wait_until(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, what: str = "") -> T:
    """Returns the predicate's first truthy value.

    Raises:
        AssertionError: the predicate stayed falsy for `timeout` seconds; the
            message says what was awaited and the last value seen.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what or predicate!r}; last value {value!r}")
        time.sleep(delay)  # polling: the condition has no event to wait on
        delay = min(delay * 2, 0.1)


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> T:
    """`wait_until` for code on an event loop; the predicate may be a coroutine function."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what or predicate!r}; last value {value!r}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
