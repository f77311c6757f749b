"""The contract monitor on a test: the first frame that breaks the contract fails it. Every
NUS link the test opens (the ``nus`` fixture's, the OTA engine's, a fuzzer's) is watched by
:class:`~pytest_smartball.monitor.ContractMonitor`, one per device, and the test fails with
that frame also when its own assertions passed (the engine's tolerance must not hide a
firmware's bugs).

The plugin turns it on only for tests that ask (the ``smartball_monitor`` fixture, which
``hil_tests/conftest.py`` makes autouse); nothing changes for anyone else's tests.
"""

from __future__ import annotations

import asyncio
import functools
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import pytest

from ..link import BleBackend, NusLink
from ..link.backend import InjectedFault
from ..link.nus import LinkObserver, watch_links
from ..monitor import DEFAULT_MARGIN_S, ContractMonitor, Violation

#: The extra margin on the obligations where time is real (emulated and real BlueZ, a
#: bench): a loaded machine delays the host's view of the radio by more than a
#: connection event or two. Virtual time (the in-process simulator, Bumble) needs none.
REAL_TIME_EXTRA_MARGIN_S = 1.0


@dataclass(slots=True)
class _Watched:
    """One device's monitor and how far its simulated fault log has been read."""

    monitor: ContractMonitor
    faults: Sequence[InjectedFault] | None
    read: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    #: The monitor's own crash, if it had one: it stops watching (never breaks the link)
    #: and the test fails naming it.
    crashed: str | None = None

    def run(self, t: float, event: Callable[[ContractMonitor], object]) -> None:
        if self.crashed is not None:
            return
        try:
            self.catch_up(t)
            event(self.monitor)
        except Exception as exc:  # a monitor bug must not break the link
            self.crashed = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"

    def catch_up(self, t: float) -> None:
        """Tell the monitor the faults injected by ``t`` before it judges what came then."""
        log = self.faults
        if log is None:
            return
        while self.read < len(log) and log[self.read].time <= t:
            record = log[self.read]
            self.monitor.observe_fault(record.time, record.fault.split(":")[0])
            self.read += 1


@dataclass(slots=True)
class _Observer:
    watched: _Watched

    def connected(self, t: float) -> None:
        self.watched.loop = asyncio.get_running_loop()
        self.watched.run(t, lambda m: m.observe_connect(t))

    def disconnected(self, t: float, by_host: bool) -> None:
        self.watched.run(t, lambda m: m.observe_disconnect(t, by_host=by_host))

    def host_bytes(self, t: float, data: bytes) -> None:
        self.watched.run(t, lambda m: m.observe_host_bytes(t, data))

    def device_bytes(self, t: float, data: bytes) -> None:
        self.watched.run(t, lambda m: m.observe_device_bytes(t, data))


@dataclass(slots=True)
class ContractWatch:
    """The monitors of one test, one per device (a backend and an address)."""

    margin_s: float = DEFAULT_MARGIN_S
    devices: dict[tuple[int, str], _Watched] = field(default_factory=dict)
    #: Keeps the backends alive, so that no id is reused while the test runs.
    backends: list[BleBackend] = field(default_factory=list)
    _stop: object = None

    def start(self) -> None:
        self._stop = watch_links(self._observe)

    def stop(self) -> None:
        stop = self._stop
        if callable(stop):
            stop()
        self._stop = None

    def _watched(self, backend: BleBackend, address: str, name: str) -> _Watched:
        key = (id(backend), address)
        watched = self.devices.get(key)
        if watched is None:
            faults = backend.link_faults(address) if backend.link_faults else None
            margin = self.margin_s + (0.0 if backend.link_faults else REAL_TIME_EXTRA_MARGIN_S)
            watched = _Watched(ContractMonitor(f"{name} ({address})", margin), faults)
            self.devices[key] = watched
            self.backends.append(backend)
        return watched

    def _observe(self, link: NusLink) -> LinkObserver:
        device = link.device
        return _Observer(self._watched(link.backend, device.address, device.name or "device"))

    def note_reset(self, backend: BleBackend, address: str | None) -> None:
        """The test reset the device (a power cut): its session is gone (section 7.7)."""
        for (backend_id, where), watched in self.devices.items():
            if backend_id == id(backend) and (address is None or where == address):
                loop = watched.loop
                t = loop.time() if loop is not None else watched.monitor.now
                watched.run(t, functools.partial(ContractMonitor.observe_reset, t=t))

    def violations(self) -> list[Violation]:
        """Every device's violations, obligations due by now judged."""
        found: list[Violation] = []
        for watched in self.devices.values():
            # Judged up to the last thing seen: after it the test may have stopped
            # listening (and a loop's clock after the test is no measure of the device).
            monitor = watched.monitor
            t = monitor.now
            watched.run(t, functools.partial(ContractMonitor.finish, t=t))
            if watched.crashed is not None:
                raise MonitorCrashed(
                    f"the contract monitor of {monitor.name} failed: {watched.crashed}"
                )
            found += monitor.violations
        return sorted(found, key=lambda v: v.t)


class MonitorCrashed(RuntimeError):
    """The monitor itself failed (a bug of the monitor, not of the device)."""


WATCH = pytest.StashKey[ContractWatch]()


def failure_text(violations: list[Violation]) -> str:
    first = violations[0]
    more = f"\n({len(violations) - 1} more violation(s) after it)" if len(violations) > 1 else ""
    return f"smartball contract monitor: the device broke protocol v1\n{first}{more}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Fail a watched test with the first violation, also when the test itself passed;
    a test that failed on its own keeps its failure, with the violation as a note."""
    watch = item.stash.get(WATCH, None)
    try:
        result = yield
    except BaseException as exc:
        if watch is not None:
            found = watch.violations()
            if found:
                exc.add_note(failure_text(found))
        raise
    if watch is not None:
        found = watch.violations()
        if found:
            pytest.fail(failure_text(found), pytrace=False)
    return result
