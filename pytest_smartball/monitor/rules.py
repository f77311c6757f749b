"""Every rule the contract monitor checks, where in docs/protocol.md it comes from, and
the :class:`Violation` it records for the first frame (or silence) that breaks one."""

from __future__ import annotations

from dataclasses import dataclass

#: Every rule the monitor checks: its id and where in docs/protocol.md it comes from.
RULES: dict[str, str] = {
    "frame.crc": "§2, §1: a device frame with a bad CRC (a device sends only whole, valid frames)",
    "frame.length": "§2: a device frame announcing more than 512 payload bytes",
    "frame.garbage": "§1: device bytes outside any frame, or a frame abandoned halfway",
    "frame.type": "§5: a device message of a type protocol v1 does not have (or a command)",
    "frame.fields": "§5: a payload shorter than its fields, or a field out of its range",
    "reply.unexpected": "§7.2: a message no command asked for and no work under way explains",
    "reply.wrong": "§7.2 (command_state.json): a reply other than the table's for the state",
    "reply.missing": "§7.2, §10 reply_max_s: a command's reply did not come in time",
    "error.command": "§5 MSG_ERROR: the command byte must name the refused frame's type",
    "status.fields": "§7.1: MSG_OTA_STATUS fields differ from the device's state",
    "info.fields": "§5 MSG_INFO, §9: protocol version, staging capacity, the running image",
    "ready.fields": "§5, §7.3, §7.6: max_chunk from START's chunk_size, window >= 1",
    "ready.early": "§7.3: MSG_OTA_READY before every staging page's erase was reported",
    "ready.late": "§10 ready_after_erase_max_s: READY after the last PROGRESS",
    "progress.fields": "§5 MSG_OTA_PROGRESS: phase, done <= total, total = pages x 4096, +1 page",
    "progress.gap": "§10 progress_gap_max_s: no PROGRESS for longer during an erase",
    "ack.offset": "§7.4: an ACK backwards, past the bytes received in order, or mid-chunk",
    "ack.interval": "§7.4: an ACK owed (every window // 2 chunks, image end, STATUS) skipped",
    "ack.late": "§10 ack_latency_max_s: an owed ACK did not come in time",
    "ratelimit.rejected": "§7.4 rule 3: STATUS for the 1st, window+1st... rejected chunk only",
    "ratelimit.erasing": "§7.4 rule 1: BAD_STATE for the 1st, window+1st... DATA in ERASING only",
    "buffer.overflow": "§7.4: a chunk within the ACK credit refused as if the buffer were full",
    "verify.outcome": "§7.5: DONE only for the bytes whose CRC-32 is START's; else CRC_MISMATCH",
    "verify.late": "§10 verify_max_s: no DONE or CRC_MISMATCH in time after FINISH",
    "done.crc": "§5 MSG_OTA_DONE: the CRC equals the session's image_crc32",
    "done.disconnect": "§9, §10 done_to_disconnect_max_s: the device ends the link after DONE",
    "session.kept": "§7.1, §7.7: a link drop keeps the session (state, image, ACKed bytes)",
    "session.reset": "§7.7: a reset ends the session (STATUS shows IDLE)",
    "activation.info": "§9: after DONE and the reset INFO shows the new image; else the old",
}


@dataclass(frozen=True, slots=True)
class Violation:
    """The first frame (or silence) that broke a rule."""

    rule: str
    what: str
    t: float
    frame: str
    trace: tuple[str, ...]

    def __str__(self) -> str:
        lines = [
            f"contract violation [{self.rule}] at {self.t:.3f}s: {self.what}",
            f"  rule: {RULES.get(self.rule, '?')}",
            f"  frame: {self.frame}",
            "  trace (host >, device <, link *):",
        ]
        lines += [f"    {line}" for line in self.trace]
        return "\n".join(lines)


def rules_documented(text: str) -> list[str]:
    """The rule ids ``text`` (docs/protocol.md) does not list: a test keeps them in step."""
    return [rule for rule in RULES if f"`{rule}`" not in text]
