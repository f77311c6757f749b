"""How a link connects and waits (:class:`LinkSettings`): plain data, so that the settings
of an update (``pytest_smartball.ota.settings``) hold them without loading bleak."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LinkSettings:
    #: Longest wait after connecting for the stack to show the Nordic UART Service; the
    #: wait ends as soon as it is there (BlueZ's services race, stale caches).
    settle_s: float = 1.5
    #: Wait the whole ``settle_s`` after every connect, whatever the stack shows: for stacks
    #: known to report services resolved too early. None: as the stack needs
    #: (:meth:`BleBackend.needs_fixed_settle`, which the engine asks before it connects).
    fixed_settle: bool | None = None
    #: Attempts per connect that establish_connection makes (it retries transient errors
    #: up to 9 times on its own: bleak_retry_connector.MAX_TRANSIENT_ERRORS).
    connect_attempts: int = 3
    #: Connects that came up without NUS before giving up (race / stale cache).
    services_attempts: int = 3
    services_retry_backoff_s: float = 1.0
    #: How long a scan looks for the device (``--scan-timeout``, ``--ble-scan-timeout``).
    scan_timeout_s: float = 10.0
    write_timeout_s: float = 5.0
