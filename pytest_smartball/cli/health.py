"""``smartball-ota flash --health-check CMD``: the user's check of the new image on trial,
as a shell command (exit 0 = healthy), bounded in wall-clock time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
from typing import Any

from ..contract import codec as p
from ..ota import HealthCheck, HealthCheckFailed


def _stderr_fd() -> int:
    """Where the check's output goes: our stderr (stdout may carry --json), or nowhere."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured, closed)
        return subprocess.DEVNULL


def shell_health_check(
    command: str, timeout_s: float, *, name: str | None, address: str | None
) -> HealthCheck:
    """A HealthCheck that runs ``command`` in a shell, with the device named in its
    environment. It waits in a thread with a wall-clock timeout (on the simulator's virtual
    clock a subprocess would otherwise seem to take no time or forever); the command and
    its children are killed when it times out or the update is cancelled."""

    async def check(info: p.MsgInfo) -> bool:
        env = dict(os.environ)
        env.update(
            SMARTBALL_NAME=name or "",
            SMARTBALL_ADDRESS=address or "",
            SMARTBALL_FIRMWARE=info.firmware_version,
            SMARTBALL_IMAGE_CRC32=f"{info.active_image_crc32:08x}",
        )
        out = _stderr_fd()
        start = functools.partial(
            subprocess.Popen,
            command,
            shell=True,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: killed whole
        )
        proc = await asyncio.to_thread(start)
        try:
            code = await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise HealthCheckFailed(
                f"`{command}` did not finish within {timeout_s:g} s (--health-check-timeout)"
            ) from None
        except BaseException:
            _kill(proc)
            raise
        if code != 0:
            raise HealthCheckFailed(f"`{command}` exited with {code}")
        return True

    return check


def _kill(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
