"""The link's errors and events: what a caller of the link has to handle, and what the
stack below may raise on the way (turned into these by the link and its backend)."""

from __future__ import annotations

import enum

from bleak.exc import BleakError


class LinkError(Exception):
    """Base of the link's clean failures; the message says what failed and what to do."""


class DeviceNotFound(LinkError):
    pass


class ConnectFailed(LinkError):
    pass


class LinkLost(LinkError):
    """The connection is gone (dropped, reset, or a GATT call failed): reconnect to go on."""


class ResponseTimeout(LinkError):
    """The device sent nothing that was waited for within the time allowed."""


class ForgetFailed(LinkError):
    """The stack's cache for a device could not be cleared (one sentence: why)."""


class LinkEvent(enum.StrEnum):
    """What a link reports through its ``on_event`` callback."""

    CONNECTED = "connected"
    LINK_LOST = "link-lost"
    SERVICES_MISSING = "services-missing"
    #: One connect attempt failed (refused, timed out, or dropped as it was made); the
    #: connect goes on with bleak-retry-connector's next attempt, or fails.
    CONNECT_ATTEMPT_FAILED = "connect-attempt-failed"


def _link_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [BleakError, EOFError, BrokenPipeError, ConnectionError]
    try:  # dbus-fast is bleak's D-Bus library on Linux; absent elsewhere
        from dbus_fast.errors import DBusError

        errors.append(DBusError)
    except ImportError:  # pragma: no cover - non-Linux
        pass
    return tuple(errors)


#: What a GATT call may raise when the link is going or gone.
LINK_ERRORS = _link_errors()
#: ... and with the timeouts that bound every call on it.
LINK_OR_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (*LINK_ERRORS, TimeoutError)
#: ... and what the stack's plumbing may raise besides (no adapter, no D-Bus socket).
STACK_ERRORS: tuple[type[BaseException], ...] = (*LINK_OR_TIMEOUT_ERRORS, OSError)
