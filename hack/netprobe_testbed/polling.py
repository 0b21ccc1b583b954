"""Waiting for something asynchronous (controllers, agents, Prometheus) to happen."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float = 60.0,
             interval: float = 0.25) -> T:
    """Poll probe() until it returns something truthy and return that; else TimeoutError.

    The error names what was awaited and the last value seen, to tell what did happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; "
                               f"last saw {value!r}")
        time.sleep(interval)
