"""The harness behind ``device.json``: a session is timed inputs to the reference firmware
model, which runs on a virtual clock (looptime); the runner records, for each input, what
the model sends until the next one and its state then."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing

from ..firmware.model import (
    FirmwareEvent,
    FirmwareEventKind,
    FlashTimings,
    SmartBallFirmware,
    to_us,
)
from .codec import type_name


@dataclass(frozen=True)
class DeviceConfig:
    window: int = 4
    staging_capacity: int = 5 * 4096
    progressive_erase: bool = False
    active_image: bytes = bytes(range(256)) * 12
    version: tuple[int, int, int] = (1, 4, 2)
    erase_page_s: float = 0.085
    write_word_s: float = 41e-6
    #: The model's own rate (20 MB/s), so that section 10's figure is the vectors' too.
    verify_s_per_byte: float = FlashTimings().verify_s_per_byte
    rx_buffer_chunks: int | None = None
    #: Every byte of the staging bank before the first input (0xFF: erased). Another value
    #: is a bank that still holds an old image: a device that skips an erase fails then.
    staging_fill: int = 0xFF
    #: Whether the harness resets the device when it asks to (after DONE); without, the
    #: state COMPLETE can be observed. The request shows as an event either way.
    resets: bool = True
    #: A signed-only device (docs/protocol.md section 16): it trusts the test key and
    #: starts with this security counter.
    signed: bool = False
    security_counter: int = 0

    def describe(self) -> dict[str, Any]:
        trust: dict[str, Any] = {}
        if self.signed:  # (absent for a v1 device: its vectors are unchanged)
            trust = {
                "signed_only": {
                    "trusted_key_ids": [f"{signing.test_trusted_key().key_id:08x}"],
                    "security_counter": self.security_counter,
                }
            }
        return {
            **trust,
            "resets_when_asked": self.resets,
            "window": self.window,
            "staging_capacity": self.staging_capacity,
            "progressive_erase": self.progressive_erase,
            "active_image": {
                "size": len(self.active_image),
                "crc32": f"{p.crc32(self.active_image):08x}",
                "version": list(self.version),
            },
            "flash": {
                "erase_page_s": self.erase_page_s,
                "write_word_s": self.write_word_s,
                "verify_s_per_byte": self.verify_s_per_byte,
                "rx_buffer_chunks": self.rx_buffer_chunks or self.window,
                # (absent for an erased bank: the vectors made before it are unchanged)
                **({"staging_fill": self.staging_fill} if self.staging_fill != 0xFF else {}),
            },
        }


@dataclass
class Step:
    at_s: float
    data: bytes = b""
    link_lost: bool = False
    reset: bool = False
    flash_fail_next: int = 0
    #: The device's next persist of the activation record (PENDING) fails.
    persist_fails: bool = False


@dataclass
class VectorSession:
    """One vector's scripted exchange (named apart from the host's picture of an OTA
    session): its steps, run against the firmware model set up by ``config``."""

    name: str
    about: str
    steps: list[Step]
    config: DeviceConfig = field(default_factory=DeviceConfig)
    until_s: float | None = None


class _ModelRun:
    """The firmware model on a virtual clock, recording what it sends."""

    def __init__(self, config: DeviceConfig) -> None:
        import looptime

        self.config = config
        self.loop = looptime.new_event_loop(start=0, noop_cycles=8)
        self.out: list[tuple[int, dict[str, Any]]] = []
        #: (command type, state right after the device handled it), in order
        self.handled: list[dict[str, str]] = []
        self._decoder = p.FrameDecoder()
        self.fw = SmartBallFirmware(
            active_image=config.active_image,
            version=config.version,
            staging_capacity=config.staging_capacity,
            window=config.window,
            progressive_erase=config.progressive_erase,
            timings=FlashTimings(
                erase_page_s=config.erase_page_s,
                write_word_s=config.write_word_s,
                verify_s_per_byte=config.verify_s_per_byte,
                rx_buffer_chunks=config.rx_buffer_chunks,
            ),
            send=self._sent,
            request_reset=self._reset_requested,
            observe=self._observed,
            trusted_keys=[signing.test_trusted_key()] if config.signed else [],
            security_counter=config.security_counter,
        )
        if config.staging_fill != 0xFF:
            self.fw.flash.overwrite(0, bytes([config.staging_fill]) * self.fw.flash.size)

    def _observed(self, event: FirmwareEvent) -> None:
        if event.kind is FirmwareEventKind.HANDLED and event.msg_type is not None:
            self.handled.append({"command": type_name(event.msg_type), "state": self.fw.state.name})

    def _now_us(self) -> int:
        return to_us(self.loop.time())

    def _sent(self, frame: bytes) -> None:
        for f in self._decoder.feed(frame):
            msg = p.parse_message(f)
            entry: dict[str, Any] = {"t": self._now_us() / 1e6, "type": msg.TYPE.name}
            if isinstance(msg, p.MsgError):
                entry["code"] = msg.code_name
                entry["command"] = type_name(msg.command)
            else:
                entry["hex"] = p.encode(msg).hex(" ")
            self.out.append((self._now_us(), entry))

    def _reset_requested(self) -> None:
        self.out.append((self._now_us(), {"t": self._now_us() / 1e6, "event": "reset"}))
        if self.config.resets:
            self.fw.power_cycle()

    def run_until(self, at_s: float) -> None:
        async def wait() -> None:
            await asyncio.sleep(at_s - self.loop.time())

        self.loop.run_until_complete(wait())

    def apply(self, step: Step) -> None:
        async def act() -> None:
            if step.flash_fail_next:
                self.fw.flash.fail_next = step.flash_fail_next
            if step.persist_fails:
                self.fw.persist_fail_next = True
            if step.link_lost:
                self.fw.link_lost()
            if step.reset:
                self.fw.power_cycle()
            if step.data:
                self.fw.receive(step.data)

        self.loop.run_until_complete(act())

    def close(self) -> None:
        self.loop.close()


def run_session(session: VectorSession) -> dict[str, Any]:
    run = _ModelRun(session.config)
    steps_out = []
    try:
        times = [s.at_s for s in session.steps]
        until = session.until_s if session.until_s is not None else times[-1] + 5.0
        for i, step in enumerate(session.steps):
            run.run_until(step.at_s)
            before, handled_before = len(run.out), len(run.handled)
            run.apply(step)
            end = times[i + 1] if i + 1 < len(times) else until
            run.run_until(end)
            emitted = run.out[before:]
            for t_us, _ in emitted:
                if t_us == to_us(end) and i + 1 < len(times):
                    raise AssertionError(
                        f"{session.name}: a message at {end} s coincides with the next input; "
                        "move the input so the order is not a tie"
                    )
            entry: dict[str, Any] = {"at_s": step.at_s}
            if step.data:
                entry["in"] = step.data.hex(" ")
            if step.link_lost:
                entry["link_lost"] = True
            if step.reset:
                entry["reset"] = True
            if step.flash_fail_next:
                entry["flash_fail_next"] = step.flash_fail_next
            if step.persist_fails:
                entry["persist_fails"] = True
            entry["handled"] = run.handled[handled_before:]
            entry["out"] = [e for _, e in emitted]
            entry["state"] = run.fw.state.name
            steps_out.append(entry)
    finally:
        run.close()
    return {
        "name": session.name,
        "about": session.about,
        "device": session.config.describe(),
        "steps": steps_out,
        "until_s": until,
    }
