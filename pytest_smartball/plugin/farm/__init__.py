"""``--device=real`` on a labgrid board farm: the balls and their power from labgrid places.

When labgrid's pytest plugin is active with an environment (``--lg-env`` or ``LG_ENV``;
``--lg-coordinator`` for remote places) and the run is ``--device=real``, the plugin takes
its devices from the environment's targets instead of ``--ble-address``:

* target N of the environment file (in its order) is the ball of pytest-xdist worker
  ``gwN`` (without xdist: the first target). A target names a ``RemotePlace`` on the
  coordinator, or holds a ``SmartBallDevice`` itself (a bench without a coordinator);
* the run (the xdist controller, or the one process) acquires the places it uses before
  preflight, one per worker: a free place at once, a place someone else holds is waited for
  (``--smartball-place-wait``, 60 s), then refused with one sentence naming the place and its
  holder; it releases them when the run ends, also after a failure or Ctrl-C;
* each ball's ``SmartBallDevice`` gives preflight its address (and the adapter), and the
  ``pytest_smartball_power_cycle`` hook is served by the target's labgrid power driver (any
  ``PowerProtocol``: ``NetworkPowerDriver``, ``USBPowerDriver``, ``ExternalPowerDriver``...),
  so the reset-mid-update tests run with no lab code.

Nothing here imports labgrid until a run asks for it (:mod:`.lab` does).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from ..command_line import DEVICE_DEST
from .places import DEFAULT_PLACE_WAIT_S, Refuse, Take, Wait, next_step

if TYPE_CHECKING:
    from ...targets import Target
    from .lab import Ball, Coordinator

#: Acquires lost to another run between our look and our acquire before the run gives up
#: (each is followed by the bounded wait; more means the coordinator disagrees with us).
MAX_RACES = 3
#: workerinput key: the environment target (and place) of each worker.
WORKER_KEY = "smartball_labgrid"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("smartball-labgrid", "SmartBall on a labgrid board farm")
    group.addoption(
        "--smartball-place-wait",
        type=float,
        default=DEFAULT_PLACE_WAIT_S,
        metavar="SECONDS",
        help="with labgrid (--lg-env): how long to wait for a place another run holds before "
        "refusing it (default %(default)s)",
    )


def requested(config: pytest.Config) -> bool:
    """labgrid's pytest plugin is active with an environment, on a --device=real run."""
    if config.getoption(DEVICE_DEST) != "real" or not config.pluginmanager.has_plugin("labgrid"):
        return False
    return bool(getattr(config.option, "lg_env", None) or os.environ.get("LG_ENV"))


def start(config: pytest.Config) -> None:
    """From the plugin's pytest_configure: take the run's devices from labgrid."""
    if config.getoption("--ble-address") and not hasattr(config, "workerinput"):
        raise pytest.UsageError(
            "--ble-address and a labgrid environment (--lg-env) both name the devices: "
            "give one of them"
        )
    config.pluginmanager.register(LabgridFarm(config), "smartball-labgrid")


