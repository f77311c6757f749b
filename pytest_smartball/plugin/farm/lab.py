"""The SmartBall on labgrid: a resource, a driver, and the coordinator calls a run makes.

Imported only when labgrid is installed (``pip install 'pytest-smartball[labgrid]'``) and a
run asks for it; importing it registers the classes with labgrid's target factory, so an
environment or an exporter configuration can name them:

* :class:`SmartBallDevice` (resource): a ball as its bench host sees it: its Bluetooth
  ``address``, ``advertised_name`` and the ``adapter`` of the host it is near. An exporter
  exports it as it is (it needs nothing opened on the host), and a place matches it with
  the ball's power port (any labgrid power resource: ``NetworkPowerPort``, ``USBPowerPort``,
  ``PDUDaemonPort``, ...).
* :class:`SmartBallDriver` (driver): binds it, for tests and the plugin to read. A BLE link
  cannot be forwarded by an exporter: the run that talks to a ball runs on the host whose
  adapter reaches it; labgrid gives the reservation, the ball's description and its power.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import attr
from labgrid.driver.common import Driver
from labgrid.exceptions import NoDriverFoundError, NoResourceFoundError
from labgrid.factory import target_factory
from labgrid.protocol import PowerProtocol
from labgrid.remote.client import ClientSession, ensure_event_loop
from labgrid.remote.generated import labgrid_coordinator_pb2
from labgrid.resource.common import Resource
from labgrid.resource.remote import RemotePlace, RemotePlaceManager
from labgrid.step import step
from labgrid.util.proxy import proxymanager

from ...contract import codec as p

#: The bound on each call to the coordinator (connect, read, acquire, release).
CALL_TIMEOUT_S = 30.0

_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


def _check_address(instance: Any, attribute: Any, value: str) -> None:
    if not _ADDRESS.match(value):
        raise ValueError(
            f"SmartBallDevice address {value!r} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)"
        )


@target_factory.reg_resource
@attr.s(eq=False)
class SmartBallDevice(Resource):
    """A SmartBall near a bench host: ``address``, ``advertised_name``, ``adapter``."""

    address = attr.ib(validator=[attr.validators.instance_of(str), _check_address])
    advertised_name = attr.ib(default=p.DEFAULT_NAME, validator=attr.validators.instance_of(str))
    adapter = attr.ib(default="hci0", validator=attr.validators.instance_of(str))


@target_factory.reg_driver
@attr.s(eq=False)
class SmartBallDriver(Driver):
    """The ball of a target: what the SmartBall plugin connects to."""

    bindings = {"device": SmartBallDevice}

    @property
    def address(self) -> str:
        return str(self.device.address).upper()

    @property
    def ball_name(self) -> str:
        return str(self.device.advertised_name)

    @property
    def adapter(self) -> str:
        return str(self.device.adapter)

    @Driver.check_active
    @step()
    def describe(self) -> str:
        return f"{self.ball_name} {self.address} near {self.adapter}"


@dataclass(slots=True)
class Ball:
    """One labgrid target of the run, bound: its place, its ball, its power."""

    target_name: str
    place: str | None  # None: a local target (no coordinator)
    address: str
    name: str
    adapter: str
    power: Any = None  # a PowerProtocol driver, None when the place has no power

    def cycle_power(self) -> None:
        assert self.power is not None
        self.power.cycle()


def remote_place_name(env: Any, target_name: str) -> str | None:
    """The RemotePlace a target of the environment file names (None: a local target)."""
    resources, _ = target_factory.normalize_config(env.config.get_targets()[target_name])
    places = list(resources.get("RemotePlace", {}))
    return str(places[0]) if places else None


def bind(env: Any, target_name: str, *, with_power: bool) -> Ball:
    """Build the environment's target (for a remote place: its resources from the
    coordinator; the place must be acquired by this host and user) and bind its drivers."""
    target = env.get_target(target_name)
    driver = target.get_driver(SmartBallDriver)
    power = None
    if with_power:
        try:
            power = target.get_driver(PowerProtocol)
        except NoDriverFoundError:  # the place has no power port
            power = None
    place = None
    try:
        place = str(target.get_resource(RemotePlace, wait_avail=False).name)
    except NoResourceFoundError:  # a local target
        place = None
    return Ball(target_name, place, driver.address, driver.ball_name, driver.adapter, power)


class Coordinator:
    """The calls a run makes to labgrid's coordinator: read, acquire, release places."""

    def __init__(self, address: str, env: Any = None) -> None:
        self.address = address
        # One client session per process: gRPC shares one connection between channels to
        # the same coordinator, and the coordinator refuses a second stream on it. So this
        # is the session labgrid's RemotePlaceManager then uses for the places' targets.
        manager = RemotePlaceManager.get()
        if manager.session is None:
            loop = ensure_event_loop()
            grpc_address = proxymanager.get_grpc_address(address, default_port=20408)
            session = ClientSession(grpc_address, loop, env=env)
            loop.run_until_complete(asyncio.wait_for(session.start(), CALL_TIMEOUT_S))
            manager.session, manager.loop, manager.env, manager.url = session, loop, env, address
        self.session: ClientSession = manager.session

    @property
    def me(self) -> str:
        """labgrid's name of this run's holder: ``host/user``."""
        return f"{self.session.gethostname()}/{self.session.getuser()}"

    def _run(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """``await call()`` on labgrid's loop, bounded: an unanswered call raises
        TimeoutError. The awaitable is made on the running loop: gRPC's calls look up the
        current loop when they are created, and pytest-asyncio leaves none between tests."""

        async def bounded() -> Any:
            return await asyncio.wait_for(call(), CALL_TIMEOUT_S)

        return self.session.loop.run_until_complete(bounded())

    def holder(self, place: str) -> tuple[bool, str | None]:
        """(exists, held_by) as the coordinator says now."""
        self._run(self.session.sync_with_coordinator)
        found = self.session.places.get(place)
        if found is None:
            return False, None
        return True, found.acquired or None

    def acquire(self, place: str) -> str | None:
        """Acquire; None when done, else the coordinator's refusal (a race lost)."""
        import grpc

        request = labgrid_coordinator_pb2.AcquirePlaceRequest(placename=place)
        try:
            self._run(lambda: self.session.stub.AcquirePlace(request))
        except grpc.aio.AioRpcError as exc:
            return str(exc.details())
        self._run(self.session.sync_with_coordinator)
        return None

    def release(self, place: str) -> None:
        request = labgrid_coordinator_pb2.ReleasePlaceRequest(placename=place)
        self._run(lambda: self.session.stub.ReleasePlace(request))

    def sleep(self, seconds: float) -> None:
        self._run(lambda: asyncio.sleep(seconds))

    def close(self) -> None:
        self._run(self.session.stop)
        self._run(self.session.close)
