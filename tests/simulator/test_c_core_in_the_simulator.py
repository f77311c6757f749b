"""The C core inside the simulated SmartBall: the engine updates it (--sim-firmware=c), the
CLI flashes it through the field faults and says what --sim-firmware cannot do, and the
bench runs it.
"""

from __future__ import annotations

import ctypes
import json
import random
from pathlib import Path
from typing import Any

import pytest

from pytest_smartball.contract import codec as p
from pytest_smartball.image import FirmwareImage
from pytest_smartball.ota import OtaEngine
from pytest_smartball.targets.simulated import make_sim_target
from smartball_sim.firmware.c_core import FIRMWARE_DIR
from smartball_sim.firmware.c_firmware import CFirmware

from .. import c_core

# --- the C core inside the simulated SmartBall (--sim-firmware=c) ---------------------------


@pytest.mark.asyncio
@pytest.mark.sim_only
@pytest.mark.parametrize(
    "faults",
    ["", "slow-erase:3s,drop@erase:50%,drop@offset:20000,reboot@cmd:CMD_OTA_DATA#40,flash-fail"],
)
async def test_the_simulated_smartball_runs_the_c_core(
    lib: ctypes.CDLL, faults: str, looptime: float
) -> None:
    """The OTA engine updates a simulated SmartBall whose firmware is the C core, also
    through link drops during the erase and the transfer and a reset mid-transfer; the
    simulator's flash holds the new image afterwards and INFO reports it."""
    target = make_sim_target(faults=faults, firmware_core="c", firmware_library=lib._name, seed=3)
    device = target.sim
    assert device is not None and isinstance(device.firmware, CFirmware)
    image = FirmwareImage(random.Random(5).randbytes(50_000), "c-core.bin")
    result = await OtaEngine(image, target.backend, address=target.address).run()
    assert result.success, result.error
    assert device.firmware.active.data == image.data
    assert device.firmware.info().active_image_crc32 == p.crc32(image.data)
    if faults:
        assert len(device.fault_log) >= 3, device.fault_log  # the faults did fire


# --- the CLI's --sim-firmware --------------------------------------------------------------


class _SpyCore(CFirmware):
    """A C core that counts its instances (the proof that a front end ran the C core)."""

    built = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        type(self).built += 1


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    from pytest_smartball.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


