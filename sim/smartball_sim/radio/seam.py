"""The seam between a simulated device and what carries its one link: the link and
link-layer protocols, how a link ends, and what the simulated radio refuses, as data (each
front, the in-process bleak backend, the BlueZ emulator, Bumble, turns it into its own
stack's error)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..faults import FaultPlan


class ConnectRefusal(enum.Enum):
    """Why a connect attempt failed, as data: each front (the in-process bleak backend,
    the BlueZ emulator, Bumble) turns it into its own stack's error."""

    #: The controller gave up before a link existed (BlueZ: ``br-connection-canceled``).
    CANCELED = "canceled"
    #: A link came up and was lost at once: the device had just stopped advertising
    #: (a reset, another host). BlueZ: ``le-connection-abort-by-local``.
    ABORTED_AT_ONCE = "aborted-at-once"


class SimLinkError(Exception):
    """Base of what the simulated radio refuses; the message says what happened."""


class ConnectRefused(SimLinkError):
    def __init__(self, refusal: ConnectRefusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


class LinkClosed(SimLinkError):
    """A write on a link that is gone."""


class WriteTooLong(SimLinkError):
    """A write longer than the link's MTU - 3 (a real controller refuses it)."""


class LinkEnd(enum.IntEnum):
    """How a link ended, as the HCI reason code a host reads in its Disconnection Complete
    event (Core 5.3, Vol 1, Part F, 2)."""

    #: The link died: supervision timeout (a drop, a crash or power glitch, radio loss).
    CONNECTION_TIMEOUT = 0x08
    #: The peer hung up on purpose (LL_TERMINATE_IND): the device before its reset into a
    #: new image, or a host that closes the link.
    REMOTE_USER_TERMINATED = 0x13


class LinkPeer(Protocol):
    """What the host side of a link (the bleak backend) must accept from the device."""

    def sim_notification(self, data: bytes) -> None: ...
    def sim_link_lost(self, reason: str) -> None: ...


class Link(Protocol):
    """One connection, whatever carries it."""

    number: int
    alive: bool
    #: Why this connection's GATT database lacks NUS: None (it has it), "race" or
    #: "stale-cache" (BlueZ only; see SimLink).
    nus_hidden: str | None

    @property
    def mtu(self) -> int: ...
    @property
    def max_write(self) -> int: ...


class LinkLayer(Protocol):
    """What carries a SimDevice's link. The device decides (firmware, faults, advertising,
    resets); a link layer moves the bytes and tells the host side what happened."""

    #: How a host sees a connect-fail on this link (for the fault log).
    connect_fail_detail: str

    def send(self, link: Link, frame: bytes) -> None:
        """Carry one whole device frame to the host, cut at the link's MTU - 3."""

    def when_sent(self, link: Link, callback: Callable[[], None]) -> None:
        """``callback`` once every notification queued so far has gone on air, or the
        link has ended (the firmware waits for this before it resets after DONE)."""

    def discard(self, link: Link) -> None:
        """The link is gone: whatever it still had queued dies with it."""

    def link_ended(self, link: Link, reason: str, end: LinkEnd) -> None:
        """The device's side ended the link (a fault, a reset, a pause): tell the host."""

    def advertising_changed(self) -> None:
        """``SimDevice.advertising`` may have changed (a link, a reset, a pause)."""

    def check_faults(self, plan: FaultPlan) -> None:
        """Raise FaultSpecError for a fault this link layer cannot express."""
