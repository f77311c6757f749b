"""Every release-gate test runs under the contract monitor: each frame both ways on every
link it opens is checked against protocol v1 (docs/protocol.md, section 15), and a device
that breaks a rule fails the test, even when the test's own assertions pass and the OTA
engine recovered from the deviation. The security tests' fixtures (the device's INFO, the
keys, the reset) are here too."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import pytest_asyncio

from pytest_smartball.contract import codec as p
from pytest_smartball.link import NusLink
from pytest_smartball.plugin.fixtures import device_signed_only
from pytest_smartball.plugin.monitoring import ContractWatch
from pytest_smartball.suite_signer import SuiteSigner
from pytest_smartball.targets import Target

from .helpers import SuiteKey
from .security import PowerCycle


@pytest.fixture(autouse=True)
def _contract_monitor(smartball_monitor: ContractWatch) -> ContractWatch:
    return smartball_monitor


@pytest.fixture(autouse=True)
def _suite_key(smartball_signer: SuiteSigner | None) -> Iterator[SuiteSigner | None]:
    """Every session a release-gate test opens on a signed-only device is signed with the
    run's key (helpers.present_manifest reads it)."""
    SuiteKey.signer = smartball_signer
    yield smartball_signer
    SuiteKey.signer = None


# --- the security tests' device and keys --------------------------------------------------


@pytest_asyncio.fixture
async def info(nus: NusLink, smartball: Target, request: pytest.FixtureRequest) -> p.MsgInfo:
    """The device's MSG_INFO with no session (each test starts with signed_only(info)).
    A simulated ball the run provisioned as a v1 device on purpose (``--sim-trust=none``,
    the rest of the suite's compatibility run) skips: there is no firmware to judge."""
    await nus.request(p.CmdOtaAbort(), (p.MsgOtaStatus,))
    got = await nus.request(p.CmdInfo(), (p.MsgInfo,))
    assert isinstance(got, p.MsgInfo), got
    if smartball.sim is not None and not got.signed_only and not device_signed_only(request.config):
        pytest.skip(
            "the run's simulated ball is provisioned as a v1 device (--sim-trust=none): "
            "there is no signed-update firmware to judge"
        )
    return got


@pytest.fixture
def signer(smartball_signer: SuiteSigner | None) -> SuiteSigner:
    """The key the device trusts. None only on a board without SIGNED_IMAGES (a
    signed-only board and no --signing-key stop the run at its start): the test then fails
    on signed_only(info), for which any key does."""
    return smartball_signer or SuiteSigner.load(None)


@pytest.fixture(scope="module")
def foreign() -> SuiteSigner:
    """A key no device trusts (made here, seeded: the same key each run)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = random.Random(25).randbytes(32)
    return SuiteSigner(Ed25519PrivateKey.from_private_bytes(seed), "a foreign key")


@pytest.fixture
def reset(request: pytest.FixtureRequest) -> PowerCycle | None:
    """The power_cycle fixture where the bench has one; None where it has not (the tests
    then check what they can without a reset)."""
    try:
        return request.getfixturevalue("power_cycle")
    except pytest.skip.Exception:
        return None
