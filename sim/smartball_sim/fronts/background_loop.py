"""An asyncio loop of its own in a daemon thread, for simulated devices that must keep running
while the caller's code blocks (a pytest session, the CLI, bleak's own loop in another thread):
the emulated bluetoothd (:mod:`..bluez.launcher`) and the virtual controller
(:mod:`..machines.vhci`)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

#: How long the teardown on the loop may take before the loop closes anyway.
STOP_TIMEOUT_S = 5.0


class BackgroundLoop:
    """Owns ``self.loop`` while started: :meth:`run` and :meth:`call` reach it from any thread.

    Subclasses give what to do on the loop when it starts (``_on_loop_start``: its failure is
    raised by :meth:`_start_loop`) and before it closes (``_on_loop_stop``: also after a failed
    start; its errors are suppressed, as a stop must always finish)."""

    #: Named in the assertion when :meth:`run` is called before the start or after the stop.
    what = "the background loop"

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _on_loop_start(self) -> None:
        """Set up what lives on the loop."""

    async def _on_loop_stop(self) -> None:
        """Tear down what lives on the loop."""

    def _start_loop(self, thread_name: str, timeout: float) -> None:
        """Start the thread and wait, at most ``timeout`` seconds, for ``_on_loop_start``."""
        ready: Future[None] = Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=thread_name, daemon=True
        )
        self._thread.start()
        ready.result(timeout=timeout)

    def _serve(self, ready: Future[None]) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._on_loop_start())
        except BaseException as exc:
            ready.set_exception(exc)
            self._tear_down(loop)
            loop.close()
            return
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            self._tear_down(loop)
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _tear_down(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait_for(self._on_loop_stop(), STOP_TIMEOUT_S))

    def _stop_loop(self, timeout: float) -> None:
        """Idempotent: stop the loop (``_on_loop_stop`` runs on it) and join the thread."""
        loop, thread = self.loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=timeout)
        self._thread = None
        self.loop = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the loop (where the devices live) and return its result."""
        assert self.loop is not None, f"{self.what} is not running"
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the loop, e.g. ``x.call(device.set_faults, "drop@erase:50%")``
        (a device's faults and timers belong to that loop)."""

        async def call() -> T:
            return fn(*args)

        return self.run(call())
