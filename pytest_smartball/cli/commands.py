"""The commands of ``smartball-ota``: scan, info, status, abort, flash. Each returns its
exit code or raises :class:`~.errors.CliError`."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from bleak.backends.device import BLEDevice
from tqdm import tqdm

from ..contract import codec as p
from ..device_info import info_dict
from ..image import FirmwareImage
from ..link import LINK_ERRORS, DeviceNotFound, LinkError, NusLink, find_device, scan
from ..ota import FailureKind, Limits, OtaEngine, OtaResult, OtaSettings, Outcome
from ..targets import Target
from . import output as out
from . import streams
from .args import LIST_SCAN_TIMEOUT_S, PROG, Context
from .errors import (
    EXIT_BAD_INPUT,
    EXIT_DOWNGRADE,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_REVERTED,
    EXIT_TRIAL_PENDING,
    EXIT_UNCONFIRMED,
    EXIT_UNHEALTHY,
    EXIT_UNSIGNED,
    EXIT_UNTRUSTED_KEY,
    CliError,
)
from .health import shell_health_check
from .targets import open_target

EXIT_FOR_FAILURE: dict[FailureKind, int] = {
    FailureKind.BAD_INPUT: EXIT_BAD_INPUT,
    FailureKind.NOT_FOUND: EXIT_NOT_FOUND,
    FailureKind.LINK: EXIT_FAILED,
    FailureKind.REFUSED: EXIT_REFUSED,
    FailureKind.NO_RESET: EXIT_FAILED,
    FailureKind.UNSIGNED: EXIT_UNSIGNED,
    FailureKind.UNTRUSTED_KEY: EXIT_UNTRUSTED_KEY,
    FailureKind.DOWNGRADE: EXIT_DOWNGRADE,
    FailureKind.TRIAL_PENDING: EXIT_TRIAL_PENDING,
    FailureKind.UNHEALTHY: EXIT_UNHEALTHY,
}


def exit_code_for(result: OtaResult) -> int:
    """The exit code an update's result ends ``flash`` with."""
    if result.outcome is Outcome.SUCCEEDED:
        return EXIT_OK
    if result.outcome is Outcome.UNCONFIRMED:
        return EXIT_UNCONFIRMED
    if result.outcome is Outcome.REVERTED:
        return EXIT_REVERTED
    return EXIT_FOR_FAILURE[result.failure] if result.failure else EXIT_FAILED


async def cmd_scan(ctx: Context) -> int:
    target = await open_target(ctx)
    timeout = ctx.args.scan_timeout or LIST_SCAN_TIMEOUT_S
    try:
        found = await scan(target.backend, timeout)
    except DeviceNotFound as exc:
        raise CliError(EXIT_NOT_FOUND, str(exc)) from None
    devices = [{"address": s.address, "name": s.name, "rssi": s.rssi} for s in found]
    code = EXIT_OK if devices else EXIT_NOT_FOUND
    if ctx.json:
        out.emit_json(
            {
                "command": "scan",
                "ok": bool(devices),
                "exit_code": code,
                "simulated": ctx.simulated,
                "scan_timeout_s": timeout,
                "devices": devices,
            }
        )
    elif devices:
        print(f"{'ADDRESS':<18} {'RSSI':>5}  NAME")
        for d in devices:
            print(f"{d['address']:<18} {d['rssi']:>5}  {d['name'] or '(no name)'}")
        note = f" ({ctx.clock_note})" if ctx.simulated else ""
        n = len(devices)
        print(f"{n} device{'s' if n != 1 else ''} advertising the Nordic UART Service{note}")
    if not devices:
        print(
            f"{PROG}: no device advertising the Nordic UART Service within {timeout:g} s",
            file=sys.stderr,
        )
    return code


async def _find(ctx: Context, target: Target) -> BLEDevice:
    try:
        sighting = await find_device(
            target.backend,
            name=None if target.address else target.name,
            address=target.address,
            timeout=ctx.link_settings.scan_timeout_s,
        )
    except DeviceNotFound as exc:  # find_device also turns scanner errors into this
        raise CliError(EXIT_NOT_FOUND, str(exc)) from None
    return sighting.ble_device


async def _request(
    ctx: Context, cmd: p.Command, expect: type, unknown: str = ""
) -> tuple[BLEDevice, Any]:
    """``cmd``'s reply; ``unknown``: the sentence for a device that does not know it."""
    target = await open_target(ctx)
    device = await _find(ctx, target)
    try:
        async with await NusLink.open(
            device, target.backend, ctx.link_settings, on_event=ctx.link_event
        ) as link:
            reply = await link.request(cmd, (expect,), OtaSettings().reply_timeout_s)
    except LinkError as exc:
        raise CliError(EXIT_FAILED, str(exc)) from None
    except LINK_ERRORS as exc:
        raise CliError(EXIT_FAILED, f"Bluetooth error: {type(exc).__name__}: {exc}") from None
    if isinstance(reply, p.MsgError):
        if unknown and reply.code == p.ErrorCode.UNKNOWN_COMMAND:
            raise CliError(EXIT_REFUSED, unknown)
        raise CliError(
            EXIT_REFUSED,
            f"the device answered {cmd.TYPE.name} with {reply.code_name}: "
            f"{reply.text or '(no text)'}",
        )
    return device, reply


def _emit_reply(ctx: Context, command: str, device: BLEDevice, fields: dict[str, Any]) -> int:
    """The --json answer of info/status/abort: the command, the device, the reply's fields."""
    out.emit_json(
        {
            "command": command,
            "ok": True,
            "exit_code": EXIT_OK,
            "simulated": ctx.simulated,
            "device": out.device_dict(device.name, device.address),
            **fields,
        }
    )
    return EXIT_OK


