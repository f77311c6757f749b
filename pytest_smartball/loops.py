"""Running a coroutine on a fresh event loop: a plain asyncio loop (real radios) or
looptime's virtual clock (simulated devices: a 40 s erase costs milliseconds, and the same
inputs give the same timings).

The one helper for code that is not already inside a loop: the CLI, the pytest plugin's
session start and teardown, the fuzz properties and the benchmark.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *, virtual: bool = False) -> T:
    """Run ``coro`` to the end on a new loop and close it; leftover tasks are cancelled.
    Ctrl-C cancels the coroutine (so links get closed), then raises KeyboardInterrupt."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        virtual_event_loop if virtual else None
    )
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def virtual_event_loop() -> asyncio.AbstractEventLoop:
    """A looptime loop. Between two timers looptime spins ``noop_cycles`` idle iterations
    so that chained awaits schedule their timers before time jumps; 42 by default. Every
    await in the client and the simulator is scheduled within a few iterations, so 8 is
    ample, and it makes a simulated update several times cheaper in wall time."""
    import looptime

    return looptime.new_event_loop(start=0, noop_cycles=8)
