"""What ``smartball-ota`` shows: progress bars (or a line per quarter without a terminal),
one line per notable event, the update's summary, JSON, and log records."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from ..contract import codec as p
from ..contract.manifest import key_id_text
from ..image import FirmwareImage
from ..ota import EventKind, OtaEngine, OtaEvent, OtaResult, Outcome, State
from ..targets import Target
from .args import Context

log = logging.getLogger("pytest_smartball.cli")

#: Engine events shown as they happen (one line each), above the progress bars.
NOTABLE_EVENTS = frozenset(
    {
        EventKind.LINK_LOST,
        EventKind.LINK_FAILURE,
        EventKind.RESUME,
        EventKind.RESTART,
        EventKind.RECOVER,
        EventKind.SERVICES_MISSING,
        EventKind.VERIFIED,
        EventKind.CACHE_CLEARED,
        EventKind.WARNING,
        EventKind.DEVICE_RESET,
        EventKind.NO_RESET,
        EventKind.MANIFEST,
        EventKind.HEALTH_CHECK,
        EventKind.CONFIRMED,
        EventKind.REVERTED,
    }
)


def emit_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=None, sort_keys=False))


def device_dict(name: str | None, address: str | None) -> dict[str, str | None]:
    return {"name": name, "address": address}


def header(ctx: Context, name: str | None, address: str) -> None:
    note = f"  ({ctx.clock_note})" if ctx.simulated else ""
    print(f"{name or '(no name)'} ({address}){note}")


def print_info(info: p.MsgInfo) -> None:
    print(f"  firmware          {info.firmware_version} (protocol v{info.protocol_version})")
    print(
        f"  active image      {info.active_image_size} bytes, crc32 {info.active_image_crc32:08x}"
    )
    print(f"  staging capacity  {info.staging_capacity} bytes")
    if not info.signed_only:
        print("  signed only       no: runs any image it is sent (protocol v1)")
        return
    trust = trust_dict(info)
    print("  signed only       yes: runs only images signed by the key it trusts")
    print(f"  trusted key id    {trust['trusted_key_id']}")
    print(f"  security counter  {info.security_counter} (it runs no image signed below it)")
    print(f"  image state       {trust['image_state']}{_STATE_WORDS.get(info.image_state, '')}")


_STATE_WORDS: dict[int, str] = {
    p.ImageState.CONFIRMED: " (runs after every reset)",
    p.ImageState.TEST: " (on trial: the next reset returns to the previous image unless "
    "`smartball-ota confirm` keeps it)",
    p.ImageState.REVERTED: " (the last update was not confirmed: its previous image runs again)",
}


def trust_dict(info: p.MsgInfo) -> dict[str, Any]:
    """What a device says of its trust (section 16); a v1 device only that it has none."""
    if not info.signed_only:
        return {"signed_only": False}
    try:
        state = p.ImageState(info.image_state).name.lower()
    except ValueError:
        state = f"unknown ({info.image_state})"
    return {
        "signed_only": True,
        "trusted_key_id": key_id_text(info.trusted_key_id),
        "security_counter": info.security_counter,
        "image_state": state,
    }


def print_status(msg: p.MsgOtaStatus) -> None:
    print(f"  state             {msg.state_name}")
    print(f"  next offset       {msg.next_expected_offset}")
    print(f"  image size        {msg.image_size} bytes")
    print(f"  image crc32       {msg.image_crc32:08x}")


def status_dict(msg: p.MsgOtaStatus) -> dict[str, Any]:
    return {
        "state": msg.state_name,
        "state_code": msg.state,
        "next_expected_offset": msg.next_expected_offset,
        "image_size": msg.image_size,
        "image_crc32": f"{msg.image_crc32:08x}",
    }


class ProgressDisplay:
    """tqdm bars on stderr for the erase and transfer phases, and one line per notable
    event (reconnect, resume, restart, ...) written above them."""

    def __init__(self, *, bars: bool, lines: bool, virtual: bool) -> None:
        self.bars = bars
        self.lines = lines
        self.virtual = virtual
        self._bar: tqdm[Any] | None = None
        self._phase = ""
        self._quarter = -1
        self._last_kind = ""

    def on_progress(self, phase: str, done: int, total: int) -> None:
        """The engine's progress callback: best-effort, it never raises into the update."""
        try:
            self._show_progress(phase, done, total)
        except Exception:  # a display that fails is switched off; the update goes on
            self._switch_off("progress")

    def on_event(self, event: OtaEvent) -> None:
        """The engine's event callback: best-effort, it never raises into the update."""
        try:
            self._show_event(event)
        except Exception:
            self._switch_off("event")

    def _switch_off(self, what: str) -> None:
        self.bars = self.lines = False
        self._bar = None
        log.debug(
            "the %s display failed and is off for the rest of the update", what, exc_info=True
        )

    def _show_progress(self, phase: str, done: int, total: int) -> None:
        if not self.bars:
            return
        if not sys.stderr.isatty():
            self._progress_line(phase, done, total)
            return
        if phase != self._phase or self._bar is None or self._bar.total != total:
            self.close()
            self._phase = phase
            # On a virtual clock tqdm's wall-clock rate and ETA would be meaningless.
            fmt = (
                "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B" if self.virtual else None
            )
            self._bar = tqdm(
                total=total,
                desc=f"{phase:<8}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                bar_format=fmt,
                leave=True,
                dynamic_ncols=True,
            )
        bar = self._bar
        if done >= bar.n:
            bar.update(done - bar.n)
        else:  # the device rewound (a resume below what we had sent): show its truth
            bar.n = done
            bar.refresh()

    def _progress_line(self, phase: str, done: int, total: int) -> None:
        """Without a terminal (CI logs, pipes) bars turn into noise: one line per quarter."""
        quarter = 4 * done // total if total else 4
        if phase != self._phase:
            self._phase, self._quarter = phase, -1
        if quarter > self._quarter:
            self._quarter = quarter
            print(
                f"{phase}: {done}/{total} bytes ({100 * done // max(total, 1)}%)", file=sys.stderr
            )

    def _show_event(self, event: OtaEvent) -> None:
        if not self.lines or event.kind not in NOTABLE_EVENTS:
            return
        if event.kind is EventKind.LINK_LOST and event.detail == "closed by host":
            return
        if event.kind is EventKind.LINK_FAILURE and self._last_kind == EventKind.LINK_LOST:
            self._last_kind = event.kind
            return  # the link-lost line already said it
        self._last_kind = event.kind
        tqdm.write(f"[{event.time:8.1f}s] {event.kind}: {event.detail}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            with contextlib.suppress(Exception):  # best-effort, like the bars themselves
                self._bar.close()
            self._bar = None
        self._phase = ""


def _phases_text(result: OtaResult) -> str:
    order = [s.value for s in State]
    phases = sorted(result.phase_s.items(), key=lambda kv: order.index(kv[0]))
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases if seconds >= 0.05)


