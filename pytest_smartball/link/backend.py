"""The seam to the Bluetooth stack (:class:`BleBackend`): which bleak backends reach the
device (``None``: the platform's own, a real radio; the simulator supplies its classes), and
the stack's specifics (BlueZ's cache, version warnings, re-reading services). What the stack
raises comes out as the link's errors or as warnings, so nothing above knows a stack.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bleak import BleakClient

from ..bluez import BluezUnavailable
from .errors import STACK_ERRORS, ForgetFailed

#: BlueZ before this reports ServicesResolved before the GATT objects exist (see bluez.py).
SERVICES_RACE_FIXED_IN = (5, 55)


class InjectedFault(Protocol):
    """One entry of a simulated device's fault log."""

    @property
    def time(self) -> float: ...

    @property
    def fault(self) -> str: ...


@dataclass(frozen=True, slots=True)
class BleBackend:
    """Which bleak backends to use. ``None`` means the platform's own (a real radio).

    ``forget`` removes a device from the stack's cache (its GATT database included) and
    ``warnings`` reports known problems of the stack; the real ones talk to BlueZ, the
    simulator supplies its own. Whatever the stack raises comes out as this module's
    errors (:class:`ForgetFailed`) or as warnings.
    """

    scanner: type | None = None
    client: type | None = None
    adapter: str = "hci0"
    forget: Callable[[str], Awaitable[bool]] | None = None
    warnings: Callable[[], Awaitable[list[str]]] | None = None
    #: Re-read a connected client's services from the stack (True when it could).
    reread: Callable[[BleakClient], Awaitable[bool]] | None = None
    #: The faults a simulated stack injected on purpose into the device at an address, in
    #: order, as it logs them (each has ``time`` and ``fault``); None on a real radio. The
    #: contract monitor reads it so that a message lost on purpose is not a device's bug.
    link_faults: Callable[[str], Sequence[InjectedFault]] | None = None
    #: The platform's own stack is BlueZ (a real radio on Linux): chosen once, when the
    #: backend is made, as bleak chooses its backend once; every BlueZ specific asks it.
    on_bluez: bool = field(init=False, compare=False)
    #: What bleak's platform backend is given when no backend class is supplied.
    _platform_kwargs: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        linux = sys.platform.startswith("linux")
        object.__setattr__(self, "on_bluez", self.is_real and linux)
        platform = {"bluez": {"adapter": self.adapter}} if linux else {}
        object.__setattr__(self, "_platform_kwargs", platform)

    @property
    def is_real(self) -> bool:
        return self.client is None

    @property
    def can_reread_services(self) -> bool:
        return self.reread is not None or self.on_bluez

    def scanner_kwargs(self) -> dict[str, Any]:
        if self.scanner is not None:
            return {"backend": self.scanner}
        return dict(self._platform_kwargs)

    def client_kwargs(self) -> dict[str, Any]:
        if self.client is not None:
            return {"backend": self.client}
        return dict(self._platform_kwargs)

    async def forget_device(self, address: str) -> bool:
        """Forget ``address`` in the stack (BlueZ: ``Adapter1.RemoveDevice``); False when the
        stack did not know it. Raises :class:`ForgetFailed` with a sentence, whatever the
        stack raised."""
        try:
            if self.forget is not None:
                return await self.forget(address)
            if self.on_bluez:
                from ..bluez import remove_device

                return await remove_device(address, self.adapter)
        except BluezUnavailable as exc:
            raise ForgetFailed(f"could not clear the cache for {address}: {exc}") from None
        except STACK_ERRORS as exc:
            why = str(exc) or "no answer in time"
            raise ForgetFailed(
                f"could not clear the cache for {address} ({type(exc).__name__}: {why})"
            ) from None
        return False  # CoreBluetooth and WinRT keep no cache a client can clear

    async def platform_warnings(self) -> list[str]:
        """Known problems of the stack, one sentence each; never raises."""
        if self.warnings is not None:
            return await self.warnings()
        if self.on_bluez:
            from ..bluez import bluez_version, version_warnings

            return version_warnings(await bluez_version())
        return []

    async def reread_services(self, client: BleakClient) -> bool:
        """Replace ``client.services`` with what the stack shows now (bleak resolves them
        once per connection); False when this stack's client cannot."""
        if self.reread is not None:
            return await self.reread(client)
        if self.on_bluez:
            from ..bluez import reread_services

            return await reread_services(client)
        return False

    async def negotiated_mtu(self, client: BleakClient) -> int | None:
        """The connection's ATT MTU when the stack must be asked for it (BlueZ: bleak's
        characteristic write size can read 20 on an event loop that met the device
        disconnected; see :func:`pytest_smartball.bluez.acquire_mtu`); None when the
        characteristic's write size is already right or the stack cannot say."""
        if self.on_bluez:
            from ..bluez import acquire_mtu

            return await acquire_mtu(client)
        return None

    async def needs_fixed_settle(self) -> bool:
        """Whether the stack is known to report services resolved before they are (BlueZ
        before 5.55, which preflight warns about): then the whole settle delay is waited."""
        if self.on_bluez:
            from ..bluez import bluez_version

            version = await bluez_version()
            return version is not None and version < SERVICES_RACE_FIXED_IN
        return False