@pytest.mark.sim_only
def test_the_cli_flashes_the_c_core_through_the_field_faults(
    lib: ctypes.CDLL,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``smartball-ota flash build/demo.sbi --sim --sim-firmware=c --faults field-linux``
    succeeds on the signed-only ball (the default ``--sim-trust=test``): the image runs,
    confirmed, with its counter; and the raw ``demo.bin`` on a v1 ball
    (``--sim-trust=none``). It is the C core the simulated SmartBall ran each time (the
    core named by SMARTBALL_C_CORE_LIB here, the build of firmware/ otherwise)."""
    from smartball_sim import device as sim_device
    from smartball_sim.make_image import make_image

    cores: list[CFirmware] = []

    class Spy(_SpyCore):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            cores.append(self)

    monkeypatch.setattr(sim_device, "CFirmware", Spy)
    monkeypatch.setenv(c_core.LIB_ENV, lib._name)
    image = make_image(seed=1)
    path = tmp_path / "demo.bin"
    path.write_bytes(image)
    key = FIRMWARE_DIR.parent / "pytest_smartball/contract/keys/TEST-ONLY-signing-key.pem"
    sbi = tmp_path / "demo.sbi"
    argv = ("--version", "1.1.0", "--counter", "4", "-o", str(sbi))
    assert _cli(capsys, "sign", str(path), "--key", str(key), *argv)[0] == 0
    field = ("--sim", "--sim-firmware=c", "--faults", "field-linux")
    code, text = _cli(capsys, "flash", str(sbi), *field)
    assert code == 0, text
    assert "Update succeeded" in text and len(cores) == 1
    signed = cores[0]
    assert (
        signed.signed_only and signed.active.data == image and signed.bootloader.swap_resumes == 0
    )
    assert (signed.image_state, signed.security_counter) == (p.ImageState.CONFIRMED, 4)
    assert signed.bootloader.signed.security_counter == 4  # persisted, not only the core's RAM copy
    code, text = _cli(capsys, "flash", str(path), *field, "--sim-trust=none")
    assert code == 0, text
    assert len(cores) == 2 and not cores[1].signed_only and cores[1].active.data == image


@pytest.mark.sim_only
def test_the_cli_says_what_sim_firmware_cannot_do(
    lib: ctypes.CDLL, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One sentence and exit code 2 for: a core that is not there, a firmware bug (the C core
    has no bug switches), --sim-firmware-lib without --sim-firmware=c, --sim-firmware without
    --sim; nothing is flashed."""
    path = tmp_path / "fw.bin"
    path.write_bytes(random.Random(7).randbytes(20_000))
    cases = {
        "no such file": ("--sim", "--sim-firmware=c", f"--sim-firmware-lib={tmp_path}/no.so"),
        "firmware-bug": ("--sim", "--sim-firmware=c", "--sim-firmware-bug=ack-every-window"),
        "--sim-firmware=c only": ("--sim", f"--sim-firmware-lib={lib._name}"),
        "with --sim": ("--sim-firmware=c",),
    }
    for expected, options in cases.items():
        code, text = _cli(capsys, "flash", str(path), *options)
        lines = [line for line in text.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and expected in lines[0], (options, text)


# --- the bench's --sim-firmware ------------------------------------------------------------


@pytest.mark.sim_only
def test_the_bench_runs_the_c_core(
    lib: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``python -m bench --sim-firmware=c`` measures updates of the C core: every update of
    its rows (the timed ones, stop-and-wait, the flaky profile) ran on the C core and
    succeeded, and the JSON says which firmware it measured."""
    from bench.__main__ import main as bench
    from smartball_sim import device as sim_device

    monkeypatch.setattr(_SpyCore, "built", 0)
    monkeypatch.setattr(sim_device, "CFirmware", _SpyCore)
    out = tmp_path / "bench.json"
    argv = ["--profiles", "default", "--sizes", "20000", "--wall-repeats", "1"]
    argv += ["--json", str(out), "--sim-firmware=c", f"--sim-firmware-lib={lib._name}"]
    assert bench(argv) == 0
    figures = json.loads(out.read_text())
    assert figures["firmware"] == "c"
    rows = figures["rows"]
    assert [(r["size"], r["progressive"]) for r in rows] == [(20000, False), (20000, True)]
    assert all(r["flaky_success"] and 0 < r["efficiency"] <= 1 for r in rows)
    assert _SpyCore.built == 2 * 3  # per row: the timed update, stop-and-wait, flaky
    with pytest.raises(SystemExit) as refused:
        bench(["--sim-firmware-lib", lib._name, "--json", str(out)])
    assert refused.value.code == 2


@pytest.mark.asyncio
@pytest.mark.sim_only
@pytest.mark.parametrize("size", [1, 20_000])
async def test_a_progressive_erase_under_the_field_erase_takes_the_models_time(
    lib: ctypes.CDLL, size: int, looptime: float
) -> None:
    """The field's slow erase (``slow-erase``) spreads the erase before READY over its
    pages; a progressive session's page erase is the 85 ms stall alone, as in the model.
    (The update fuzzer against the C core found the glue giving a progressive page its
    share of 15 s: the ACK of a 1-byte image came 15 s late.)"""
    image = FirmwareImage(random.Random(size).randbytes(size), "progressive.bin")
    durations = {}
    for core in ("python", "c"):
        options: dict[str, Any] = {"firmware_core": "c", "firmware_library": lib._name}
        target = make_sim_target(
            faults="slow-erase:15s", progressive_erase=True, **(options if core == "c" else {})
        )
        result = await OtaEngine(image, target.backend, address=target.address).run()
        assert result.success, (core, result.error)
        durations[core] = result.duration_s
    assert durations["c"] == pytest.approx(durations["python"], abs=0.1), durations