async def cmd_info(ctx: Context) -> int:
    device, info = await _request(ctx, p.CmdInfo(), p.MsgInfo)
    if ctx.json:
        return _emit_reply(ctx, "info", device, {**(info_dict(info) or {}), **out.trust_dict(info)})
    out.header(ctx, device.name, device.address)
    out.print_info(info)
    return EXIT_OK


async def cmd_confirm(ctx: Context) -> int:
    """CMD_OTA_CONFIRM: a signed-only device keeps the image it runs on trial (any other
    state: nothing changes; a v1 device does not know the command)."""
    device, info = await _request(
        ctx,
        p.CmdOtaConfirm(),
        p.MsgInfo,
        unknown="the device does not know CMD_OTA_CONFIRM: it is a v1 device without signed "
        "updates, which keeps every image it activates, so there is nothing to confirm",
    )
    if ctx.json:
        fields = {**(info_dict(info) or {}), **out.trust_dict(info)}
        return _emit_reply(ctx, "confirm", device, fields)
    out.header(ctx, device.name, device.address)
    if info.signed_only and info.image_state == p.ImageState.CONFIRMED:
        print("  the running image is confirmed: it runs after every reset")
    out.print_info(info)
    return EXIT_OK


async def cmd_status(ctx: Context) -> int:
    device, status = await _request(ctx, p.CmdOtaStatus(), p.MsgOtaStatus)
    if ctx.json:
        return _emit_reply(ctx, "status", device, out.status_dict(status))
    out.header(ctx, device.name, device.address)
    out.print_status(status)
    return EXIT_OK


async def cmd_abort(ctx: Context) -> int:
    device, status = await _request(ctx, p.CmdOtaAbort(), p.MsgOtaStatus)
    if ctx.json:
        return _emit_reply(ctx, "abort", device, out.status_dict(status))
    out.header(ctx, device.name, device.address)
    print("  OTA session aborted; the active image is untouched")
    out.print_status(status)
    return EXIT_OK


async def cmd_flash(ctx: Context, image: FirmwareImage) -> int:
    a = ctx.args
    target = await open_target(ctx)
    settings = OtaSettings(
        clear_cache=a.clear_cache,
        link=ctx.link_settings,
        stabilise_s=a.stabilise,
        reappear_timeout_s=a.reappear_timeout,
        limits=Limits(max_attempts_without_progress=a.max_attempts, confirm=not a.no_confirm),
        health_check=(
            shell_health_check(
                a.health_check, a.health_check_timeout, name=target.name, address=target.address
            )
            if a.health_check
            else None
        ),
        health_check_timeout_s=a.health_check_timeout,
    )
    display = out.ProgressDisplay(bars=not ctx.json, lines=not ctx.json, virtual=ctx.virtual)
    engine = OtaEngine(
        image,
        target.backend,
        name=target.name,
        address=target.address,
        settings=settings,
        on_progress=display.on_progress,
        on_event=display.on_event,
    )
    if not ctx.json:
        note = f" ({ctx.clock_note})" if ctx.simulated else ""
        tqdm.write(
            f"Flashing {image.source} ({image.described}): {image.size} bytes, "
            f"crc32 {image.crc32:08x}{note}",
            file=sys.stderr,
        )
    try:
        result = await engine.run()
    except asyncio.CancelledError:  # Ctrl-C: main() says what the device holds
        ctx.switch_asked = engine.switch_asked
        raise
    except LINK_ERRORS as exc:  # e.g. the platform scanner failing (no adapter)
        code = EXIT_NOT_FOUND if engine.result.connects == 0 else EXIT_FAILED
        raise CliError(code, f"Bluetooth error: {type(exc).__name__}: {exc}") from None
    finally:
        display.close()
    code = exit_code_for(result)
    if ctx.json:
        payload: dict[str, Any] = {"command": "flash", "ok": result.success, "exit_code": code}
        payload.update(result.to_dict())
        payload["image_crc32"] = f"{result.image_crc32:08x}"
        payload["duration_s"] = round(result.duration_s, 3)
        payload["phase_s"] = {k: round(v, 3) for k, v in result.phase_s.items()}
        for event in payload["events"]:
            event["time"] = round(event["time"], 3)
        after = info_dict(result.info_after)
        if after is not None and result.info_after is not None:
            after.update(out.trust_dict(result.info_after))
        payload["info_after"] = after
        payload["image_source"] = image.source
        payload["image_format"] = image.format.value
        payload["device"] = out.device_dict(engine.name, engine.address)
        payload["simulated"] = ctx.simulated
        payload["virtual_time"] = ctx.virtual
        sim = target.sim
        if sim is not None:
            active = sim.firmware.active
            payload["fault_log"] = [str(r) for r in sim.fault_log]
            payload["sim_active_image"] = {"size": len(active.data), "crc32": f"{active.crc32:08x}"}
            payload["att_mtu"] = getattr(target, "negotiated_mtu", None)
        out.emit_json(payload)
    else:
        if a.verbose:
            print("Event log:")
            for event in result.events:
                print(f"  {event}")
        out.print_summary(ctx, engine, result, image, target)
        if result.success and streams.stdout_gone():  # failures say so on stderr anyway
            who = out.device_words(engine)
            streams.say(f"{PROG}: update succeeded: {who} runs {image.source}")
    if result.outcome is Outcome.UNCONFIRMED:
        streams.say(f"{PROG}: update unconfirmed: {result.error}", stdout_too=not ctx.json)
    elif result.outcome is Outcome.REVERTED:
        streams.say(f"{PROG}: update reverted: {result.error}", stdout_too=not ctx.json)
    elif not result.success:
        streams.say(f"{PROG}: update failed: {result.error}", stdout_too=not ctx.json)
    return code
