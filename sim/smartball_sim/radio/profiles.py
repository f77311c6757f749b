"""The BLE link's timing: connection events, PHY airtime, data length, packets per event.

A central (the host) talks to the peripheral only at connection events, one every
``connection_interval_s``. In each event it sends up to ``packets_per_event`` link-layer
packets, and each is answered by one from the peripheral (a notification fragment, or an
empty packet). Sources for the defaults:

* Airtime: Bluetooth Core Specification 5.3, Vol 6, Part B, 2.1 (packet format: preamble
  1 B on LE 1M, 2 B on LE 2M; access address 4 B; header 2 B; payload; CRC 3 B; no MIC
  on an unencrypted link) and 4.1.1 (T_IFS = 150 us between packets). LE 1M sends a byte
  in 8 us, LE 2M in 4 us.
* Data length extension (Vol 6, Part B, 4.5.10): up to 251 payload bytes per LL packet
  instead of 27, so one 244-byte ATT write (MTU 247) fits in one packet: 4 B L2CAP header,
  3 B ATT header (opcode, handle), 244 B value = 251.
* 15 ms interval, LE 2M, 4 packets per event: what a Linux central typically grants an
  nRF52840 that asks for a short interval (the SoftDevice's 7.5-15 ms preferred range;
  the central decides). BlueZ's own default range is 30-50 ms (Linux
  ``le_conn_min_interval``/``le_conn_max_interval`` = 24/40 units of 1.25 ms) on LE 1M.
* 4 packets per event: a common controller limit for one link's TX per event; it is a
  parameter because controllers differ (some allow 6 or more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

T_IFS_S = 150e-6
L2CAP_HEADER = 4
ATT_HEADER = 3  # opcode + handle, for a write command or a notification


@dataclass(frozen=True, slots=True)
class RadioProfile:
    name: str = "default"
    connection_interval_s: float = 0.015
    phy: str = "2M"  # "1M" or "2M"
    #: LL payload per packet: 251 with data length extension, 27 without.
    ll_max_payload: int = 251
    #: ATT MTU after the exchange; a write or notification carries up to MTU-3 bytes.
    mtu: int = 247
    #: Exchanges (central packet + peripheral answer) per connection event.
    packets_per_event: int = 4
    #: Writes-without-response the host's stack holds before a write has to wait.
    tx_queue_writes: int = 16

    @property
    def max_att_value(self) -> int:
        return self.mtu - 3

    def byte_time_s(self) -> float:
        return 8e-6 if self.phy == "1M" else 4e-6

    def packet_airtime_s(self, payload: int) -> float:
        overhead = 10 if self.phy == "1M" else 11  # preamble + AA + header + CRC
        return (overhead + payload) * self.byte_time_s()

    def ll_packets(self, att_value_len: int) -> int:
        """LL packets one write command / notification of this many value bytes needs."""
        return max(1, math.ceil((L2CAP_HEADER + ATT_HEADER + att_value_len) / self.ll_max_payload))

    def exchange_time_s(self, central_payload: int, peripheral_payload: int) -> float:
        return (
            self.packet_airtime_s(central_payload)
            + T_IFS_S
            + self.packet_airtime_s(peripheral_payload)
            + T_IFS_S
        )

    def exchanges_per_event(self) -> int:
        """How many full-size exchanges fit in one event, within the central's limit."""
        full = self.exchange_time_s(self.ll_max_payload, 0)
        return max(1, min(self.packets_per_event, int(self.connection_interval_s // full)))


PROFILES: dict[str, RadioProfile] = {
    "default": RadioProfile(),
    "bluez-default": RadioProfile("bluez-default", connection_interval_s=0.030, phy="1M"),
    "no-dle": RadioProfile("no-dle", ll_max_payload=27),
}