class LabgridFarm:
    """The run's labgrid places and balls (a plugin object, registered by :func:`start`)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.balls: list[Ball] = []
        self.acquired: list[str] = []
        self.coordinator: Coordinator | None = None

    # --- session start --------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Before the plugin's own session start, so preflight checks the places' balls."""
        from . import lab  # labgrid, now that the run asks for it

        config = self.config
        env = _labgrid_env(config)
        workerinput = getattr(config, "workerinput", None)
        if workerinput is not None:
            # The controller acquired the places; this worker binds its own target.
            mine = workerinput.get(WORKER_KEY)
            if mine is None:
                raise pytest.UsageError(f"worker {workerinput['workerid']} got no labgrid place")
            self.balls = [_bind(env, mine, with_power=True)]
            return
        targets = list(env.config.get_targets())
        wanted = max(1, _worker_count(config))
        if len(targets) < wanted:
            raise pytest.UsageError(
                f"labgrid: {wanted} pytest-xdist workers need {wanted} targets (one place per "
                f"ball), and {env.config_file} has {len(targets)}: {', '.join(targets) or 'none'}"
            )
        targets = targets[:wanted]
        config.add_cleanup(self.release)
        places = [p for p in (lab.remote_place_name(env, t) for t in targets) if p]
        if places:
            address = env.config.get_option(
                "coordinator_address", os.environ.get("LG_COORDINATOR", "127.0.0.1:20408")
            )
            try:
                self.coordinator = lab.Coordinator(address, env)
            except Exception as exc:  # grpc errors, TimeoutError, labgrid's ServerError
                raise pytest.UsageError(
                    f"labgrid: cannot reach the coordinator at {address} ({exc}); start it or "
                    "pass the right --lg-coordinator"
                ) from None
            wait_s = float(config.getoption("--smartball-place-wait"))
            if wait_s < 0:
                raise pytest.UsageError("--smartball-place-wait: 0 seconds or more")
            for place in places:
                try:
                    self._acquire(place, wait_s)
                except pytest.UsageError:
                    raise
                except Exception as exc:  # a coordinator that stops answering midway
                    raise pytest.UsageError(
                        f"labgrid: the coordinator at {address} failed while this run took "
                        f"place {place} ({type(exc).__name__}: {exc}); the places it took are "
                        "released"
                    ) from None
        controller = config.pluginmanager.has_plugin("dsession")
        self.balls = [_bind(env, t, with_power=not controller) for t in targets]
        adapters = sorted({ball.adapter for ball in self.balls})
        if len(adapters) > 1:
            raise pytest.UsageError(
                f"labgrid: the places' balls are near different adapters ({', '.join(adapters)}); "
                "one run drives one adapter: run one pytest per adapter (docs/lab.md)"
            )
        # What preflight, the report and every fixture read: the places' balls.
        config.option.ble_address = ",".join(ball.address for ball in self.balls)
        config.option.ble_adapter = adapters[0]

    def _acquire(self, place: str, wait_s: float) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        started = time.monotonic()
        races = 0
        # Bounded: next_step refuses once wait_s has passed, and races by MAX_RACES.
        while True:
            exists, held_by = coordinator.holder(place)
            step = next_step(
                place,
                exists=exists,
                held_by=held_by,
                me=coordinator.me,
                coordinator=coordinator.address,
                waited_s=time.monotonic() - started,
                wait_s=wait_s,
            )
            if isinstance(step, Refuse):
                raise pytest.UsageError(f"--device=real: {step.sentence}")
            if isinstance(step, Wait):
                coordinator.sleep(step.seconds)
                continue
            assert isinstance(step, Take)
            refused = coordinator.acquire(place)
            if refused is None:
                self.acquired.append(place)
                return
            races += 1
            if coordinator.holder(place)[1] is None or races > MAX_RACES:
                raise pytest.UsageError(
                    f"--device=real: labgrid's coordinator refused place {place}: {refused}"
                )
            # Another run took it between our look and our acquire: wait for it as above.

    def release(self) -> None:
        """Release what this run acquired (pytest's cleanup: also after failures)."""
        coordinator, self.coordinator = self.coordinator, None
        if coordinator is None:
            return
        for place in self.acquired:
            try:
                coordinator.release(place)
            except Exception as exc:  # the run is ending: say so, and release the others
                sys.stderr.write(
                    f"smartball labgrid: could not release place {place} ({exc!r}); release "
                    f"it by hand: labgrid-client -p {place} release\n"
                )
        self.acquired = []
        with contextlib.suppress(Exception):
            coordinator.close()

    # --- pytest-xdist: a place per worker ------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        worker = str(node.workerinput["workerid"])
        index = int(worker[2:]) if worker[2:].isdigit() else 0
        ball = self.balls[index % len(self.balls)]
        node.workerinput[WORKER_KEY] = ball.target_name

    # --- the power of the ball under test ----------------------------------------------

    def pytest_smartball_power_cycle(self, config: pytest.Config, device: Target) -> bool | None:
        for ball in self.balls:
            if device.address and ball.address == device.address.upper():
                if ball.power is None:
                    pytest.skip(
                        f"labgrid target {ball.target_name} has no power driver: add one "
                        "(NetworkPowerDriver, USBPowerDriver, ...) to cut its ball's power"
                    )
                ball.cycle_power()
                return True
        return None

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Which place each test ran on, in the JUnit XML (``labgrid.place``), also under
        xdist: a failure names its ball's place."""
        if hasattr(self.config, "workerinput") or not self.config.pluginmanager.has_plugin(
            "dsession"
        ):
            for ball in self.balls[:1]:
                item.user_properties.append(("labgrid.place", ball.place or ball.target_name))
                item.user_properties.append(("labgrid.ball", ball.address))

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        lines = []
        for index, ball in enumerate(self.balls):
            where = f"place {ball.place}" if ball.place else f"target {ball.target_name}"
            power = type(ball.power).__name__ if ball.power is not None else "power by worker"
            worker = f" -> gw{index}" if self.config.pluginmanager.has_plugin("dsession") else ""
            lines.append(
                f"smartball labgrid: {where}: {ball.name} {ball.address} ({power}){worker}"
            )
        return lines


def _bind(env: Any, target_name: str, *, with_power: bool) -> Ball:
    """The target's ball; labgrid's errors (a place without a SmartBallDevice, a resource
    that is not available, a bad configuration) become one sentence."""
    from . import lab

    try:
        return lab.bind(env, target_name, with_power=with_power)
    except Exception as exc:
        raise pytest.UsageError(
            f"labgrid target {target_name} of {env.config_file}: {type(exc).__name__}: {exc}; "
            "its place needs a SmartBallDevice resource (docs/lab.md)"
        ) from None


def _labgrid_env(config: pytest.Config) -> Any:
    from labgrid.pytestplugin.hooks import LABGRID_ENV_KEY

    env = config.stash.get(LABGRID_ENV_KEY, None)
    if env is None:
        raise pytest.UsageError("labgrid: no environment (--lg-env FILE or LG_ENV)")
    return env


def _worker_count(config: pytest.Config) -> int:
    from ..session import _worker_count as count

    return count(config)