def device_words(engine: OtaEngine) -> str:
    """The device as the outcome sentences name it: ``SmartBall (C0:FF:EE:00:00:01)``."""
    return f"{engine.name or 'device'} ({engine.address or 'not found'})"


def print_summary(
    ctx: Context, engine: OtaEngine, result: OtaResult, image: FirmwareImage, target: Target
) -> None:
    who = device_words(engine)
    state = result.image_state
    if result.success and state == "test":
        print(
            f"Update succeeded: {who} runs {image.source} on trial (not confirmed: its next "
            "reset returns it to its old image unless `smartball-ota confirm` keeps it)."
        )
    elif result.success:
        confirmed = " (confirmed)" if state == "confirmed" else ""
        print(f"Update succeeded: {who} runs {image.source}{confirmed}.")
    elif result.outcome is Outcome.REVERTED:
        print(f"Update REVERTED: {who} runs its old image again, not {image.source}.")
    elif result.outcome is Outcome.UNCONFIRMED:
        # Not "may run": the sentence below says what it was last seen running.
        print(
            f"Update UNCONFIRMED: {who} was asked to switch to {image.source} "
            "and was not seen running it."
        )
    else:
        print(f"Update FAILED ({result.failure.value if result.failure else '?'}): {who}.")
    print(f"  image          {image.size} bytes, crc32 {image.crc32:08x}")
    print(f"  sent           {result.bytes_sent} bytes ({result.bytes_resent} re-sent)")
    print(
        # The planned connection after the reset is not a reconnect: say which ones count.
        f"  connections    {result.connects} ({result.reconnects} after a lost link), "
        f"{result.resumes} resumes, {result.restarts} restarts"
    )
    if result.failed_connect_attempts:
        print(
            f"  failed connects {result.failed_connect_attempts} (connect attempts that "
            "failed or dropped as they were made; not counted above)"
        )
    if result.rewinds:
        print(f"  rewinds        {result.rewinds} (the device's STATUS moved the sending back)")
    clock = " (simulated time)" if ctx.virtual else ""
    print(f"  duration       {result.duration_s:.1f} s{clock}")
    phases = _phases_text(result)
    if phases:
        print(f"  phases         {phases}")
    if result.throughput_bps:
        print(f"  throughput     {result.throughput_bps / 1000:.1f} kB/s")
    info = result.info_after
    if info is not None:
        trust = ""
        if info.signed_only:
            t = trust_dict(info)
            trust = (
                f", image state {t['image_state']}, security counter {info.security_counter}, "
                f"trusts key {t['trusted_key_id']}"
            )
        print(
            f"  device now     firmware {info.firmware_version}, active image "
            f"{info.active_image_size} bytes, crc32 {info.active_image_crc32:08x}{trust}"
        )
    mtu = getattr(target, "negotiated_mtu", None)  # a BumbleTarget's (--sim-link bumble)
    if mtu is not None:
        print(f"  ATT MTU        {mtu} (negotiated over Bumble)")
    sim = target.sim
    if sim is not None:
        active = sim.firmware.active
        which = "the new image" if active.crc32 == image.crc32 else "its old image"
        print(
            f"  sim device     active image {len(active.data)} bytes, crc32 "
            f"{active.crc32:08x} ({which})"
        )
        print(f"Note: {ctx.clock_note}.")
        faults = sim.fault_log
        print(f"Faults on the simulated device ({len(faults)}):")
        for record in faults:
            print(f"  {record}")
        if not faults:
            print("  none")


class _TqdmHandler(logging.Handler):
    """Log records to the current stderr, through tqdm so progress bars stay whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


#: Loggers of third-party BLE stacks the simulator runs on (Bumble, ``--sim-link bumble``):
#: their warnings are the stack's own bookkeeping (a packet for a link that just ended),
#: never something the user can act on; the update's own lines say what happened.
STACK_LOGGERS = ("bumble",)
#: ``-vvv`` lets them through (with everything else at debug level).
STACK_LOG_VERBOSITY = 3


def _not_a_stack_logger(record: logging.LogRecord) -> bool:
    return not any(
        record.name == name or record.name.startswith(name + ".") for name in STACK_LOGGERS
    )


def install_logging(verbosity: int) -> Callable[[], None]:
    """Log records on stderr: warnings, ``-v`` info, ``-vv`` debug; the BLE stacks' own
    loggers (:data:`STACK_LOGGERS`) only with ``-vvv``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = _TqdmHandler(level)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if verbosity < STACK_LOG_VERBOSITY:
        handler.addFilter(_not_a_stack_logger)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(level)

    def uninstall() -> None:
        root.removeHandler(handler)
        root.setLevel(old_level)

    return uninstall
