"""A device's CMD_INFO answer as records and the CLI write it, and back (library code:
the plugin's report and ``smartball-ota info`` both say it the same way)."""

from __future__ import annotations

from typing import Any

from .contract import codec as p

__all__ = ["info_dict", "info_from_dict"]


def info_dict(info: p.MsgInfo | None) -> dict[str, Any] | None:
    """A device's CMD_INFO answer, readable."""
    if info is None:
        return None
    return {
        "firmware": info.firmware_version,
        "active_image_crc32": f"{info.active_image_crc32:08x}",
        "active_image_size": info.active_image_size,
        "staging_capacity": info.staging_capacity,
        "protocol_version": info.protocol_version,
    }


def info_from_dict(data: dict[str, Any]) -> p.MsgInfo:
    """Inverse of ``asdict(MsgInfo)`` (how INFOs travel to xdist workers)."""
    return p.MsgInfo(**data)
