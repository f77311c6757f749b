"""The signed-update property (docs/security.md, promises 1-4), simulator only: for any
tampered or foreign image and any plan of power cuts, the image the device runs is always
one signed by a trusted key with a security counter at least the device's, the counter
never goes down, and the device always has a bootable image.

Each example provisions a fresh firmware model (the run's ``--sim-firmware-bug``s
included, so the kill table measures it too; or the C reference core with
``--sim-firmware=c``, under the simulator's bootloader) with the test key and a counter, plays one
attack over the protocol as a host in radio range would (any manifest, any image, any
START), cuts the power at a drawn moment (any command, any instant of the erase or the
transfer, any step of the bootloader's swap, before or after a confirm), and resets it a
drawn number of times more. Seeded, bounded examples (``--fuzz-examples``).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st

from pytest_smartball.contract import codec as p
from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import crc_preserving_flip
from pytest_smartball.loops import virtual_event_loop
from pytest_smartball.options import SmartBallOptions
from pytest_smartball.suite_signer import SuiteSigner
from smartball_sim.firmware.bugs import parse_bugs
from smartball_sim.firmware.c_core import library_for
from smartball_sim.firmware.c_firmware import CFirmware
from smartball_sim.firmware.model import FlashTimings, SmartBallFirmware

from .helpers import PAGE_SIZE, changed_manifest

pytestmark = [pytest.mark.sim_only, pytest.mark.timeout(1800)]

CHUNK, WINDOW = 232, 16
ERASE_PAGE_S = 0.085
#: The image the ball was provisioned with (trusted: it came from the factory).
BASELINE = random.Random(30).randbytes(6000)
#: The attacks, each a way an image that must not run reaches the device.
ATTACKS = (
    "unsigned",
    "foreign-key",
    "forged-signature",
    "flip",
    "truncated",
    "extra-byte",
    "field",
    "other-signature",
    "downgrade",
    "flip-staged",
)
FIELDS = ("version", "counter", "size", "crc32", "key-id", "sha256")
#: Where the power is cut: after the host's command number ``at`` (any of them, the
#: transfer's chunks included), ``delay`` seconds after it (inside an erase or a write),
#: or during the swap after ``at`` of its steps.
WHERE = ("none", "after-command", "during-swap")
#: Examples per run: the loaded profile's count, bounded (each is a whole update).
EXAMPLES = min(settings().max_examples, 60)

TEST_SIGNER = SuiteSigner.load(None)
FOREIGN = SuiteSigner(
    Ed25519PrivateKey.from_private_bytes(random.Random(31).randbytes(32)), "a foreign key"
)


#: The run's --sim-firmware-bug names (set by the fixture below).
FIRMWARE_BUGS: list[str] = []


@pytest.fixture(autouse=True, scope="module")
def _the_runs_firmware_bugs(sim_firmware_bugs: tuple[str, ...]) -> None:
    FIRMWARE_BUGS[:] = sim_firmware_bugs


#: The run's C core library when it asks for ``--sim-firmware=c`` (set by the fixture
#: below; empty: the Python model).
C_CORE: list[str | None] = []


@pytest.fixture(autouse=True, scope="module")
def _the_runs_firmware_core(smartball_options: SmartBallOptions) -> None:
    C_CORE[:] = (
        [smartball_options.sim_firmware_lib] if smartball_options.sim_firmware == "c" else []
    )


@dataclass(slots=True)
class Ball:
    """The firmware model on its own virtual-time loop, with power cuts on demand."""

    fw: SmartBallFirmware
    loop: asyncio.AbstractEventLoop
    inbox: list[p.DeviceMessage]
    decoder: p.FrameDecoder

    @classmethod
    def provisioned(cls, counter: int) -> Ball:
        inbox: list[p.DeviceMessage] = []
        decoder = p.FrameDecoder()

        def on_send(frame: bytes) -> None:
            for f in decoder.feed(frame):
                inbox.append(p.parse_message(f))  # type: ignore[arg-type]

        ball: Ball

        def reset() -> None:  # the activation after DONE
            ball.fw.power_cycle()

        common: dict[str, Any] = {
            "active_image": BASELINE,
            "window": WINDOW,
            "staging_capacity": 64 * 1024,
            "timings": FlashTimings(erase_page_s=ERASE_PAGE_S),
            "send": on_send,
            "request_reset": reset,
            "trusted_keys": [signing.test_trusted_key()],
            "security_counter": counter,
        }
        if C_CORE:  # the C core offers the model's interface (smartball_sim.firmware.c_firmware)
            fw = cast(SmartBallFirmware, CFirmware(library=library_for(C_CORE[0]), **common))
        else:
            fw = SmartBallFirmware(bugs=parse_bugs(FIRMWARE_BUGS), **common)
        ball = cls(fw, virtual_event_loop(), inbox, decoder)
        return ball

    def send(self, command: p.Command, settle_s: float = 0.3) -> list[p.DeviceMessage]:
        async def go() -> None:
            self.fw.receive(p.encode(command))
            await asyncio.sleep(settle_s)

        self.inbox.clear()
        self.loop.run_until_complete(go())
        return list(self.inbox)

    def wait(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


@dataclass(frozen=True, slots=True)
class Attack:
    """What the host sends: a manifest (or none), the image, and the image it announces."""

    head: bytes | None
    image: bytes
    #: Genuine images signed by the trusted key in this example, with their counters.
    genuine: dict[bytes, int]
    flip_staged_at: int | None = None


def make_attack(kind: str, counter: int, image: bytes, field: str, where: int) -> Attack:
    """One attack on a ball at ``counter``; ``where`` picks a byte (flip) or field."""
    good = TEST_SIGNER.sign(image, counter=counter)
    genuine = {image: counter}
    match kind:
        case "genuine":  # not an attack: what the host does when it updates the ball
            return Attack(good.head, image, genuine)
        case "unsigned":
            return Attack(None, image, {})
        case "foreign-key":
            return Attack(FOREIGN.sign(image, counter=counter).head, image, {})
        case "forged-signature":
            forged = FOREIGN.sign_manifest(good.manifest)
            return Attack(forged.head, image, {})
        case "flip":
            return Attack(good.head, crc_preserving_flip(image, where % len(image)), genuine)
        case "truncated":
            return Attack(good.head, image[: -1 - where % 8], genuine)
        case "extra-byte":
            return Attack(good.head, image + b"\0", genuine)
        case "field":
            changed = changed_manifest(good.manifest, field)
            return Attack(changed.encode() + good.signature, image, {})
        case "other-signature":
            other = TEST_SIGNER.sign(image[::-1], counter=counter)
            return Attack(good.manifest_bytes + other.signature, image, {})
        case "downgrade":
            old = TEST_SIGNER.sign(image, counter=counter - 1)
            return Attack(old.head, image, {image: counter - 1})
        case "flip-staged":
            return Attack(good.head, image, genuine, flip_staged_at=where % len(image))
    raise AssertionError(kind)


def commands(attack: Attack) -> list[p.Command]:
    """The host's commands: MANIFEST, START, the chunks, FINISH, CONFIRM (after the reset
    into the new image, if there is one: a host confirms what it sees running)."""
    sent: list[p.Command] = []
    if attack.head is not None:
        sent.append(p.CmdOtaManifest(attack.head[:56], attack.head[56:120]))
    image = attack.image
    sent.append(p.CmdOtaStart(len(image), p.crc32(image), CHUNK))
    sent += [p.CmdOtaData(o, image[o : o + CHUNK]) for o in range(0, len(image), CHUNK)]
    sent.append(p.CmdOtaFinish())
    return sent


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, int, bytes, str, int, str, int, float, int, bool]:
    # Half the examples are a genuine update, not an attack: every attack is refused before
    # an activation, so only a genuine one reaches the power cuts inside the swap, before
    # and after the confirm, and the revert.
    kind = "genuine" if draw(st.booleans()) else draw(st.sampled_from(ATTACKS))
    counter = draw(st.integers(1 if kind == "downgrade" else 0, 3))
    size = draw(st.integers(1, 3)) * PAGE_SIZE - draw(st.integers(0, 1000)) // 4 * 4
    image = random.Random(draw(st.integers(0, 2**16))).randbytes(size)
    field = draw(st.sampled_from(FIELDS))
    where = draw(st.integers(0, 2**20))
    cut = draw(st.sampled_from(WHERE))
    # During the swap: after one of its steps (three per page, at most 3 pages here).
    at = draw(st.integers(0, 9 if cut == "during-swap" else 80))
    delay = draw(st.sampled_from([0.0, 0.01, 0.05, 0.2]))
    resets = draw(st.integers(0, 2))
    confirm = draw(st.booleans())
    return kind, counter, image, field, where, cut, at, delay, resets, confirm


def trusted(active: bytes, attack: Attack, counter: int) -> bool:
    """Whether ``active`` may run on a ball at ``counter``: the factory image, or a genuine
    image of this example (signed by the trusted key) whose counter is at least it."""
    return active == BASELINE or attack.genuine.get(active, -1) >= counter


@seed(23)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_no_tampered_or_foreign_image_ever_runs(
    case: tuple[str, int, bytes, str, int, str, int, float, int, bool],
) -> None:
    kind, counter, image, field, where, cut, at, delay, resets, confirm = case
    attack = make_attack(kind, counter, image, field, where)
    note(f"attack {kind} ({field}, {where}), counter {counter}, cut {cut} at {at}+{delay}s")
    ball = Ball.provisioned(counter)
    try:
        play(ball, attack, cut, at, delay, resets, confirm)
        fw = ball.fw
        assert fw.security_counter >= counter, f"the counter went down: {fw.security_counter}"
        assert fw.bootloader.signed.swap is None, "the device is left in the middle of a swap"
        assert fw.active.data, "the device has no image to boot"
        assert trusted(fw.active.data, attack, fw.security_counter), (
            f"after a {kind} attack the device runs a {len(fw.active.data)}-byte image that "
            f"is neither its factory image nor one signed by its trusted key at counter >= "
            f"{fw.security_counter}"
        )
        event(f"runs {'the factory image' if fw.active.data == BASELINE else 'a new image'}")
        if fw.bootloader.swap_wear.scratch_erases:
            event(f"a swap ran (cut: {cut}, confirm: {confirm})")
        info = ball.send(p.CmdInfo())
        assert any(isinstance(m, p.MsgInfo) and m.signed_only for m in info), info
    finally:
        ball.close()


def play(
    ball: Ball, attack: Attack, cut: str, at: int, delay: float, resets: int, confirm: bool
) -> None:
    """The host's commands, the power cut, the confirm and the resets; then one reset
    more, so that whatever was under way has finished booting."""
    fw = ball.fw
    if attack.flip_staged_at is not None:
        fw.bootloader.staged_flip.append(attack.flip_staged_at)
    if cut == "during-swap":
        fw.bootloader.swap_cut_after_steps = at
    for n, command in enumerate(commands(attack)):
        # START waits out the erase, a chunk its own write: a host within the credit.
        ball.send(command, settle_s=3.5 if isinstance(command, p.CmdOtaStart) else 0.05)
        if cut == "after-command" and n == at:
            ball.wait(delay)
            fw.power_cycle()
            break
    ball.wait(2.0)  # DONE, the reset into the new image and its swap, if any
    if confirm:
        ball.send(p.CmdOtaConfirm())
    for _ in range(resets):
        fw.power_cycle()
        ball.wait(1.0)
    fw.power_cycle()
    ball.wait(1.0)


@pytest.mark.parametrize("confirm", [True, False])
def test_the_propertys_host_can_update_the_ball(confirm: bool) -> None:
    """The property is not vacuous: the same host with a genuine signed image and no
    fault updates the ball (confirmed: it stays, the counter raised; not confirmed: the
    final reset reverts it)."""
    image = random.Random(32).randbytes(2 * PAGE_SIZE - 8)
    ball = Ball.provisioned(2)
    try:
        play(ball, make_attack("genuine", 3, image, "", 0), "none", 0, 0.0, 0, confirm)
        if confirm:
            assert (ball.fw.active.data, ball.fw.security_counter) == (image, 3)
        else:
            assert (ball.fw.active.data, ball.fw.security_counter) == (BASELINE, 2)
    finally:
        ball.close()
