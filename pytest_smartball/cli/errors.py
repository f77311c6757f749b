"""Exit codes of ``smartball-ota`` and the error every expected failure becomes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 3
EXIT_FAILED = 4
EXIT_REFUSED = 5
EXIT_UNCONFIRMED = 6
#: Signed updates (docs/protocol.md section 16).
EXIT_REVERTED = 7
EXIT_UNSIGNED = 8
EXIT_UNTRUSTED_KEY = 9
EXIT_DOWNGRADE = 10
EXIT_TRIAL_PENDING = 11
EXIT_UNHEALTHY = 12
EXIT_BAD_KEY = 13
EXIT_INTERRUPTED = 130

EXIT_CODES = """\
exit codes:
  0    success
  2    bad input: missing, empty, malformed or too large image (larger than the device's
       staging area), bad arguments, bad --faults spec
  3    device not found, or no usable Bluetooth (BlueZ, system D-Bus or adapter missing)
  4    update failed after retries (reconnects without progress exhausted), or link
       trouble during info/status/abort; the device keeps its old image
  5    the device refused the image or a command (e.g. CRC mismatch)
  6    unconfirmed: the whole image was delivered and the switch asked for (the device
       may run the new image), but it could not be seen running it; check with `info`
  7    reverted: the device took the new image and reset, but runs its old image again
       (its bootloader refused the new one, or it reset before the new one was confirmed)
  8    the device runs only signed images and the image is not signed: `sign` it
  9    the image is signed with a key the device does not trust
  10   downgrade: the image's security counter is below the device's
  11   the device runs an image on trial (not confirmed): `confirm` it, or reset the
       device to return to its previous image, then flash again
  12   the health check failed: the new image was not confirmed; the device runs it on
       trial and returns to its old image at its next reset
  13   bad key file (missing, unreadable, not an Ed25519 PEM key, a public key to sign)
  130  interrupted (Ctrl-C): the device keeps its old image (unless the switch to the
       new one was already asked for: then it may run it); run flash again to resume
"""


def interrupted_sentence(simulated: bool, switch_asked: bool = False) -> str:
    """What Ctrl-C leaves behind. ``simulated``: the device lived in this process (``--sim``,
    or ``--bluez=emulated``/``vhci`` without ``--bus``) and is gone with it, so no rerun can
    resume; ``switch_asked``: FINISH had been sent (or DONE said)."""
    if simulated:
        return (
            "interrupted: the simulated SmartBall lived in this process and is gone with it; "
            "nothing was written to a real device"
        )
    if switch_asked:
        return (
            "interrupted after the device was asked to switch to the new image: it may run "
            "it now, or after its next reset; check with `smartball-ota info` (a signed-only "
            "device runs it on trial until `smartball-ota confirm` keeps it)"
        )
    return (
        "interrupted: the device keeps its old image; run `smartball-ota flash IMAGE` again "
        "to resume the update where the device stopped"
    )


class CliError(Exception):
    """An expected failure: one sentence for stderr and the exit code (and, for a bad
    argument, the command's one-line usage)."""

    def __init__(self, code: int, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.usage = usage
