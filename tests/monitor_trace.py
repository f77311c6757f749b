"""Hand-made traces of a device fed to the contract monitor (pytest_smartball/monitor/),
for tests/client/test_contract_monitor.py and tests/client/test_contract_monitor_signed.py."""

from __future__ import annotations

from pytest_smartball.contract import codec as p
from pytest_smartball.monitor import ContractMonitor

IMAGE = bytes(range(256)) * 40 + b"tail!"  # 10245 bytes: 3 pages, a short last chunk
CRC = p.crc32(IMAGE)
CHUNK = 232
WINDOW = 4
INFO = p.MsgInfo(1, 1, 0, 0, 65536, 0x1234, 491520)
STATUS_IDLE = p.MsgOtaStatus(0, 0, 0, 0)


class Trace:
    """Feeds a monitor: ``host`` writes a command, ``dev`` notifies a message, at ``t``."""

    def __init__(self) -> None:
        self.m = ContractMonitor("test device")
        self.t = 0.0
        self.m.observe_connect(0.0)

    def at(self, dt: float) -> Trace:
        self.t += dt
        return self

    def host(self, cmd: p.Command) -> Trace:
        self.m.observe_host_bytes(self.t, p.encode(cmd))
        return self

    def raw(self, data: bytes, device: bool = False) -> Trace:
        if device:
            self.m.observe_device_bytes(self.t, data)
        else:
            self.m.observe_host_bytes(self.t, data)
        return self

    def dev(self, msg: p.DeviceMessage) -> Trace:
        self.t += 0.01
        self.m.observe_device_bytes(self.t, p.encode(msg))
        return self

    def rules(self) -> list[str]:
        return [v.rule for v in self.m.finish(self.t)]
