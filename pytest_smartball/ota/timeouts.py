"""The client's timeouts, derived from the device's timing obligations (P17).

A device promises to answer within a bound (docs/protocol.md, "Timing obligations"); the
client waits that bound plus a margin, so a device that keeps its promise is never given
up on, and one that breaks it is noticed after a time the client can state:

    timeout = obligation + 4 s

The margin is the longest a BLE link may hold a packet back before the stack declares the
link lost: the supervision timeout, 4 s in what a SmartBall asks for (the nRF5 SDK's
default). A silence longer than obligation + margin is therefore not the radio's delay:
either the link is gone (and the stack says so by then) or the device broke its promise.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds added to each obligation: the link's supervision timeout (see the module's text).
LINK_MARGIN_S = 4.0
MB = 1024 * 1024


def with_margin(obligation_s: float) -> float:
    """The client's wait for something the device promises within ``obligation_s``."""
    return obligation_s + LINK_MARGIN_S


@dataclass(frozen=True, slots=True)
class DeviceTiming:
    """The device's timing obligations (P17), in seconds."""

    #: START → first PROGRESS, and between PROGRESS messages during an erase.
    progress_gap_max_s: float = 1.0
    #: Last erase PROGRESS → READY.
    ready_after_erase_max_s: float = 0.5
    #: The chunk that completes an ACK interval (or a STATUS request) → its ACK.
    ack_latency_max_s: float = 0.5
    #: INFO, STATUS, ABORT → the reply.
    reply_max_s: float = 0.5
    #: FINISH → DONE: this much plus ``verify_per_mb_s`` per MB of image.
    verify_base_s: float = 1.0
    verify_per_mb_s: float = 1.0
    #: DONE → the device ends the link to reset.
    done_to_disconnect_max_s: float = 1.0
    #: Reset → advertising again, after an activation (the bootloader copies the image).
    reset_to_advertising_activation_s: float = 30.0
    #: Reset → advertising again, otherwise.
    reset_to_advertising_s: float = 5.0

    def verify_max_s(self, image_size: int) -> float:
        return self.verify_base_s + self.verify_per_mb_s * image_size / MB


#: The obligations of docs/protocol.md.
CONTRACT = DeviceTiming()
#: The largest image the verify timeout has to cover by default (1 MB: all of the
#: nRF52840's flash; a staging bank holds less).
LARGEST_IMAGE = MB


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The defaults ``OtaSettings`` takes, from one ``DeviceTiming``."""

    erase_silence_s: float
    ack_s: float
    reply_s: float
    verify_s: float
    reset_s: float
    reappear_s: float

    @classmethod
    def from_device(cls, timing: DeviceTiming = CONTRACT) -> Timeouts:
        return cls(
            erase_silence_s=with_margin(
                max(timing.progress_gap_max_s, timing.ready_after_erase_max_s)
            ),
            ack_s=with_margin(timing.ack_latency_max_s),
            reply_s=with_margin(timing.reply_max_s),
            verify_s=with_margin(timing.verify_max_s(LARGEST_IMAGE)),
            reset_s=with_margin(timing.done_to_disconnect_max_s),
            reappear_s=with_margin(timing.reset_to_advertising_activation_s),
        )


DEFAULT = Timeouts.from_device()
